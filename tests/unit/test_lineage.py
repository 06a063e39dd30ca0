"""Pure logic of :mod:`kappa.lineage`: when is a log another log."""

from __future__ import annotations

import doctest

from kappa import lineage
from kappa.lineage import LogIdentity


def test_module_examples() -> None:
    assert doctest.testmod(lineage).failed == 0


def test_same_names_and_ids_is_the_same_log() -> None:
    log = LogIdentity({"p.orders": "A", "p.users": "B", "p.order_labels": "C"})
    assert log.differences(LogIdentity(dict(log.topics))) == []


def test_an_unknown_topic_id_compares_by_name_only() -> None:
    # a broker that does not report topic ids, or a topic not created yet when recorded
    assert LogIdentity({"p.orders": ""}).differences(LogIdentity({"p.orders": "A"})) == []
    assert LogIdentity({"p.orders": "A"}).differences(LogIdentity({"p.orders": ""})) == []


def test_another_prefix_or_a_re_created_topic_is_another_log() -> None:
    log = LogIdentity({"p.orders": "A", "p.users": "B"})
    assert log.differences(LogIdentity({"q.orders": "A", "q.users": "B"})) == [
        "input topics were p.orders, p.users, now q.orders, q.users"]
    assert log.differences(LogIdentity({"p.orders": "A", "p.users": "Z"})) == [
        "p.users was topic id B, now Z (deleted and re-created)"]


def test_the_record_round_trips() -> None:
    log = LogIdentity({"p.orders": "A", "p.users": "B"})
    assert LogIdentity.from_json(log.to_json()) == log
