"""The SIGUSR1 consumer report: per partition state and offsets, as a stuck worker shows them."""

from __future__ import annotations

from types import SimpleNamespace

from faust.types import TP

from stream_processors.diagnose import report

A, B, C = TP("orders", 0), TP("orders", 1), TP("state-changelog", 0)


def test_report_names_each_partition_state_and_offsets() -> None:
    def highwater(tp: TP) -> int:
        if tp == C:
            raise AssertionError("unassigned")  # aiokafka's answer for a partition just revoked
        return {A: 100, B: 7}[tp]

    consumer = SimpleNamespace(
        flow_active=True, _unacked_messages={object()}, _paused_partitions={C}, _buffered_partitions={B},
        _read_offset={A: 57}, _committed_offset={A: 57, B: 7}, highwater=highwater,
        assignment=lambda: {A, B, C}, _get_active_partitions=lambda: {A})
    app = SimpleNamespace(consumer=consumer, rebalancing=False, consumer_generation_id=3)
    assert report(app).splitlines() == [
        "rebalancing=False flow_active=True generation=3 unacked=1",
        "  orders[0] active read=57 committed=57 end=100",
        "  orders[1] buffered read=None committed=7 end=7",
        "  state-changelog[0] paused read=None committed=None end=None",
    ]
