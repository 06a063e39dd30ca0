"""Online-learning throughput: scored+learned events/s, Kappa's learners next to River alone.

Same data, same run, same process (no broker: this measures the learning stages, the Kafka
plumbing is measured by the pipeline benchmarks). Rows:

* ``river progressive_val_score``: River's own loop, the reference speed;
* ``samples learner, one-at-a-time``: :class:`SampleLearner.learn` (exact progressive validation);
* ``samples learner, mini-batch B``: ``predict_proba_many`` + ``learn_many`` per batch of B;
* ``river loop, fraud features``: predict_proba_one + learn_one on the fraud features alone;
* ``fraud learner``: :class:`OnlineModel` of the fraud model (merge, watermark, pending features, metrics, drift),
  events = orders + labels, added one at a time as dicts;
* ``fraud learner, merge records``: the same, fed as the worker feeds it: the merge topic's JSON
  records (as the stream stage and the label forwarder write them) in batches of 2000
  (:meth:`OnlineModel.add_records`, then ``release``); plus the pickle+zlib checkpoint size and time.

    .venv/bin/python benchmarks/learning.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import gc
import os
import pickle
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the synthetic scenario is a test helper (tests/support)
    sys.path.insert(0, str(REPO))

import orjson  # noqa: E402
from river import datasets, evaluate, metrics  # noqa: E402

from kappa.pipeline import DEFAULT, load  # noqa: E402
from stream_processors.operators.model import OnlineModel, model_spec  # noqa: E402
from stream_processors.samples import SampleLearner, default_model  # noqa: E402
from tests.support.learning_synthetic import scenario  # noqa: E402

FRAUD = model_spec(load(DEFAULT), "fraud")
"""The e-commerce fraud model (examples/ecommerce [models.fraud]) under the generic operator."""


def best_of(repeat: int, fn: Callable[[], int]) -> tuple[int, float, float]:
    """(events, wall seconds, CPU seconds) of the run with the least CPU time over ``repeat``
    runs (CPU time: the machine is shared, and another process's load shows in wall time only)."""
    best: tuple[int, float, float] = (0, float("inf"), float("inf"))
    for _ in range(repeat):
        gc.collect()
        t, c = time.perf_counter(), time.process_time()
        n = fn()
        wall, cpu = time.perf_counter() - t, time.process_time() - c
        if cpu < best[2]:
            best = (n, wall, cpu)
    return best


def run(repeat: int = 3, fraud_orders: int = 20_000,
        state: dict[str, OnlineModel] | None = None) -> list[dict[str, float | str | int]]:
    """Rows ``{"stage", "events", "seconds", "cpu_seconds", "events_per_s"}`` (best of ``repeat``;
    ``events_per_s`` per CPU second)."""
    args = argparse.Namespace(repeat=repeat, fraud_orders=fraud_orders)
    phishing = list(datasets.Phishing()) * 8  # 10 000 samples
    rows = []

    def river_pvs() -> int:
        evaluate.progressive_val_score(phishing, default_model(), metrics.Accuracy() + metrics.LogLoss())
        return len(phishing)

    def samples_one() -> int:
        lrn = SampleLearner("phishing")
        for i, (x, y) in enumerate(phishing):
            lrn.learn(i, x, y, i)
        return len(phishing)

    def samples_batch(b: int) -> Callable[[], int]:
        def run() -> int:
            lrn = SampleLearner("phishing")
            for s in range(0, len(phishing), b):
                lrn.learn_batch([(i, x, y, i, i) for i, (x, y) in enumerate(phishing[s:s + b], start=s)])
            return len(phishing)
        return run

    rows.append(("river progressive_val_score (Phishing x8)", *best_of(args.repeat, river_pvs)))
    rows.append(("samples learner, one-at-a-time (exact)", *best_of(args.repeat, samples_one)))
    for b in (32, 256):
        rows.append((f"samples learner, mini-batch {b}", *best_of(args.repeat, samples_batch(b))))

    orders, labels = scenario(args.fraud_orders, drift_at=args.fraud_orders // 2, seed=3)
    truth = {lb["order_id"]: lb["is_fraud"] for lb in labels}
    events = sorted([("order", o["event_time"], o["order_id"], o, f"o/{i % 4}") for i, o in enumerate(orders)]
                    + [("label", lb["label_time"], lb["order_id"], lb, f"l/{i % 4}")
                       for i, lb in enumerate(labels)], key=lambda e: e[1])

    def river_fraud() -> int:
        model = FRAUD.factory()
        for o in orders:
            x = FRAUD.features(o)
            model.predict_proba_one(x)
            model.learn_one(x, truth[o["order_id"]])
        return 2 * len(orders)

    state = {} if state is None else state

    def fraud_learner() -> int:
        lrn = OnlineModel(FRAUD, sources=("o/0", "o/1", "o/2", "o/3", "l/0", "l/1", "l/2", "l/3"))
        for off, (kind, t, oid, data, src) in enumerate(events):
            lrn.add(kind, t, oid, data, src, off)
            if off % 500 == 0:
                lrn.release()
        lrn.release(-1)
        state["fraud"] = lrn
        return len(events)

    # the merge topic's records: the stream stage's (stream_processors.io) and the label forwarder's
    records = [orjson.dumps({"kind": "event" if kind == "order" else "label", "time": t, "id": oid, "src": src,
                             "off": off, "data": data})
               for off, (kind, t, oid, data, src) in enumerate(events)]

    def fraud_records() -> int:
        lrn = OnlineModel(FRAUD, sources=("o/0", "o/1", "o/2", "o/3", "l/0", "l/1", "l/2", "l/3"))
        for start in range(0, len(records), 2000):
            lrn.add_records([(off, records[off]) for off in range(start, min(start + 2000, len(records)))])
            lrn.release()
        lrn.release(-1)
        state["fraud"] = lrn
        return len(records)

    rows.append(("river loop, fraud features (learn at once)", *best_of(args.repeat, river_fraud)))
    rows.append(("fraud learner (orders+labels, delayed)", *best_of(args.repeat, fraud_learner)))
    rows.append(("fraud learner, merge records (as the worker)", *best_of(args.repeat, fraud_records)))
    return [{"stage": name, "events": n, "seconds": secs, "cpu_seconds": cpu, "events_per_s": n / cpu}
            for name, n, secs, cpu in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--fraud-orders", type=int, default=20_000)
    args = parser.parse_args()
    state: dict[str, OnlineModel] = {}
    rows = run(args.repeat, args.fraud_orders, state)
    plain = float(next(r["events_per_s"] for r in rows if str(r["stage"]).startswith("river loop")))
    print(f"method: one process, no broker, same events; best of {args.repeat} by CPU time; events/s per CPU "
          f"second; ratio to 'river loop, fraud features'; load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'stage':<46} {'events':>8} {'wall s':>8} {'CPU s':>8} {'CPU us/ev':>9} {'events/s':>10} {'ratio':>6}")
    for r in rows:
        n, cpu = int(r["events"]), float(r["cpu_seconds"])
        print(f"{r['stage']!s:<46} {n:>8} {float(r['seconds']):>8.3f} {cpu:>8.3f} {1e6 * cpu / n:>9.1f} "
              f"{n / cpu:>10,.0f} {n / cpu / plain:>6.2f}")
    lrn = state["fraud"]
    t = time.perf_counter()
    blob = zlib.compress(pickle.dumps(lrn, protocol=pickle.HIGHEST_PROTOCOL), 1)
    print(f"\nfraud checkpoint: {len(blob):,} bytes (pending={len(lrn.pending)}, learned ids={len(lrn.learned)}), "
          f"pickle+zlib {1000 * (time.perf_counter() - t):.1f} ms")


if __name__ == "__main__":
    main()
