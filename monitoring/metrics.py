"""The metric catalogue: every Prometheus metric a onevec worker exports, in one place.

Labels are low-cardinality by construction (a reason code, a stage, an event type): never an
item, user or session id, so a busy shop cannot blow up the time-series count.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "CHECKPOINTS_WRITTEN",
    "CHECKPOINT_RESTORES",
    "EXAMPLES_LEARNED",
    "ITEMS_UPSERTED",
    "LEARNER_ERRORS",
    "LEARNER_QUEUE",
    "PREQUENTIAL_HITS",
    "PREQUENTIAL_RR",
    "PREQUENTIAL_SCORED",
    "TRAIN_LOSS",
    "TRAIN_STEP_SECONDS",
    "EVENTS_ACCEPTED",
    "EVENTS_DUPLICATE",
    "EVENTS_REJECTED",
    "EXAMPLES_EMITTED",
    "HTTP_INGEST_REQUESTS",
    "PROCESSING_SECONDS",
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
    "Wall time to process one event in a stage.",
    ["stage"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
HTTP_INGEST_REQUESTS = Counter(
    "onevec_http_ingest_requests", "POST /events requests, by HTTP status.", ["status"]
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
PREQUENTIAL_HITS = Gauge("onevec_prequential_hits", "Scored examples whose next item was in the top 20.")
PREQUENTIAL_RR = Gauge("onevec_prequential_reciprocal_rank", "Sum of reciprocal ranks within the top 20.")
ITEMS_UPSERTED = Gauge("onevec_items_upserted", "Item points written to Qdrant (since start).")
CHECKPOINTS_WRITTEN = Counter("onevec_checkpoints_written", "Learner checkpoints written.")
CHECKPOINT_RESTORES = Counter("onevec_checkpoint_restores", "Learner checkpoints restored at start.")
