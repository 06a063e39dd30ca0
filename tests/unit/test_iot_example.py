"""examples/iot: its generator's kinds agree with the pipeline's own rules and definitions."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from kappa.pipeline import load
from kappa.pipeline.definition import Pipeline
from producers.generators import expectations, generator_of
from schemas.rules import reason_code, validators

PIPE: Pipeline = load(Path(__file__).resolve().parents[2] / "examples" / "iot")
NOW = 1_700_000_000_000


def test_every_invalid_reading_breaks_the_next_declared_rule_and_the_rest_pass() -> None:
    events = generator_of(PIPE)(3000, seed=7, now_ms=NOW)  # type: ignore[misc]
    validate = validators(PIPE)
    module = PIPE.resolve("generate:INVALID")
    assert module == PIPE.input("readings").reasons
    reasons = [reason_code(validate[e.topic](e.value, NOW) or "") for e in events if e.kind == "invalid"]
    assert reasons == [module[i % len(module)] for i in range(len(reasons))]
    assert all(validate[e.topic](e.value, NOW) is None for e in events if e.kind != "invalid")


def test_duplicates_repeat_a_published_id_and_too_late_ones_are_twenty_minutes_behind() -> None:
    events = generator_of(PIPE)(3000, seed=7, now_ms=NOW)  # type: ignore[misc]
    seen: dict[str, int] = {}
    newest: dict[str, int] = {}
    for e in events:
        if e.topic != "readings" or e.kind == "invalid":
            continue
        rid, dev, et = e.value["reading_id"], e.value["device_id"], e.value["event_time"]
        if e.kind == "duplicate":
            assert rid in seen
            continue
        assert rid not in seen
        seen[rid] = et
        if e.kind == "too_late":
            assert et <= newest[dev] - 20 * 60_000
        newest[dev] = max(newest.get(dev, et), et)
    exp = expectations(events)["readings"]
    kinds = Counter(e.kind for e in events if e.topic == "readings")
    assert exp["published"] == 3000 == exp["landed"] + exp["rejected"] + exp["duplicates"]
    assert exp["duplicates"] == kinds["duplicate"] > 0 and exp["too_late"] == kinds["too_late"] > 0


def test_devices_move_site_as_new_versions_and_every_time_is_in_the_past() -> None:
    events = generator_of(PIPE)(3000, seed=7, now_ms=NOW)  # type: ignore[misc]
    versions = Counter(e.key for e in events if e.topic == "devices")
    assert max(versions.values()) >= 2
    times = [e.value.get("event_time") or e.value.get("updated_at") or e.value.get("checked_at") for e in events
             if e.kind != "invalid"]
    assert max(times) <= NOW - 60_000
