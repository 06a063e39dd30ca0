"""Lag reading: a broker that does not answer is an error, never "nothing committed"."""

from __future__ import annotations

from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from kappa import lag
from kappa.lag import group_lag
from kappa.runner import Pipeline
from kappa.settings import Settings


def _done(value: Any) -> Future[Any]:
    fut: Future[Any] = Future()
    fut.set_result(value)
    return fut


def _failed(code: int) -> Future[Any]:
    fut: Future[Any] = Future()
    fut.set_exception(KafkaException(KafkaError(code)))
    return fut


class FakeAdmin:
    """End offset 10 everywhere; committed offsets answered by ``answers`` in turn."""

    def __init__(self, *answers: int | dict[tuple[str, int], int]) -> None:
        self.answers = list(answers)
        self.asked = 0

    def list_offsets(self, tps: dict[TopicPartition, Any], request_timeout: float) -> dict[Any, Any]:
        return {tp: _done(SimpleNamespace(offset=10)) for tp in tps}

    def list_consumer_group_offsets(self, req: list[Any], request_timeout: float) -> dict[str, Any]:
        self.asked += 1
        answer = self.answers.pop(0)
        group = req[0].group_id
        if isinstance(answer, int):
            return {group: _failed(answer)}
        tps = [TopicPartition(t, p, o) for (t, p), o in answer.items()]
        return {group: _done(SimpleNamespace(topic_partitions=tps))}


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lag.time, "sleep", lambda _s: None)


def test_committed_offsets_against_end_offsets() -> None:
    got = group_lag(FakeAdmin({("t", 0): 4, ("t", 1): -1001}), "g", {"t": 2})  # type: ignore[arg-type]
    assert got.per_partition == {("t", 0): (4, 10), ("t", 1): (0, 10)}
    assert (got.consumed, got.total) == (4, 16)


def test_a_coordinator_still_loading_is_waited_for() -> None:
    admin = FakeAdmin(KafkaError.COORDINATOR_LOAD_IN_PROGRESS, KafkaError.NOT_COORDINATOR, {("t", 0): 10})
    assert group_lag(admin, "g", {"t": 1}).total == 0  # type: ignore[arg-type]
    assert admin.asked == 3


def test_an_unknown_group_has_nothing_committed() -> None:
    assert group_lag(FakeAdmin(KafkaError.GROUP_ID_NOT_FOUND), "g", {"t": 1}).consumed == 0  # type: ignore[arg-type]


@pytest.mark.parametrize("code", [KafkaError._TIMED_OUT, KafkaError._TRANSPORT])
def test_a_broker_that_does_not_answer_is_an_error_not_a_lag(code: int) -> None:
    with pytest.raises(KafkaException):
        group_lag(FakeAdmin(code), "g", {"t": 1})  # type: ignore[arg-type]


def test_the_runner_replaces_its_admin_client_when_kafka_does_not_answer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that lost its broker may keep it as a stale coordinator (librdkafka#5511)."""
    settings = Settings(home=tmp_path, kafka_bootstrap="127.0.0.1:9", schema_registry_url="http://127.0.0.1:9")
    pipe = Pipeline(settings, "v1", serve_metrics=False)
    stale = pipe.admin

    def timed_out() -> None:
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT))

    monkeypatch.setattr(pipe, "_state", timed_out)
    with pytest.raises(KafkaException):
        pipe.state()
    assert pipe.admin is not stale


def test_drain_state_names_the_group_and_partition_a_stalled_run_waits_on() -> None:
    from kappa.lag import GroupLag
    from kappa.runner import DrainState

    fraud = GroupLag("kappa-v1-fraud", {("kappa.v1.learning.fraud_events", 0): (10, 40)})
    processors = GroupLag("kappa-v1-processors", {("orders", 0): (5, 5), ("orders", 1): (7, 9),
                                                  ("kappa-v1-partials", 0): (3, 4)} | fraud.per_partition)
    state = DrainState(processors, GroupLag("kappa-v1-sink", {("kappa.v1.orders.enriched", 0): (1, 2)}),
                       "kappa-v1-partials", (fraud,))
    assert state.behind() == ("kappa-v1-fraud kappa.v1.learning.fraud_events[0] at 10 of 40; "
                              "kappa-v1-processors orders[1] at 7 of 9; "
                              "kappa-v1-sink kappa.v1.orders.enriched[0] at 1 of 2")
    assert DrainState(GroupLag("g", {("orders", 0): (5, 5)}), GroupLag("s", {})).behind().startswith("nothing")


def test_not_drained_while_a_stage_topic_is_unlisted_and_the_line_counts_inputs_only() -> None:
    """After a broker restart the metadata listed the inputs but not yet every internal topic;
    `--until-drained` must not read "no lag" on topics it did not see as drained. The progress
    line counts input data only: no internal topic, no idle tick of the partials."""
    from kappa.lag import GroupLag
    from kappa.runner import DrainState

    processors = GroupLag("kappa-v1", {("orders", 0): (9, 9), ("kappa-v1-partials", 0): (40, 41),
                                       ("kappa.v1.learning.fraud_events", 0): (30, 30)})
    sink = GroupLag("kappa-v1-sink", {("kappa.v1.orders.enriched", 0): (9, 9)})
    internal = frozenset({"kappa-v1-partials", "kappa.v1.learning.fraud_events"})
    done = DrainState(processors, sink, frozenset({"kappa-v1-partials"}), internal=internal)
    assert done.drained
    assert done.line(0).startswith("inputs 9/9 consumed (lag 0) | sink lag 0")
    unlisted = DrainState(processors, sink, frozenset({"kappa-v1-partials"}), internal=internal,
                          missing=("kappa.v1.revenue_per_minute",))
    assert not unlisted.drained and "waiting for topics kappa.v1.revenue_per_minute" in unlisted.line(0)
    ticking = DrainState(GroupLag("kappa-v1", {**processors.per_partition, ("kappa-v1-partials", 0): (40, 43)}),
                         sink, frozenset({"kappa-v1-partials"}), internal=internal)
    assert not ticking.drained
