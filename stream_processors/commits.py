"""Faust's offset bookkeeping, fixed where it stalls the commits of a partition.

faust-streaming 0.15.3 commits, per partition, the end of the first run of consecutive offsets
in ``Consumer._acked[tp]`` (acked offsets plus the "gaps" it registers when the offsets it
fetches jump). After a seek (a restart, a rebalance) the gap it registers can cover offsets that
are then delivered and acked again, so the list holds duplicates — ``[100, 101, 101, 102, 102,
...]`` — and every run stops at a duplicate: the partition's committed offset then advances by
one offset per commit (one per second here) while the records themselves were processed long
ago. Seen in the kill -9 tests: ``kappa run`` reported ``orders[0] at 425 of 1,460`` for minutes
with 30 offsets committed per 30 s, on every partition at once. Upstream: robinhood/faust#559
and #625 (duplicates in ``_acked``), faust-streaming/faust#606 (gaps).

:func:`new_offset` is Faust's ``Consumer._new_offset`` with two changes: the acked offsets are
deduplicated before the run is taken, and a registered gap only counts up to the highest acked
offset (never past a record that is still being processed). The rest — including Faust's
tolerance of one missing offset at the head, which a compacted ``users`` topic needs — is
unchanged. :func:`install` puts it in place; results do not depend on it (offsets only move
forward, after the batch's outputs are flushed), only how far back a restart re-reads.
"""

from __future__ import annotations

from typing import Any

from faust.transport.consumer import Consumer
from faust.utils.functional import consecutive_numbers

__all__ = ["FAUST_NEW_OFFSET", "install", "new_offset"]

FAUST_NEW_OFFSET = Consumer._new_offset
"""Faust's own method, as imported (tests compare with it after :func:`install`)."""


def new_offset(self: Any, tp: Any) -> int | None:
    """The offset to commit for ``tp`` now (None: nothing new), consuming what it covers."""
    acked: list[int] = self._acked[tp]
    if not acked:
        return None
    top = max(acked)
    gaps = self._gap[tp]
    if gaps:
        covered = [o for iv in sorted(gaps.overlap(0, top), key=lambda iv: iv.begin)
                   for o in range(iv.begin, min(iv.end, top))]
        if covered:
            acked.extend(covered)
            gaps.chop(0, top)
    acked[:] = sorted(set(acked))
    committed = self._committed_offset[tp]
    if committed and acked[0] - committed > 1:
        return None  # the head has not been acked yet
    run = next(consecutive_numbers(acked))
    del acked[:len(run)]
    self._acked_index[tp].difference_update(run)
    return int(run[-1]) + 1


def install() -> None:
    """Use :func:`new_offset` in every Faust consumer of this process (idempotent)."""
    Consumer._new_offset = new_offset  # type: ignore[method-assign]
