"""Contract tests of stream_processors.faust_internals against real Faust, mode and aiokafka objects.

Each test builds the real object a patch or an accessor relies on (a Faust app's consumer, a
RocksDB table, mode's services, aiokafka's consumer; no broker needed: nothing here starts) and
asserts the private attribute, method or call shape it uses, so an upstream release that
changes one fails here, by name, before a worker misbehaves.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import subprocess
import sys
import tomllib
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiokafka
import faust
import mode
import pytest
from faust.sensors import Monitor, Sensor
from faust.transport.consumer import Consumer, ThreadDelegateConsumer
from faust.types import TP
from faust.types.tuples import Message
from faust.utils.functional import consecutive_numbers
from intervaltree import IntervalTree
from mode.services import WaitResults
from rocksdict import WriteBatch

from kappa.errors import ConfigError, UnsupportedDependency
from stream_processors import faust_internals as fi

REPO = Path(__file__).resolve().parents[2]
T = TP("orders", 0)


def _app(datadir: Path) -> faust.App:
    return faust.App(f"contract-{uuid.uuid4().hex[:6]}", broker="kafka://127.0.0.1:9", store="rocksdb://",
                     datadir=str(datadir), web_enabled=False, autodiscover=False, Monitor=fi.LeanMonitor)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[faust.App]:
    yield _app(tmp_path)


@pytest.fixture
def unpatched() -> Iterator[None]:
    """Faust's classes as imported, before and after the test (install() patches them)."""
    saved = Consumer._new_offset, Consumer.wait_first, ThreadDelegateConsumer._getmany
    Consumer._new_offset, Consumer.wait_first = fi.FAUST_NEW_OFFSET, fi.MODE_WAIT_FIRST  # type: ignore[method-assign]
    yield
    Consumer._new_offset, Consumer.wait_first, ThreadDelegateConsumer._getmany = saved  # type: ignore[method-assign]


def _params(fn: Any) -> list[str]:
    return list(inspect.signature(fn).parameters)


# -- versions --------------------------------------------------------------------------------
def test_the_installed_versions_are_the_supported_ones_and_the_pinned_ones() -> None:
    fi.check_versions()
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = dict(d.split("==", 1) for d in deps if "==" in d)
    assert {dist: pins.get(dist) for dist in fi.SUPPORTED} == fi.SUPPORTED


def test_other_versions_are_refused_in_one_line_before_any_patch(monkeypatch: pytest.MonkeyPatch,
                                                                   unpatched: None) -> None:
    monkeypatch.setitem(fi.SUPPORTED, "aiokafka", "0.13.0")
    with pytest.raises(UnsupportedDependency) as err:
        fi.install()
    message = str(err.value)
    assert "aiokafka 0.14.0 is installed, Kappa needs aiokafka==0.13.0" in message and "\n" not in message
    assert "faust-streaming" in message and "pip install" in message
    assert Consumer._new_offset is fi.FAUST_NEW_OFFSET and Consumer.wait_first is fi.MODE_WAIT_FIRST


def test_a_worker_on_other_versions_says_so_in_one_line_and_starts_nothing(tmp_path: Path) -> None:
    code = ("import sys; from stream_processors import faust_internals as f; f.SUPPORTED['aiokafka'] = '0.0.1'; "
            "from stream_processors.__main__ import main; main(['worker', '--version', 'vx'])")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KAPPA_")} | {"KAPPA_HOME": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "error: aiokafka 0.14.0 is installed, Kappa needs aiokafka==0.0.1: Kappa patches internals of "
        "faust-streaming, mode and aiokafka and runs only on the versions it pins (reinstall them: pip install -e .)"]
    assert not (tmp_path / "processors").exists()  # no state directory claimed


