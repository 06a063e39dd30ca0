"""Occurrence labels and stateful features of the model operator (``label_by``, ``label_within``,
``features_by``): hand-computed labels at the interval's bounds, the labels equal to an
independent oracle (an event is True when a label event of its group lies in [t, t + within]),
and the scores, labels and metrics the same for any interleaving of the sources, any batching
and any crash point (the learner restored from its pickled checkpoint, the merge re-delivered)."""

from __future__ import annotations

import pickle
import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream_processors.operators import model as M
from stream_processors.operators.model import ModelSpec, OnlineModel

MIN = 60_000
HOUR = 60 * MIN
SOURCES = ("v/0", "v/1", "s/0", "s/1")


def session_features(view: dict[str, Any], state: dict[str, Any]) -> dict[str, float]:
    state["n"] = state.get("n", 0) + 1
    return {f"url={view['url']}": 1.0, "n": float(state["n"])}


SPEC = ModelSpec("conv", "view_id", "converted", session_features, pipeline="test-occurrence",
                 label_by="visitor", within_ms=HOUR, features_by="visitor")


def learner(lag_ms: int = 0) -> OnlineModel:
    return OnlineModel(SPEC, lag_ms=lag_ms, sources=SOURCES, drift_policy="none")


class Recorder:
    """The (key, label) pairs a learner learns, in order (its ``_learn`` wrapped)."""

    def __init__(self, monkeypatch: Any) -> None:
        self.learned: list[tuple[str, bool]] = []
        orig = M.OnlineModel._learn

        def learn(lrn: OnlineModel, key: str, kept: Any, y: bool, time: int, out: Any) -> None:
            self.learned.append((key, y))
            orig(lrn, key, kept, y, time, out)

        monkeypatch.setattr(M.OnlineModel, "_learn", learn)


def feed(lrn: OnlineModel, items: list[tuple[str, int, str, dict[str, Any], str]]) -> None:
    for kind, t, key, rec, src in items:
        lrn.add(kind, t, key, rec, src, lrn.offset + 1, lrn.source_offset.get(src, -1) + 1)


def v(vid: str, visitor: str, t: int, src: str = "v/0", url: str = "/") -> tuple[str, int, str, dict[str, Any], str]:
    return ("event", t, vid, {"view_id": vid, "visitor": visitor, "url": url, "event_time": t}, src)


def s(visitor: str, t: int, src: str = "s/0") -> tuple[str, int, str, dict[str, Any], str]:
    return ("label", t, visitor, {"visitor": visitor, "event_time": t}, src)


def close(lrn: OnlineModel, t: int) -> None:
    """Every source moves to ``t``: the watermark passes everything before it."""
    feed(lrn, [("event", t, f"tick-{src}-{t}", {"view_id": "", "visitor": "-", "url": "/", "event_time": t}, src)
               if src.startswith("v") else s("-", t, src) for src in SOURCES])


def test_a_signup_labels_the_views_of_the_hour_before_it_bounds_included(monkeypatch: Any) -> None:
    rec = Recorder(monkeypatch)
    lrn = learner()
    feed(lrn, [
        v("a1", "a", 0), v("a2", "a", 10 * MIN), v("b1", "b", 0, "v/1"), v("c1", "c", 0, "v/1"),
        s("a", HOUR),                  # a1 exactly an hour before: True; a2 too
        s("c", HOUR + 1, "s/1"),       # one ms past c1's hour: c1 is False, the signup labels nothing
        v("a3", "a", HOUR),            # at the signup's time: in [t, t + 1h] too (the join's bounds)
        v("a4", "a", HOUR + 1),        # after it: its own hour passes without a signup
    ])
    close(lrn, 3 * HOUR)
    lrn.release()
    learned = dict(rec.learned)
    assert {k: learned[k] for k in ("a1", "a2", "b1", "c1", "a3", "a4")} == {
        "a1": True, "a2": True, "b1": False, "c1": False, "a3": True, "a4": False}
    # in merge order: a's signup (1h), then at 1h + 1 the hours of b1 and c1 (ending at 1h) are over
    assert rec.learned == [("a1", True), ("a2", True), ("a3", True), ("b1", False), ("c1", False), ("a4", False)]
    assert lrn.counts["label_without_event"] >= 1 and lrn.counts["label_events"] == 1
    assert not lrn.groups.get("a") and "a4" not in lrn.pending


def test_a_view_at_a_signups_time_is_labelled_by_it(monkeypatch: Any) -> None:
    rec = Recorder(monkeypatch)
    lrn = learner()
    feed(lrn, [v("a1", "a", 5 * MIN), s("a", 5 * MIN)])
    close(lrn, 2 * HOUR)
    lrn.release()
    assert ("a1", True) in rec.learned


