"""Replay vs live processing, in the same run: input events/s until caught up.

Publishes N generator events under a fresh topic prefix into a temporary KAPPA_HOME, runs the
live pipeline (``kappa run --until-drained`` path: :class:`kappa.runner.Pipeline`) as v1 and
then ``kappa replay --from earliest`` as v2 on the same log (both versions named uniquely per
run), and prints a table. "Caught up" is the first poll at which the processors' lag over every
input and internal topic and the sink's lag are 0 (polled every 0.5 s); process start-up is
included in both. Target: replay >= 0.9x live.

    KAPPA_KAFKA_BOOTSTRAP=... KAPPA_SCHEMA_REGISTRY_URL=... .venv/bin/python benchmarks/replay.py --events 20000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from pathlib import Path

from kappa import topics
from kappa.kafka import ensure_topics
from kappa.replay import StartPoint, replay
from kappa.runner import Pipeline
from kappa.settings import Settings
from kappa.stack import endpoints


def _live(settings: Settings, version: str) -> tuple[float, int]:
    """Seconds until caught up and events the processors' group consumed, of a live run."""
    pipe = Pipeline(settings, version, echo=lambda _: None)
    t0 = time.monotonic()
    first = pipe.state().processors.consumed
    caught: list[float] = []
    consumed: list[int] = []

    def echo(line: str) -> None:
        if line.startswith("["):
            s = pipe.last_state or pipe.state()
            consumed.append(s.processors.consumed)
            if s.drained and not caught:
                caught.append(time.monotonic() - t0)

    pipe.echo = echo
    pipe.run(until_drained=True, poll=0.5, max_seconds=900)
    return caught[0] if caught else time.monotonic() - t0, consumed[-1] - first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args()

    from kappa.pipeline import DEFAULT, load
    from producers.base import Publisher

    gen = load(DEFAULT).module("generate")  # the e-commerce example's generator
    GeneratorConfig, generate, publish_events = gen.GeneratorConfig, gen.generate, gen.publish_events

    home = Path(tempfile.mkdtemp(prefix="kappa-bench-replay-"))
    run = f"bench{uuid.uuid4().hex[:8]}"
    # fresh versions too: a version is bound to the log it first ran on (kappa.lineage)
    live_v, replay_v = f"{run}v1", f"{run}v2"
    settings = Settings(home=home, topic_prefix=f"{run}.", category_map="")
    ep = endpoints(settings)
    ensure_topics(settings, ep.kafka_bootstrap, topics.input_specs(settings.partitions, settings.topic_prefix))
    records, _ = generate(GeneratorConfig(events=args.events, seed=args.seed))
    with Publisher(settings, ep.kafka_bootstrap) as pub:
        publish_events(pub, records)
        pub.flush()
    load = os.getloadavg()[0]
    live_s, live_n = _live(settings, live_v)
    result = replay(settings, replay_v, StartPoint(None), poll=0.5, echo=lambda _: None, max_seconds=900)
    # Both runs read the same log: input events/s = its events / seconds until caught up. The
    # last column is what the processors' group consumed, internal topics (partials, fraud merge)
    # included.
    n = len(records)
    rows = [("live (kappa run, v1)", live_s, live_n), ("replay (kappa replay, v2)", result.catch_up_seconds,
                                                       result.events)]
    print(f"\n{args.events:,} generator orders ({n:,} input events), KAPPA_HOME {home}, "
          f"load average {load:.1f} before / {os.getloadavg()[0]:.1f} after on {os.cpu_count()} CPUs")
    print(f"{'run':<28}{'input events':>14}{'seconds':>10}{'input ev/s':>12}{'consumed incl. internal':>26}")
    for name, secs, consumed in rows:
        print(f"{name:<28}{n:>14,}{secs:>10.1f}{n / secs:>12,.0f}{consumed:>26,}")
    ratio = rows[0][1] / rows[1][1]
    print(f"{'replay / live':<28}{'':>14}{'':>10}{ratio:>11.2f}x   (target >= 0.90x)")

if __name__ == "__main__":
    main()
