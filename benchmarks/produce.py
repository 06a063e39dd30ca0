"""Serialize+produce throughput of orders vs raw confluent-kafka produce of pre-encoded bytes.

Both runs use the same producer settings (producers.base.PRODUCER_CONFIG), the same keys and
the same topic layout, in one process, one after the other; each is timed from the first
produce to the end of the flush (every message acknowledged). Prints a table.

    KAPPA_KAFKA_BOOTSTRAP=127.0.0.1:9092 \\
    KAPPA_SCHEMA_REGISTRY_URL=http://127.0.0.1:8081/apis/ccompat/v7 \\
    .venv/bin/python benchmarks/produce.py --events 200000
"""

from __future__ import annotations

import argparse
import time
import uuid

from confluent_kafka import Producer

from kappa.kafka import TopicSpec, client_config, ensure_topics
from kappa.settings import Settings
from producers.base import PRODUCER_CONFIG, Publisher
from producers.ecommerce import GeneratorConfig, generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()
    settings = Settings()
    bootstrap = settings.kafka_bootstrap or "127.0.0.1:9092"
    run = uuid.uuid4().hex[:8]
    topic_avro, topic_raw = f"bench-{run}.orders", f"bench-{run}.raw"
    ensure_topics(settings, bootstrap, [TopicSpec(topic_avro, args.partitions),
                                        TopicSpec(topic_raw, args.partitions)])
    events = generate(GeneratorConfig(events=args.events, seed=1, start_ms=1_700_000_000_000,
                                      dup_rate=0, invalid_rate=0))[0]
    orders = [e.value for e in events if e.topic == "orders"][: args.events]
    keys = [str(o["user_id"]) for o in orders]

    # 1. Kappa path: Publisher.publish = generated Avro writer + Confluent frame + produce.
    pub = Publisher(Settings(topic_prefix=f"bench-{run}."), bootstrap)
    pub.encoder(topic_avro).encode(orders[0])  # registers the schema outside the timing
    t0 = time.perf_counter()
    pub.publish_many(topic_avro, orders, key_field="user_id")
    summary = pub.flush()
    t_avro = time.perf_counter() - t0
    encoded = pub.encoder(topic_avro).encode_many(orders)

    # 2. Raw path: pre-encoded bytes, same config, same keys.
    raw = Producer(client_config(settings, bootstrap, **PRODUCER_CONFIG))
    bkeys = [k.encode() for k in keys]
    t0 = time.perf_counter()
    for value, bkey in zip(encoded, bkeys, strict=True):
        while True:
            try:
                raw.produce(topic_raw, value, bkey)
                break
            except BufferError:
                raw.poll(0.05)
    assert raw.flush(60) == 0
    t_raw = time.perf_counter() - t0

    # 3. Serialization alone, for reference.
    enc = pub.encoder(topic_avro)
    t0 = time.perf_counter()
    enc.encode_many(orders)
    t_enc = time.perf_counter() - t0

    n = len(orders)
    rows = [("serialize+produce (publish_many)", n / t_avro), ("raw produce (pre-encoded)", n / t_raw),
            ("serialize only (Encoder)", n / t_enc)]
    print(f"orders: {n}, partitions: {args.partitions}, delivered: {summary.delivered}")
    print(f"{'path':32} {'events/s':>12} {'vs raw':>8}")
    for name, eps in rows:
        print(f"{name:32} {eps:12,.0f} {eps / rows[1][1]:8.0%}")


if __name__ == "__main__":
    main()
