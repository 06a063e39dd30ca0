"""The IoT pipeline's generator: devices on sites, their readings, re-sent and broken ones, faults.

Deterministic for a seed: devices first (some move to another site later: a new version of the
device, so readings before and after the move are enriched differently), then readings every
100 ms of generator clock with event times up to 10 s behind it (out of order), re-sent
readings (``duplicate``), readings breaking each rule in turn (``invalid``), readings of
unregistered devices (they land with no site), readings 20 minutes behind their device's
previous one (``too_late``: every window holding them has closed on their partition), and
fault checks of some readings a few minutes later.

>>> evs = events(400, seed=1, now_ms=1_700_000_000_000)
>>> evs == events(400, seed=1, now_ms=1_700_000_000_000)
True
>>> sorted({e.kind for e in evs})
['duplicate', 'invalid', 'table', 'too_late', 'valid']
>>> sum(e.topic == "readings" for e in evs)
400
"""

from __future__ import annotations

import random
from typing import Any

from producers.generators import Event

__all__ = ["INVALID", "SITES", "events"]

SITES = ("berlin", "lyon", "porto", "turin", "vienna", "zurich")
METRICS = {"thermometer": ("temperature", "celsius", 21.0, 2.0),
           "hygrometer": ("humidity", "percent", 45.0, 8.0),
           "barometer": ("pressure", "hpa", 1013.0, 5.0)}
INVALID = ("empty_reading_id", "empty_device_id", "bad_metric", "bad_unit", "out_of_range", "future_event_time")
"""The readings rules of pipeline.toml in their order: each invalid reading breaks the next one."""
STEP_MS = 100
DAY_MS = 86_400_000
LATE_MS = 20 * 60_000


def _device(i: int, rng: random.Random, at: int) -> dict[str, Any]:
    kind = ("thermometer", "hygrometer", "barometer")[i % 3]
    return {"device_id": f"dev-{i:04d}", "site": SITES[rng.randrange(len(SITES))], "kind": kind,
            "installed_at": at - 30 * DAY_MS, "updated_at": at - DAY_MS}


def _reading(rid: str, dev: dict[str, Any], rng: random.Random, event_time: int) -> dict[str, Any]:
    metric, unit, mean, sd = METRICS[dev["kind"]]
    value = round(rng.gauss(mean, sd), 2)
    if metric == "humidity":
        value = min(max(value, 0.0), 100.0)
    return {"reading_id": rid, "device_id": dev["device_id"], "metric": metric, "value": value,
            "unit": unit, "event_time": event_time}


def _break(rec: dict[str, Any], reason: str, rng: random.Random) -> dict[str, Any]:
    bad = dict(rec)
    if reason == "empty_reading_id":
        bad["reading_id"] = ""
    elif reason == "empty_device_id":
        bad["device_id"] = " "
    elif reason == "bad_metric":
        bad["metric"] = "voltage"
    elif reason == "bad_unit":
        bad["unit"] = {"temperature": "kelvin", "humidity": "ratio", "pressure": "bar"}[rec["metric"]]
    elif reason == "out_of_range":
        bad["value"] = {"temperature": 250.0, "humidity": -5.0, "pressure": 20.0}[rec["metric"]]
    else:
        bad["event_time"] = rec["event_time"] + 10 * 365 * DAY_MS
    return bad


def _run(count: int, seed: int, start: int, dup_rate: float, invalid_rate: float,
         late_rate: float) -> list[Event]:
    rng = random.Random(seed)
    n_devices = min(max(count // 150, 6), 600)
    devices = [_device(i, rng, start) for i in range(n_devices)]
    out = [Event("devices", d["device_id"], dict(d), "table") for d in devices]
    moves = {rng.randrange(count): rng.randrange(n_devices) for _ in range(max(n_devices // 8, 1))}
    faults: list[tuple[int, Event]] = []
    sent: list[dict[str, Any]] = []
    last_time: dict[str, int] = {}
    k_invalid = 0
    for i in range(count):
        clock = start + i * STEP_MS
        if i in moves:
            d = devices[moves[i]]
            d = devices[moves[i]] = {**d, "site": SITES[(SITES.index(d["site"]) + 1) % len(SITES)],
                                     "updated_at": clock}
            out.append(Event("devices", d["device_id"], dict(d), "table"))
        while faults and faults[0][0] <= clock:
            out.append(faults.pop(0)[1])
        r = rng.random()
        if r < dup_rate and sent:
            out.append(Event("readings", (rec := rng.choice(sent))["device_id"], dict(rec), "duplicate"))
            continue
        dev = devices[rng.randrange(n_devices)]
        rid = f"r{seed}-{i:08d}"
        if r < dup_rate + invalid_rate:
            rec = _break(_reading(rid, dev, rng, clock - rng.randrange(10_000)), INVALID[k_invalid % len(INVALID)],
                         rng)
            k_invalid += 1
            out.append(Event("readings", rec["device_id"], rec, "invalid"))
            continue
        if r < dup_rate + invalid_rate + late_rate and dev["device_id"] in last_time:
            rec = _reading(rid, dev, rng, last_time[dev["device_id"]] - LATE_MS)
            out.append(Event("readings", rec["device_id"], rec, "too_late"))
            continue
        if r > 0.995:  # a device nobody registered: lands without a site
            dev = {"device_id": f"ghost-{i % 7}", "kind": "thermometer"}
        rec = _reading(rid, dev, rng, clock - rng.randrange(10_000))
        last_time[rec["device_id"]] = max(last_time.get(rec["device_id"], 0), rec["event_time"])
        out.append(Event("readings", rec["device_id"], rec, "valid"))
        sent.append(rec)
        if rng.random() < 0.3:
            checked = rec["event_time"] + rng.randrange(60_000, 180_000)
            is_fault = abs(rec["value"] - METRICS[dev["kind"]][2]) > 2.5 * METRICS[dev["kind"]][3]
            faults.append((checked, Event("faults", rid, {"reading_id": rid, "is_fault": is_fault,
                                                          "checked_at": checked}, "valid")))
            faults.sort(key=lambda f: f[0])
    out += [f for _, f in faults]
    return out


def events(count: int, seed: int = 42, now_ms: int | None = None, *, dup_rate: float = 0.02,
           invalid_rate: float = 0.02, late_rate: float = 0.01) -> list[Event]:
    """``count`` readings (and the devices and faults around them), in publish order.

    They start at a UTC midnight and end at least a minute before ``now_ms`` (default: the wall
    clock), within a day of it, so a seed gives the same records up to whole days.
    """
    import time

    now = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    span = count * STEP_MS + 180_000
    start = (now - 60_000 - span) // DAY_MS * DAY_MS
    return _run(count, seed, start, dup_rate, invalid_rate, late_rate)
