"""Prometheus metrics of the worker (prometheus-client). Names are stable; see the README."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, Info

CHANGES_APPLIED = Counter("cdc_sync_changes_applied", "Row changes applied to Redis", ["table", "op"])
TRANSACTIONS_APPLIED = Counter("cdc_sync_transactions_applied", "Transactions applied (checkpoint moved past them)")
CHUNKS_APPLIED = Counter(
    "cdc_sync_chunks_applied", "Chunks of large transactions applied (evicted) before their commit"
)
TRANSACTIONS_SKIPPED = Counter(
    "cdc_sync_transactions_skipped", "Transactions skipped because the checkpoint already covered them (replays)"
)
BATCHES = Counter("cdc_sync_batches", "Atomic Redis apply steps")
BATCH_ROWS = Histogram(
    "cdc_sync_batch_rows", "Row changes per apply step", buckets=(1, 10, 50, 100, 500, 1000, 2000, 5000, 20000)
)
APPLY_SECONDS = Histogram(
    "cdc_sync_apply_seconds",
    "Duration of one atomic apply step",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
FLUSHES = Counter("cdc_sync_flushes", "Wholesale invalidations of a table's keys", ["table", "reason"])
REDIS_WAIT_SHORT = Counter(
    "cdc_sync_redis_wait_short",
    "Apply steps fewer replicas acknowledged than redis.wait_replicas within redis.wait_timeout_ms (WAIT)",
)
REDIS_MASTER_CHANGES = Counter(
    "cdc_sync_redis_master_changes", "Sentinel failovers the worker followed (another master named than before)"
)
REDIS_TOPOLOGY_CHECKS = Counter(
    "cdc_sync_redis_slot_checks",
    "Redis Cluster: every slot's checkpoint read again (the epoch moved, or a step failed), by outcome: whole or lost",
    ["outcome"],
)
REWINDS = Counter("cdc_sync_rewinds", "Replays from Redis's stored checkpoint", ["reason"])
UNKNOWN_EVENTS = Counter("cdc_sync_unknown_events", "Binlog events not understood (each flushes)", ["event_type"])
COMPRESSED_EVENTS = Counter(
    "cdc_sync_compressed_events",
    "Compressed binlog events expanded (MariaDB log_bin_compress: mariadb; MySQL transaction payloads: mysql)",
    ["kind"],
)
ROWS_EVENTS_DECODED = Counter(
    "cdc_sync_rows_events_decoded",
    "Rows events of mapped tables, by decoder: fast (rowdecode.py, needed columns only) or library",
    ["decoder"],
)
PARTIAL_IMAGES = Counter(
    "cdc_sync_partial_row_images",
    "Rows events whose images lack columns (binlog_row_image not FULL in a session): evicted only, or flushed",
    ["table"],
)
RECONNECTS = Counter("cdc_sync_reconnects", "Binlog stream reconnects")
SOURCE_ERRORS = Counter("cdc_sync_source_errors", "Binlog connection failures (each reconnects)", ["kind"])
SINK_ERRORS = Counter("cdc_sync_sink_errors", "Redis failures (each retried)", ["kind"])
PLAN_ERRORS = Counter("cdc_sync_plan_errors", "Row changes that could not be planned (each flushes)", ["table"])
LAG_SECONDS = Gauge("cdc_sync_lag_seconds", "Now minus the binlog time of the last applied transaction")
LAST_APPLIED_TIMESTAMP = Gauge("cdc_sync_last_applied_timestamp_seconds", "Binlog time of the last applied transaction")
CASCADE_WATCHES = Counter("cdc_sync_cascade_watches", "Foreign-key parents watched for cascades (start and DDL)")
EVICTION_FLUSHES = Counter(
    "cdc_sync_eviction_flushes",
    "Flushes of every table because Redis evicted keys (maxmemory): bookkeeping may be gone",
)
REDIS_MAY_EVICT = Gauge(
    "cdc_sync_redis_may_evict", "1 while Redis has a maxmemory limit and an evicting maxmemory-policy (INFO memory)"
)
SCHEMA_REFRESHES = Counter("cdc_sync_schema_refreshes", "Schema-derived state re-read after a DDL statement")
HEARTBEATS = Counter("cdc_sync_heartbeats", "Freshness heartbeats moved forward in Redis")
HEARTBEAT_ERRORS = Counter("cdc_sync_heartbeat_errors", "Failed freshness probes (the heartbeat ages meanwhile)")
HEARTBEAT_LAG_SECONDS = Gauge("cdc_sync_heartbeat_lag_seconds", "Age of the heartbeat just written (apply lag)")

READER_LOOKUPS = Counter("cdc_sync_reader_lookups", "Reader lookups by result", ["result"])
READER_BYPASSES = Counter("cdc_sync_reader_bypasses", "Reader lookups that read MySQL without filling", ["reason"])
READER_LEASE_WAITS = Counter("cdc_sync_reader_lease_waits", "Reader lookups that waited for another's fill")
READER_WRITE_WAITS = Counter(
    "cdc_sync_reader_write_waits", "Reader lookups inside reader.after(gtid) that waited for the worker to apply it"
)
READER_FILLS = Counter(
    "cdc_sync_reader_fills",
    "Reader fills: stored, lost to a change, refused (rule_mismatch), or not tried (noncanonical key)",
    ["result"],
)
READER_WIDENED_DEPENDENCIES = Counter(
    "cdc_sync_reader_widened_dependencies",
    "fetch() dependencies widened to the whole-table tag (a value not canonical for its column)",
    ["table"],
)
READER_NEAR_CACHE_RESETS = Counter(
    "cdc_sync_reader_near_cache_resets",
    "Times a reader's near cache was emptied: its tracking connection lost or made anew, a flush or rule change "
    "seen, the heartbeat gone back",
    ["reason"],
)
READER_HEARTBEAT_REGRESSIONS = Counter(
    "cdc_sync_reader_heartbeat_regressions", "Heartbeats seen missing or older than before by a reader (window closed)"
)
READER_LOADER_ERRORS = Counter("cdc_sync_reader_loader_errors", "Loader calls that raised")
READER_REDIS_ERRORS = Counter("cdc_sync_reader_redis_errors", "Reader Redis failures (fell back to MySQL)")
STATUS_REFRESH_ERRORS = Counter(
    "cdc_sync_status_refresh_errors", "Failed rewrites of the worker's status record (cdc-sync status then ages it)"
)
HA_TRANSITIONS = Counter("cdc_sync_ha_transitions", "Leader lease transitions of this worker", ["to"])
HA_LEADER = Gauge("cdc_sync_ha_leader", "1 while this worker holds the leader lease (or HA is off)")
BUILD = Info("cdc_sync_build", "The worker's version and those of the libraries it runs on")
QUEUE_ITEMS = Gauge("cdc_sync_queue_transactions", "Transactions (and heartbeats) read but not yet applied")
QUEUE_ROWS = Gauge("cdc_sync_queue_rows", "Row changes of mapped tables read but not yet applied")
CONNECTED = Gauge(
    "cdc_sync_connected",
    "1 while the side answers: mysql (the binlog stream delivers), redis (no step failing)",
    ["side"],
)
TABLE_LAG_SECONDS = Gauge(
    "cdc_sync_table_lag_seconds",
    "Per table: apply time minus the binlog time of the newest transaction of the step that last changed it",
    ["table"],
)
VERIFY_CHECKS = Counter("cdc_sync_verify_checks", "Keys the sampled verifier compared with MySQL", ["table"])
VERIFY_INCONSISTENT = Counter(
    "cdc_sync_verify_inconsistencies",
    "Keys the sampled verifier found wrong, confirmed against an unchanged row",
    ["table"],
)
VERIFY_DROPPED = Counter("cdc_sync_verify_samples_dropped", "Samples dropped: the verifier was behind its rate bound")
VERIFY_CONSISTENCY = Gauge(
    "cdc_sync_verify_consistency_ratio",
    "Share of the verifier's checks found consistent over the last window (1m, 5m, 10m; 1 with no checks)",
    ["window"],
)
