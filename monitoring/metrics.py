"""The metric catalogue: every Prometheus metric a onevec worker exports, in one place.

Labels are low-cardinality by construction (a reason code, a stage, an event type): never an
item, user or session id, so a busy shop cannot blow up the time-series count.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = [
    "SUPERVISOR_REGISTRY",
    "WORKER_CHILD_UP",
    "WORKER_RESTARTS",
    "UPSERT_BUFFER_COALESCED",
    "UPSERT_BUFFER_FAILED_BATCHES",
    "UPSERT_BUFFER_PENDING",
    "UPSERT_BUFFER_RETRIES",
    "CONSUMER_LAG",
    "DRIFT_ALARMS",
    "DRIFT_EVENTS",
    "DRIFT_REFERENCE_AGE",
    "DRIFT_REFERENCE_ROTATIONS",
    "DRIFT_SIGNAL",
    "DRIFT_THRESHOLD",
    "DRIFT_WINDOWS",
    "FRESHNESS_SECONDS",
    "ITEMS_KNOWN",
    "MODEL_VERSION",
    "PREDICTABILITY",
    "UPSERT_ERRORS",
    "UPSERT_SECONDS",
    "CHECKPOINTS_WRITTEN",
    "CHECKPOINT_OTHER_STREAM",
    "CHECKPOINT_RESTORES",
    "EXAMPLES_LEARNED",
    "EXAMPLES_RECORDS_SKIPPED",
    "MODEL_FORGOTTEN",
    "INPUT_OFFSET_GAPS",
    "INPUT_RECORDS_PASSED",
    "ITEMS_UPSERTED",
    "LEARNER_ERRORS",
    "LEARNER_QUEUE",
    "PREQUENTIAL_DROPPED",
    "PREQUENTIAL_HITS",
    "PREQUENTIAL_RR",
    "PREQUENTIAL_SAMPLED",
    "PREQUENTIAL_SCORED",
    "TRAIN_LOSS",
    "TRAIN_STEP_SECONDS",
    "EVENTS_ACCEPTED",
    "EVENTS_DUPLICATE",
    "EVENTS_REJECTED",
    "EXAMPLES_EMITTED",
    "HTTP_INGEST_REQUESTS",
    "PROCESSING_SECONDS",
    "PRODUCE_RETRIES",
    "BATCH_EVENTS",
    "SESSIONS_CLOSED",
    "SESSIONS_OPEN",
    "WORKER_PARTITIONS",
]

EVENTS_ACCEPTED = Counter(
    "onevec_events_accepted", "Click events that passed validation, by event type.", ["event_type"]
)
EVENTS_REJECTED = Counter(
    "onevec_events_rejected",
    "Inputs sent to the dead-letter topic, by reason code.",
    ["stage", "reason"],
)
EVENTS_DUPLICATE = Counter(
    "onevec_events_duplicate", "Accepted events already applied to their session (redelivery)."
)
SESSIONS_OPEN = Gauge("onevec_sessions_open", "Sessions currently open on this worker.")
SESSIONS_CLOSED = Counter(
    "onevec_sessions_closed", "Sessions closed, by reason (gap, idle, evicted).", ["reason"]
)
EXAMPLES_EMITTED = Counter("onevec_examples_emitted", "Training examples sent to the learner.")
PROCESSING_SECONDS = Histogram(
    "onevec_processing_seconds",
    "Wall time to process one micro-batch of events in a stage.",
    ["stage"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
BATCH_EVENTS = Histogram(
    "onevec_batch_events",
    "Events per micro-batch in a stage (small under light load, up to the batch size under backlog).",
    ["stage"],
    buckets=(1, 4, 16, 64, 256, 1024, 4096),
)
PRODUCE_RETRIES = Counter(
    "onevec_produce_retries",
    "Records sent again because the broker did not acknowledge them (unreachable, timed out).",
    ["topic"],
)
HTTP_INGEST_REQUESTS = Counter(
    "onevec_http_ingest_requests", "POST /events requests, by HTTP status.", ["status"]
)
INPUT_OFFSET_GAPS = Counter(
    "onevec_input_offset_gaps",
    "Records delivered past the next offset of their input partition: 'refetched' when the "
    "consumer was sought back to the missing offsets, 'accepted' when the broker had none there; "
    "'stalled': a partition whose records stopped arriving while the broker held more, sought back.",
    ["outcome"],
)
INPUT_RECORDS_PASSED = Counter(
    "onevec_input_records_passed",
    "Clicks records the sessionizer acknowledged without applying them: 'read_again' when taken "
    "already in this assignment (a seek back), 'awaiting_refetch' when past a missing record the "
    "consumer was sought back to (they come again after it).",
    ["reason"],
)
WORKER_PARTITIONS = Gauge("onevec_worker_partitions", "Input partitions assigned to this worker.")

# Learner and sink.
EXAMPLES_LEARNED = Counter("onevec_examples_learned", "Training examples the learner has stepped on.")
TRAIN_LOSS = Gauge("onevec_train_loss", "Loss of the last training micro-batch.")
TRAIN_STEP_SECONDS = Histogram(
    "onevec_train_step_seconds",
    "Wall time of one learner micro-batch (score, train, encode).",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
LEARNER_QUEUE = Gauge("onevec_learner_queue_examples", "Examples waiting for the learner thread.")
LEARNER_ERRORS = Counter("onevec_learner_errors", "Learner micro-batches that failed and were skipped.")
PREQUENTIAL_SCORED = Gauge("onevec_prequential_scored", "Examples scored before training (since start).")
PREQUENTIAL_DROPPED = Gauge(
    "onevec_prequential_passes_dropped",
    "Prequential ranking passes that failed (logged), their examples left unscored (since start).",
)
PREQUENTIAL_HITS = Gauge("onevec_prequential_hits", "Scored examples whose next item was in the top 20.")
PREQUENTIAL_RR = Gauge("onevec_prequential_reciprocal_rank", "Sum of reciprocal ranks within the top 20.")
PREQUENTIAL_SAMPLED = Gauge(
    "onevec_prequential_sampled",
    "1 while the prequential score is taken on a sample of the examples (more known items than "
    "ONEVEC_PREQUENTIAL_ITEM_BUDGET, or a sample rate below 1), 0 while every example is scored.",
)
ITEMS_UPSERTED = Gauge("onevec_items_upserted", "Item points written to Qdrant (since start).")
CHECKPOINTS_WRITTEN = Counter("onevec_checkpoints_written", "Learner checkpoints written.")
CHECKPOINT_RESTORES = Counter("onevec_checkpoint_restores", "Learner checkpoints restored at start.")
CHECKPOINT_OTHER_STREAM = Counter(
    "onevec_checkpoint_other_stream",
    "Restored checkpoints whose offsets belong to another stream (another broker, a recreated topic).",
)
MODEL_FORGOTTEN = Counter(
    "onevec_model_forgotten",
    "Entries the learner's bounded tables dropped: users and a user's items of the user history "
    "(ONEVEC_MODEL_HISTORY_USERS, ONEVEC_MODEL_HISTORY_ITEMS), followers of the followers' "
    "table (ONEVEC_MODEL_FOLLOWS_ENTRIES).",
    ["what"],
)
EXAMPLES_RECORDS_SKIPPED = Counter(
    "onevec_examples_records_skipped",
    "Examples records redelivered after they were learned (not learned again).",
)

# Pipeline health (issue 6): lag, sink latency and errors, freshness, model size and version.
CONSUMER_LAG = Gauge(
    "onevec_consumer_lag",
    "Records in the stage's input topic not yet processed (end offset - processed), summed "
    "over this worker's partitions.",
    ["stage"],
)
UPSERT_SECONDS = Histogram(
    "onevec_upsert_seconds",
    "Wall time of one successful Qdrant upsert call, by collection.",
    ["collection"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
UPSERT_ERRORS = Counter(
    "onevec_upsert_errors", "Failed Qdrant upsert calls (each retry counts).", ["collection"]
)
FRESHNESS_SECONDS = Histogram(
    "onevec_freshness_seconds",
    "From a click to its item's vector being visible in Qdrant (the upsert returned). "
    "since=ingest: from the click's Kafka timestamp; since=event: from its event time "
    "(a replay of old data lands in +Inf).",
    ["since"],
    buckets=(0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0),
)
ITEMS_KNOWN = Gauge("onevec_items_known", "Items the live model has a vector for.")
MODEL_VERSION = Gauge("onevec_model_version", "Training steps of the live model (the version in Qdrant).")

# Drift and predictability (monitoring/drift.py). Labels: a signal, detector, stream or
# configured label *name*, never an id.
DRIFT_SIGNAL = Gauge(
    "onevec_drift_signal",
    "Embedding drift of the current vectors against the reference snapshot, last window.",
    ["signal"],
)
DRIFT_THRESHOLD = Gauge(
    "onevec_drift_threshold", "Configured alert threshold of each drift signal.", ["signal"]
)
# Alerts read this counter, not the gauge above: a window shorter than the scrape interval
# would otherwise cross a threshold between two scrapes and never alert.
DRIFT_ALARMS = Counter(
    "onevec_drift_alarms",
    "Drift windows in which a signal was past its threshold, by signal.",
    ["signal"],
)
DRIFT_EVENTS = Counter(
    "onevec_drift_events",
    "Adverse changes found by a streaming drift detector, by detector and monitored stream.",
    ["detector", "stream"],
)
DRIFT_WINDOWS = Counter("onevec_drift_windows", "Drift windows evaluated against a reference.")
DRIFT_REFERENCE_ROTATIONS = Counter(
    "onevec_drift_reference_rotations", "Reference snapshots taken, by trigger.", ["trigger"]
)
DRIFT_REFERENCE_AGE = Gauge("onevec_drift_reference_age_seconds", "Age of the drift reference snapshot.")
PREDICTABILITY = Gauge(
    "onevec_predictability",
    "Centred kernel-target alignment of the served item vectors with a catalogue label "
    "(paper 3), updated on every upsert.",
    ["label"],
)

# Qdrant sink under faults (issue 7): read from the learner's UpsertBuffer at scrape time.
UPSERT_BUFFER_PENDING = Gauge(
    "onevec_upsert_buffer_pending_points",
    "Item points accepted by the Qdrant sink and not yet written (at most upsert_max_pending_points "
    "plus one batch in flight; when full, learning and consumption pause).",
)
UPSERT_BUFFER_COALESCED = Gauge(
    "onevec_upsert_buffer_coalesced_points",
    "Item points replaced by a newer vector of the same item before they were written (since start).",
)
UPSERT_BUFFER_RETRIES = Gauge(
    "onevec_upsert_buffer_retries", "Failed item upsert calls retried with backoff (since start)."
)
UPSERT_BUFFER_FAILED_BATCHES = Gauge(
    "onevec_upsert_buffer_failed_batches",
    "Item batches that used up their attempts and were re-queued, never dropped (since start).",
)

# Export zeros from the start, so "no errors" is a 0 on the dashboard rather than no data.
for _collection in ("items", "sessions"):
    UPSERT_ERRORS.labels(collection=_collection)

# Catalogue agent (issue 4): rejected records count in EVENTS_REJECTED with stage="catalog".
CATALOG_ITEMS_ENCODED = Counter(
    "onevec_catalog_items_encoded",
    "Catalogue records encoded by the static encoders and upserted (new or changed items).",
)

# HTTP server under abuse (issue 19): every request onevec or aiohttp refuses, whether it reached
# a handler (an oversized or malformed body, a wrong token, an unknown route) or was refused while
# aiohttp parsed it (a header too large, a request line that is not HTTP).
HTTP_REJECTIONS = Counter(
    "onevec_http_rejections",
    "HTTP requests answered 4xx/5xx by onevec or by aiohttp's parser, and connections closed "
    "unanswered by the header or idle timeout, by reason.",
    ["reason"],
)


# The supervisor's own metrics (streams/supervisor.py): a registry of their own, because the
# supervisor's /metrics page merges its children's pages with these, not with the default
# registry's process collectors.
SUPERVISOR_REGISTRY = CollectorRegistry(auto_describe=True)
WORKER_RESTARTS = Counter(
    "onevec_worker_restarts",
    "Times the supervisor restarted its worker child of this role after the child exited.",
    ["role"],
    registry=SUPERVISOR_REGISTRY,
)
WORKER_CHILD_UP = Gauge(
    "onevec_worker_child_up",
    "1 while the supervisor's worker child of this role runs, 0 while it waits to be restarted.",
    ["role"],
    registry=SUPERVISOR_REGISTRY,
)
