"""Replay vs live processing, in the same run: input events/s until caught up.

Publishes N generator events under a fresh topic prefix into a temporary KAPPA_HOME, runs the
live pipeline (``kappa run --until-drained`` path: :class:`kappa.runner.Pipeline`) as v1 and
then ``kappa replay --from earliest`` as v2 on the same log, and prints a table. "Caught up" is
the first poll at which the processors' lag over every input and internal topic and the sink's
lag are 0 (polled every 0.5 s); process start-up is included in both. Target: replay >= 0.9x live.

    KAPPA_KAFKA_BOOTSTRAP=... KAPPA_SCHEMA_REGISTRY_URL=... .venv/bin/python benchmarks/replay.py --events 20000
"""

from __future__ import annotations

import argparse
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


def _live(settings: Settings, version: str) -> tuple[int, float]:
    pipe = Pipeline(settings, version)
    t0 = time.monotonic()
    first = pipe.state().processors.consumed
    caught: list[float] = []
    consumed: list[int] = []

    def echo(line: str) -> None:
        if line.startswith("["):
            s = pipe.state()
            consumed.append(s.processors.consumed)
            if s.drained and not caught:
                caught.append(time.monotonic() - t0)

    pipe.echo = echo
    pipe.run(until_drained=True, poll=0.5, max_seconds=900)
    return consumed[-1] - first, caught[0] if caught else time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args()

    from producers.base import Publisher
    from producers.ecommerce import GeneratorConfig, generate, publish_events

    home = Path(tempfile.mkdtemp(prefix="kappa-bench-replay-"))
    settings = Settings(home=home, topic_prefix=f"bench{uuid.uuid4().hex[:8]}.", category_map="")
    ep = endpoints(settings)
    ensure_topics(settings, ep.kafka_bootstrap, topics.input_specs(settings.partitions, settings.topic_prefix))
    records, _ = generate(GeneratorConfig(events=args.events, seed=args.seed))
    with Publisher(settings, ep.kafka_bootstrap) as pub:
        publish_events(pub, records)
        pub.flush()
    live_n, live_s = _live(settings, "v1")
    result = replay(settings, "v2", StartPoint(None), poll=0.5, echo=lambda _: None, max_seconds=900)
    rows = [("live (kappa run, v1)", live_n, live_s), ("replay (kappa replay, v2)", result.events,
                                                        result.catch_up_seconds)]
    print(f"\n{args.events:,} generator orders ({len(records):,} input events), KAPPA_HOME {home}")
    print(f"{'run':<28}{'input events':>14}{'seconds':>10}{'events/s':>12}")
    for name, n, s in rows:
        print(f"{name:<28}{n:>14,}{s:>10.1f}{n / s:>12,.0f}")
    ratio = (rows[1][1] / rows[1][2]) / (rows[0][1] / rows[0][2])
    print(f"{'replay / live':<28}{'':>14}{'':>10}{ratio:>11.2f}x   (target >= 0.90x)")


if __name__ == "__main__":
    main()
