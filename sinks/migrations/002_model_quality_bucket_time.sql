-- kappa.model_quality.bucket becomes a time, DateTime64(3, 'UTC'), like every other time column,
-- and bucket_index (what identifies a bucket within its model) is stored beside it.
-- A key column cannot change its type in place, so a table still holding the Int64 column
-- is rebuilt: copied into a new table, which then takes its name (EXCHANGE, atomic). Each
-- step but the last runs only while model_quality.bucket is still Int64, so a run interrupted
-- anywhere finishes on the next start; a table created as Int64 by 001 is converted the same.
-- Old values: bucket_index = the old bucket, bucket = the old bucket read as epoch ms (the
-- minute start for fraud; for samples.<name>, whose old value was an index, a placeholder
-- near 1970-01-01 until a replay rewrites it).
-- The key reads bucket_index, or for a record written before that field existed (Avro
-- default -1) the epoch ms of its bucket: the old key, so every bucket keeps one row.

-- only if: SELECT count() FROM system.columns WHERE database = '${db}' AND table = 'model_quality' AND name = 'bucket' AND type = 'Int64'
DROP TABLE IF EXISTS ${db}.model_quality_002;

-- only if: SELECT count() FROM system.columns WHERE database = '${db}' AND table = 'model_quality' AND name = 'bucket' AND type = 'Int64'
CREATE TABLE IF NOT EXISTS ${db}.model_quality_002 (
    model LowCardinality(String),
    bucket DateTime64(3, 'UTC'),
    labelled Int64,
    accuracy Float64,
    roc_auc Float64,
    log_loss Float64,
    drift_detections Int64,
    pipeline_version LowCardinality(String),
    bucket_index Int64,
    kafka_topic LowCardinality(String),
    kafka_partition Int32,
    kafka_offset Int64,
    ingested_at DateTime64(3, 'UTC')
) ENGINE = ReplacingMergeTree(kafka_offset)
ORDER BY (model, if(bucket_index < 0, toUnixTimestamp64Milli(bucket), bucket_index))
SETTINGS non_replicated_deduplication_window = 1000;

-- only if: SELECT count() FROM system.columns WHERE database = '${db}' AND table = 'model_quality' AND name = 'bucket' AND type = 'Int64'
INSERT INTO ${db}.model_quality_002
SELECT model, fromUnixTimestamp64Milli(bucket, 'UTC'), labelled, accuracy, roc_auc, log_loss,
       drift_detections, pipeline_version, bucket, kafka_topic, kafka_partition, kafka_offset,
       ingested_at
FROM ${db}.model_quality;

-- only if: SELECT count() FROM system.columns WHERE database = '${db}' AND table = 'model_quality' AND name = 'bucket' AND type = 'Int64'
EXCHANGE TABLES ${db}.model_quality AND ${db}.model_quality_002;

-- the Int64 table (after the exchange), or nothing
DROP TABLE IF EXISTS ${db}.model_quality_002;