def test_stateful_features_follow_the_visitors_views_and_survive_a_checkpoint() -> None:
    lrn = learner()
    feed(lrn, [v("a1", "a", 0), v("b1", "b", 1, "v/1"), v("a2", "a", 2)])
    lrn = pickle.loads(pickle.dumps(lrn))
    feed(lrn, [v("a3", "a", 3)])
    items = {e[2]: e[6] for e in lrn.buffer}
    assert [items[k][1]["n"] for k in ("a1", "a2", "a3", "b1")] == [1.0, 2.0, 3.0, 1.0]
    assert items["a3"][0] == "a"  # the view's group: its label_by value


def _timeline(seed: int) -> tuple[list[Any], list[Any]]:
    rng = random.Random(seed)
    views, signups = [], []
    for n in range(12):
        visitor, t = f"u{n}", rng.randrange(4 * HOUR)
        src = f"v/{n % 2}"
        for i in range(rng.randint(1, 5)):
            t += rng.randrange(40 * MIN)
            views.append(v(f"u{n}-{i}", visitor, t, src, rng.choice(("/", "/pricing"))))
        if rng.random() < 0.6:
            signups.append(s(visitor, t + rng.randrange(-30 * MIN, 70 * MIN), f"s/{n % 2}"))
    for stream in (views, signups):
        stream.sort(key=lambda e: (e[4], e[1]))  # each source in time order (its offset order)
    # last, every source moves far ahead: the watermark passes every hour above
    views += [v(f"end-{src}", f"-{src}", 100 * HOUR, src) for src in SOURCES[:2]]
    signups += [s("-", 100 * HOUR, src) for src in SOURCES[2:]]
    return views, signups


def _oracle(views: list[Any], signups: list[Any]) -> dict[str, bool]:
    return {key: any(g["visitor"] == rec["visitor"] and t <= st_ <= t + HOUR for _, st_, _, g, _ in signups)
            for _, t, key, rec, _ in views if not key.startswith("end-")}


def _run(items: list[Any], batch: int, crash_at: int | None) -> tuple[list[Any], list[tuple[str, bool]], Any]:
    """The merge ``items`` (a fixed interleaving) fed in batches; at ``crash_at`` the learner is
    restored from its last checkpoint and the merge re-delivered from the checkpoint's offset."""
    learned: list[tuple[str, bool]] = []
    orig = M.OnlineModel._learn

    def learn(lrn: OnlineModel, key: str, kept: Any, y: bool, time: int, out: Any) -> None:
        learned.append((key, y))
        orig(lrn, key, kept, y, time, out)

    M.OnlineModel._learn = learn  # type: ignore[method-assign]
    try:
        merged = []
        offsets: dict[str, int] = {}
        for kind, t, key, rec, src in items:
            off = offsets.get(src, 0)
            offsets[src] = off + 1
            merged.append((kind, t, key, rec, src, off))
        lrn, scores = learner(lag_ms=20 * MIN), {}
        saved, saved_learned, i = pickle.dumps(lrn), 0, 0
        crashed = crash_at is None
        while i < len(merged):
            for m in range(i, min(i + batch, len(merged))):
                kind, t, key, rec, src, off = merged[m]
                lrn.add(kind, t, key, rec, src, m, off)
            i = min(i + batch, len(merged))
            _, out = lrn.release()
            scores.update({r["view_id"]: r["conv_score"] for r in out})
            if not crashed and i >= crash_at:  # type: ignore[operator]
                crashed = True
                lrn = pickle.loads(saved)  # what the last checkpoint held
                del learned[saved_learned:]
                i = lrn.offset + 1
            elif i % (3 * batch) == 0:
                saved, saved_learned = pickle.dumps(lrn), len(learned)
        _, out = lrn.release(-1)
        scores.update({r["view_id"]: r["conv_score"] for r in out})
        return sorted(scores.items()), learned, lrn.flush().quality[-1]
    finally:
        M.OnlineModel._learn = orig  # type: ignore[method-assign]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), shuffle=st.integers(0, 10_000), batch=st.integers(1, 9),
       crash=st.one_of(st.none(), st.integers(1, 60)))
def test_any_interleaving_batching_and_crash_gives_the_in_order_run(seed: int, shuffle: int, batch: int,
                                                                    crash: int | None) -> None:
    views, signups = _timeline(seed)
    in_order = sorted(views + signups, key=lambda e: (e[1], e[0] == "event"))
    # another interleaving of the four sources, each in its own (offset) order
    rng, queues, mixed = random.Random(shuffle), {}, []
    for e in views + signups:
        queues.setdefault(e[4], []).append(e)
    while any(queues.values()):
        src = rng.choice([q for q, es in queues.items() if es])
        mixed.append(queues[src].pop(0))
    scores, learned, quality = _run(in_order, 1, None)
    assert {k: y for k, y in learned if not k.startswith("end-")} == _oracle(views, signups)  # every hour is over
    again = _run(mixed, batch, crash)
    assert again[0] == scores and again[1] == learned
    assert again[2] == quality