# -- committable offset ----------------------------------------------------------------------
def test_the_consumer_keeps_the_offset_bookkeeping_new_offset_reads(app: faust.App, unpatched: None) -> None:
    c = app.consumer
    assert isinstance(c, Consumer) and type(c)._new_offset is Consumer._new_offset  # the driver does not override
    assert _params(fi.FAUST_NEW_OFFSET) == ["self", "tp"]
    assert isinstance(c._acked, defaultdict) and c._acked[T] == []
    assert isinstance(c._acked_index, defaultdict) and c._acked_index[T] == set()
    assert isinstance(c._gap, defaultdict) and isinstance(c._gap[T], IntervalTree)
    assert isinstance(c._committed_offset, defaultdict) and c._committed_offset[T] is None
    assert list(next(consecutive_numbers([3, 4, 5, 7]))) == [3, 4, 5]


def _acked(app: faust.App, offsets: list[int], committed: int | None, gap: tuple[int, int] | None = None) -> Any:
    c = app.consumer
    c._acked[T], c._acked_index[T], c._committed_offset[T] = list(offsets), set(offsets), committed
    c._gap[T] = IntervalTree()
    if gap:
        c._gap[T].addi(*gap)
    return c


def test_new_offset_agrees_with_faust_where_faust_is_right(tmp_path: Path, unpatched: None) -> None:
    cases: list[tuple[list[int], int | None, tuple[int, int] | None]] = [
        ([0, 1, 2, 3, 4], None, None), ([10, 11, 12, 15], 10, None), ([21, 22], 20, None),
        ([100, 101, 102, 108], 100, (103, 108))]
    for offsets, committed, gap in cases:
        faust_says = fi.FAUST_NEW_OFFSET(_acked(_app(tmp_path / "a"), offsets, committed, gap), T)
        ours = _acked(_app(tmp_path / "b"), offsets, committed, gap)
        assert fi.new_offset(ours, T) == faust_says, (offsets, committed, gap)
        assert ours._acked_index[T].isdisjoint(range(offsets[0], faust_says or 0))  # consumed


def test_faust_still_stalls_on_duplicate_acked_offsets(app: faust.App, unpatched: None) -> None:
    """Why new_offset exists: when this fails, upstream fixed the stall and the patch can go."""
    c = _acked(app, [100, 101, 101, 102, 102, 103, 103, 104], committed=100)
    assert fi.FAUST_NEW_OFFSET(c, T) == 102
    c = _acked(app, [100, 101, 101, 102, 102, 103, 103, 104], committed=100)
    assert fi.new_offset(c, T) == 105


# -- per-message hand-off --------------------------------------------------------------------
def test_the_hand_off_is_the_call_the_fast_path_recognises() -> None:
    assert Consumer.wait_first is mode.Service.wait_first or Consumer.wait_first is fi.wait_first
    assert fi.MODE_WAIT_FIRST is mode.Service.wait_first
    sig = inspect.signature(fi.MODE_WAIT_FIRST)
    assert [p.kind for p in sig.parameters.values()][1] is inspect.Parameter.VAR_POSITIONAL
    assert sig.parameters["timeout"].default is None
    source = inspect.getsource(Consumer._drain_messages)
    assert re.search(r"await self\.wait_first\(\s*callback\(message\), self\.suspend_flow\.wait\(\)\s*\)", source)
    assert WaitResults._fields == ("done", "results", "stopped")


def test_the_fast_path_hands_a_record_to_a_real_consumer_without_a_task(tmp_path: Path, unpatched: None) -> None:
    async def main() -> tuple[Any, int, bool, bool]:
        c = _app(tmp_path).consumer
        assert isinstance(c.suspend_flow, asyncio.Event) and not c.suspend_flow.is_set()
        assert not c._stopped.is_set() and not c._crashed.is_set()
        queue: asyncio.Queue[int] = asyncio.Queue(maxsize=1)

        async def callback() -> None:
            await queue.put(7)

        flow = c.suspend_flow.wait()
        recognised = fi._waits_on(flow, c.suspend_flow)
        turned: list[int] = []
        asyncio.get_running_loop().call_soon(turned.append, 1)
        res = await fi.wait_first(c, callback(), flow)
        return res, queue.get_nowait(), recognised, bool(turned)

    res, item, recognised, loop_turned = asyncio.run(main())
    assert recognised and item == 7 and res.stopped is False and not loop_turned


