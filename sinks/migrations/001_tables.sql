-- Storage of pipeline version ${version} in database ${db}: the tables every pipeline has, keyed
-- so that a re-delivered row replaces its earlier copy (exactly-once results), with lineage
-- (kafka_topic/partition/offset, pipeline_version, ingested_at) on every row. The tables of a
-- pipeline's streams, windows and model scores are derived from its definition (sinks/ddl.py;
-- the e-commerce orders, revenue_windows and scores were created here before, with the same DDL).
-- Every table takes inserts, so every table keeps a deduplication window for
-- insert_deduplication_token (re-sent batches are dropped by the engine).

CREATE DATABASE IF NOT EXISTS ${db};

CREATE TABLE IF NOT EXISTS ${db}.model_quality (
    model LowCardinality(String),
    bucket Int64,
    labelled Int64,
    accuracy Float64,
    roc_auc Float64,
    log_loss Float64,
    drift_detections Int64,
    pipeline_version LowCardinality(String),
    kafka_topic LowCardinality(String),
    kafka_partition Int32,
    kafka_offset Int64,
    ingested_at DateTime64(3, 'UTC')
) ENGINE = ReplacingMergeTree(kafka_offset)
ORDER BY (model, bucket)
SETTINGS non_replicated_deduplication_window = 1000;

CREATE TABLE IF NOT EXISTS ${db}.drift_events (
    model LowCardinality(String),
    detector LowCardinality(String),
    labelled Int64,
    event_time DateTime64(3, 'UTC'),
    action LowCardinality(String),
    pipeline_version LowCardinality(String),
    kafka_topic LowCardinality(String),
    kafka_partition Int32,
    kafka_offset Int64,
    ingested_at DateTime64(3, 'UTC')
) ENGINE = ReplacingMergeTree(kafka_offset)
ORDER BY (model, detector, labelled, event_time)
SETTINGS non_replicated_deduplication_window = 1000;

-- Keyed by what identifies one rejection, so a processor that re-emits it after a crash
-- (at a new offset) does not count it twice.
CREATE TABLE IF NOT EXISTS ${db}.rejected_events (
    source String,
    topic String,
    reason String,
    payload String,
    rejected_at DateTime64(3, 'UTC'),
    stage LowCardinality(String),
    pipeline_version LowCardinality(String),
    kafka_topic LowCardinality(String),
    kafka_partition Int32,
    kafka_offset Int64,
    ingested_at DateTime64(3, 'UTC')
) ENGINE = ReplacingMergeTree(kafka_offset)
ORDER BY (stage, topic, source, reason, cityHash64(payload))
SETTINGS non_replicated_deduplication_window = 1000;

-- Offsets stored with the data: the sink seeks here on partition assignment.
CREATE TABLE IF NOT EXISTS ${db}.sink_offsets (
    topic String,
    partition Int32,
    next_offset Int64,
    updated_at DateTime64(3, 'UTC')
) ENGINE = ReplacingMergeTree(next_offset)
ORDER BY (topic, partition)
SETTINGS non_replicated_deduplication_window = 1000;
