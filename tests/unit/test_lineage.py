"""Pure logic of :mod:`kappa.lineage`: when is a log another log."""

from __future__ import annotations

import doctest
from pathlib import Path

from kappa import lineage
from kappa.lineage import LogIdentity, adopt


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
    log = LogIdentity({"p.orders": "A", "p.users": "B"}, record="r1")
    back = LogIdentity.from_json(log.to_json())
    assert back == log and back.record == "r1"


def _worker_dir(tmp_path: Path) -> Path:
    d = tmp_path / "worker-0"
    (d / "v1" / "tables" / "state-0.db").mkdir(parents=True)
    (d / ".lock").write_text("123")
    return d


def test_a_worker_dir_of_the_same_binding_is_kept(tmp_path: Path) -> None:
    d = _worker_dir(tmp_path)
    bound = LogIdentity({"p.orders": "A"}, record="r1")
    assert adopt(d, bound) is True  # built before any marker: not trusted
    (d / "v1" / "tables").mkdir(parents=True)
    assert adopt(d, bound) is False
    assert (d / "v1" / "tables").is_dir() and (d / ".lock").read_text() == "123"


def test_a_worker_dir_of_an_earlier_binding_is_emptied_but_keeps_its_lock(tmp_path: Path) -> None:
    d = _worker_dir(tmp_path)
    adopt(d, LogIdentity({"p.orders": "A"}, record="r1"))
    (d / "v1" / "tables").mkdir(parents=True)
    assert adopt(d, LogIdentity({"q.orders": "B"}, record="r2")) is True
    assert sorted(p.name for p in d.iterdir()) == [".lock", "lineage.json"]
    assert adopt(tmp_path / "new", LogIdentity({"q.orders": "B"}, record="r2")) is False