# -- consumer bookkeeping ----------------------------------------------------------------------
def test_the_consumer_view_reads_a_real_consumer(app: faust.App) -> None:
    c = app.consumer
    for name in ("_paused_partitions", "_buffered_partitions"):
        assert isinstance(getattr(c, name), set), name
    assert isinstance(c._get_active_partitions(), set) and isinstance(c.flow_active, bool)
    view = fi.ConsumerView(c)
    assert (view.active(), view.paused(), view.buffered()) == (set(), set(), set())
    assert (view.read(T), view.committed(T), view.unacked(), view.unacked_count()) == (None, None, [], 0)
    c._read_offset[T], c._committed_offset[T] = 56, 57
    c._buffered_partitions.add(T)
    assert (view.read(T), view.committed(T), view.buffered()) == (56, 57, {T})
    assert "tp" in Message.__slots__  # what _unacked_messages holds: records with their partition
    assert _params(c.assignment) == [] and _params(c.highwater) == ["tp"] and _params(c.seek_wait) == ["partitions"]


def test_an_unassigned_partition_has_no_end(tmp_path: Path) -> None:
    """aiokafka asserts on an unassigned partition; Faust's driver passes its answer through."""
    async def main() -> None:
        consumer = aiokafka.AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9")
        with pytest.raises(AssertionError):
            consumer.highwater(aiokafka.TopicPartition("orders", 0))
        view = fi.ConsumerView(consumer)
        assert view.end(T) is None

    asyncio.run(main())
    from faust.transport.drivers import aiokafka as driver

    assert "_ensure_consumer().highwater(tp)" in inspect.getsource(driver.AIOKafkaConsumerThread.highwater)


# -- table stores --------------------------------------------------------------------------------
def test_a_table_partition_is_a_rocksdict_db_written_in_bulk(app: faust.App) -> None:
    table = app.Table("state", partitions=2, key_type=bytes, value_type=bytes, options={"driver": "rocksdict"})
    db = fi.partition_db(table, 1)
    assert db is fi.partition_db(table, 1)  # opened once
    batch = WriteBatch(raw_mode=True)
    batch.put(b"k1", b"v1")
    batch.put(b"k2", b"v2")
    db.write(batch)
    assert db.get(b"k1") == b"v1" and db.get([b"k1", b"nope"]) == [b"v1", None]
    assert [k for k, _ in db.items(from_key=b"k2")] == [b"k2"]
    changelog = table.changelog_topic.get_topic_name()
    assert changelog.endswith("-state-changelog")
    table.data.set_persisted_offset(TP(changelog, 1), 41)
    assert table.data.persisted_offset(TP(changelog, 1)) == 41


# -- worker signal and sensors -------------------------------------------------------------------
def test_the_sigusr1_hook_is_what_mode_registers() -> None:
    assert "add_signal_handler(signal.SIGUSR1, self._on_sigusr1)" in inspect.getsource(mode.Worker)
    assert _params(mode.Worker._on_sigusr1) == ["self"]
    assert issubclass(fi.Worker, faust.Worker) and fi.Worker._on_sigusr1 is not faust.Worker._on_sigusr1


def test_the_lean_monitor_drops_only_the_per_message_hooks(app: faust.App) -> None:
    hooks = ("on_message_in", "on_stream_event_in", "on_stream_event_out", "on_message_out")
    for hook in hooks:
        assert getattr(Monitor, hook) is not getattr(Sensor, hook), hook  # Monitor does bookkeeping there
        assert getattr(fi.LeanMonitor, hook) is getattr(Sensor, hook), hook
    assert Sensor.on_message_in(fi.LeanMonitor(), T, 0, object()) is None  # a no-op
    assert isinstance(app.monitor, fi.LeanMonitor)


