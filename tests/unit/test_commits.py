"""stream_processors.faust_internals.new_offset: Faust's committable offset without its duplicate-offset stall."""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace
from typing import Any

from faust.transport.consumer import Consumer
from intervaltree import IntervalTree

from stream_processors.faust_internals import FAUST_NEW_OFFSET, install, new_offset

TP = ("orders", 0)


def consumer(acked: list[int], committed: int | None, gaps: list[tuple[int, int]] = ()) -> Any:
    tree: IntervalTree = IntervalTree()
    for lo, hi in gaps:
        tree.addi(lo, hi + 1)
    return SimpleNamespace(_acked=defaultdict(list, {TP: list(acked)}), _gap=defaultdict(IntervalTree, {TP: tree}),
                           _committed_offset=defaultdict(lambda: None, {TP: committed}),
                           _acked_index=defaultdict(set, {TP: set(acked)}))


def commits(c: Any) -> list[int | None]:
    out = []
    while (n := new_offset(c, TP)) is not None:
        out.append(n)
        c._committed_offset[TP] = n  # what Faust records after the commit
    return out


def test_duplicates_in_the_acked_list_no_longer_stall_the_commit() -> None:
    # robinhood/faust#559: a gap re-registered after a seek doubles acked offsets; Faust's own
    # method then commits one offset per call (here: 101, 102, 103, ...)
    c = consumer([100, 101, 101, 102, 102, 103, 103, 104], committed=100)
    assert FAUST_NEW_OFFSET(c, TP) == 102 and FAUST_NEW_OFFSET(c, TP) == 103  # the bug
    c = consumer([100, 101, 101, 102, 102, 103, 103, 104], committed=100)
    assert commits(c) == [105]


def test_gaps_count_only_below_the_highest_acked_offset() -> None:
    # compaction hole 103..106 (registered with the record 107 that followed it)
    c = consumer([100, 101, 102], committed=100, gaps=[(103, 107)])
    assert commits(c) == [103]  # 107 is not acked yet: the gap must not carry the commit past it
    c._acked[TP] += [107, 108]
    assert commits(c) == [109]


def test_an_unacked_head_holds_the_commit() -> None:
    c = consumer([105, 106], committed=100)
    assert commits(c) == []
    c._acked[TP] += [100, 101, 102, 103, 104]
    assert commits(c) == [107]


def test_install_replaces_the_method() -> None:
    original = Consumer._new_offset
    try:
        install()
        assert Consumer._new_offset is new_offset
    finally:
        Consumer._new_offset = original  # type: ignore[method-assign]