# -- fault injection -----------------------------------------------------------------------------
def test_the_dropped_fetch_patches_the_fetch_every_driver_uses(app: faust.App, unpatched: None) -> None:
    assert type(app.consumer)._getmany is ThreadDelegateConsumer._getmany  # the aiokafka driver inherits it
    assert _params(ThreadDelegateConsumer._getmany) == ["self", "active_partitions", "timeout"]
    assert TP("orders", 0) == ("orders", 0) and hash(TP("orders", 0)) == hash(("orders", 0))  # dict keys
    with pytest.raises(ConfigError, match="expected <topic>:<partition>"):
        fi.inject_dropped_fetch("orders")
    original = ThreadDelegateConsumer._getmany
    fi.inject_dropped_fetch("orders:0")
    assert ThreadDelegateConsumer._getmany is not original
    assert type(app.consumer)._getmany is ThreadDelegateConsumer._getmany  # the running consumer gets it


# -- partitions read outside Faust (KAPPA_FAST_CONSUMER) ---------------------------------------
def test_faust_resumes_the_stream_partitions_only_once_recovered_and_through_resume_partitions() -> None:
    from faust.tables.recovery import Recovery

    assert fi.FAUST_RESUME_PARTITIONS.__qualname__ == "Consumer.resume_partitions"
    assert _params(fi.FAUST_RESUME_PARTITIONS) == ["self", "tps"]
    for method in (Recovery._resume_streams, Recovery.on_recovery_completed):
        source = inspect.getsource(method)
        resume = source.index("consumer.resume_partitions(")
        assert "not self._is_changelog_tp(tp)" in source[resume:resume + 200]
        assert source.index("perform_seek()") > resume  # then Faust seeks them to the committed offsets


def test_the_partitions_read_outside_stay_paused_and_go_to_the_taker(tmp_path: Path) -> None:
    fi.install()
    a = _app(tmp_path)
    c = a.consumer
    taken: list[set[TP]] = []
    fi.read_outside(a, {"orders"}, taken.append, lambda tps: None)
    src, tick = TP("orders", 1), TP("ticks", 1)
    c._paused_partitions.update({src, tick})
    c.resume_partitions({src, tick})
    assert taken == [{src}]
    assert src in c._paused_partitions and tick not in c._paused_partitions
    assert tick in c._get_active_partitions() and src not in c._get_active_partitions()
    other = _app(tmp_path / "o").consumer  # an app that reads nothing outside: Faust's method
    other._paused_partitions.add(src)
    other.resume_partitions({src})
    assert src not in other._paused_partitions


def test_the_revocation_hook_runs_first_after_faust_dropped_its_acked_offsets(tmp_path: Path) -> None:
    fi.install()
    a = _app(tmp_path)
    c = a.consumer
    calls: list[str] = []

    async def faust_handler(revoked: set[TP]) -> None:
        calls.append("faust")

    c._on_partitions_revoked = faust_handler  # what App._new_consumer passed: App._on_partitions_revoked
    fi.read_outside(a, {"orders"}, lambda tps: None,
                    lambda tps: calls.append(f"hook acked={c._acked.get(T)}"))
    c.resume_partitions({TP("ticks", 0)})  # the first resume wraps the revocation callback
    c._acked[T] = [5, 6]
    asyncio.run(c.on_partitions_revoked({T}))
    assert calls == ["hook acked=None", "faust"]
    source = inspect.getsource(Consumer.on_partitions_revoked)
    assert source.index("self._acked.pop(tp, None)") < source.index("self._on_partitions_revoked")


def test_an_acked_range_is_committed_by_faust_from_its_committed_offset(app: faust.App) -> None:
    fi.install()
    c = app.consumer
    c._committed_offset[T] = 10
    fi.ack_range(c, T, 10, 15)
    fi.ack_range(c, T, 15, 15)  # empty
    fi.ack_range(c, T, 15, 20)
    assert c._filter_committable_offsets([T]) == {T: 20} and c._acked[T] == []
    fi.ack_range(c, T, 25, 30)  # not contiguous with the committed offset: nothing
    c._committed_offset[T] = 20
    assert c._filter_committable_offsets([T]) == {}
    assert "if tp in assignment" in inspect.getsource(Consumer._commit_offsets)  # revoked: discarded
