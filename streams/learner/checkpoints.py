"""The learner's checkpoints and the examples they do not cover yet.

A checkpoint holds the trainer (weights, optimiser state, id maps) and the example offsets it
covers, and beside it (``stream.json``) the identity of the stream those offsets belong to: the
broker's cluster id and the examples topic's id. Offsets of another stream (another broker, or
the topic recreated) mean nothing here: applied, they would skip every example up to them.

The consumer group commits examples offsets as the ``learn`` agent takes records, which can be
ahead of the last checkpoint: after a crash, records taken but never checkpointed are not
delivered again. So a starting learner reads them directly from the broker, from the
checkpoint's offsets up to the group's committed ones (``read_committed_gap``), and learns them
before the live stream; and the agent checks every record's offset against what the learner took
and learned (``ExpectedOffsets``), reading any records its consumer skipped all the same. No
learned state is lost.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Literal

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from onevec.models.clickstream.examples import decode_examples
from onevec.models.online.trainer import OnlineTrainer
from onevec.monitoring import metrics
from onevec.streams.kafka.topics import bootstrap_servers
from onevec.streams.learner.queue import ExamplesBatch
from onevec.streams.settings import Settings

__all__ = [
    "CheckpointStreamError",
    "Checkpoints",
    "GapReadError",
    "StreamIdentity",
    "ExpectedOffsets",
    "checkpoint_coverage",
    "read_committed_gap",
    "read_examples",
    "stream_identity",
]

log = logging.getLogger(__name__)

GAP_STALL_SECONDS = 30.0  # no record for this long while reading the gap: the read is retried

StreamIdentity = dict[str, str]  # cluster_id, examples_topic_id


class CheckpointStreamError(RuntimeError):
    """The checkpoint covers another stream and the settings say to refuse it."""


def stream_identity(settings: Settings) -> StreamIdentity:
    """The broker's cluster id and the examples topic's id: both change with another broker
    (Tansu's cluster id is fixed, its topic ids are not) or a recreated topic."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers(settings), **settings.kafka_client_options())
    try:
        cluster = admin.describe_cluster()["cluster_id"]
        (topic,) = admin.describe_topics([settings.examples_topic])
    finally:
        admin.close()
    return {"cluster_id": str(cluster), "examples_topic_id": str(topic.get("topic_id"))}


class Checkpoints:
    """Where the learner's checkpoint lives, when it was last written, what it covers."""

    def __init__(self, settings: Settings) -> None:
        self.directory = settings.data_dir / "checkpoints"
        self.path = self.directory / "learner.pt"
        self.stream_path = self.directory / "stream.json"
        self.on_other_stream: Literal["restart_offsets", "refuse"] = settings.checkpoint_other_stream
        self.stream: StreamIdentity | None = None  # what the offsets belong to, once known
        self.interval = settings.checkpoint_interval_seconds
        self.offsets: dict[str, int] = {}  # "topic:partition" -> last example offset learned
        self.restored = False  # the model is the last checkpoint's
        self.dirty = False  # learned since the last checkpoint
        self._last = time.monotonic()
        self._skip_logged: set[str] = set()

    def restore(self, trainer: OnlineTrainer) -> dict[str, int]:
        """Load the last checkpoint into ``trainer``, if any; return the offsets it covers."""
        if not self.path.exists():
            return {}
        self.offsets = trainer.load_checkpoint(self.path)
        self.restored = True
        if self.stream_path.exists():
            self.stream = json.loads(self.stream_path.read_text())
        log.warning("restored checkpoint %s (%d steps)", self.path, trainer.steps)
        metrics.CHECKPOINT_RESTORES.inc()
        return dict(self.offsets)

    def bind_stream(self, current: StreamIdentity) -> None:
        """Check that the restored offsets belong to the ``current`` stream. When they do not, the
        worker says so (log and metric) and keeps the model but not the offsets, so it learns
        the new stream from its start; or, by setting, refuses to start. A checkpoint without
        an identity (written before onevec recorded one) is taken as this stream's."""
        restored, self.stream = self.stream, current
        if restored is None or restored == current or not self.offsets:
            return
        message = (
            f"the checkpoint {self.path} covers another stream ({restored}, now {current}):"
            " another broker, or the examples topic was recreated"
        )
        metrics.CHECKPOINT_OTHER_STREAM.inc()
        if self.on_other_stream == "refuse":
            raise CheckpointStreamError(
                f"{message}; refusing to start (ONEVEC_CHECKPOINT_OTHER_STREAM=refuse)"
            )
        log.warning("%s; keeping the model, learning the new stream from its start", message)
        self.offsets = {}
        self.dirty = True

    def learned(self, batches: list[ExamplesBatch]) -> None:
        for batch in batches:
            self.offsets[batch.source] = max(batch.offset, self.offsets.get(batch.source, -1))
        self.dirty = True

    def covers(self, batch: ExamplesBatch) -> bool:
        """Already learned: covered by the restored checkpoint or an earlier round (counted;
        logged once per partition)."""
        learned = self.offsets.get(batch.source, -1)
        if batch.offset > learned:
            return False
        metrics.EXAMPLES_RECORDS_SKIPPED.inc()
        if batch.source not in self._skip_logged:
            self._skip_logged.add(batch.source)
            log.info("%s: skipping examples records up to offset %d, already learned", batch.source, learned)
        return True

    def due(self) -> bool:
        return self.dirty and time.monotonic() - self._last >= self.interval

    def save(self, trainer: OnlineTrainer) -> None:
        trainer.save_checkpoint(self.path, self.offsets)
        if self.stream is not None:
            self.stream_path.write_text(json.dumps(self.stream))
        self._last = time.monotonic()
        self.dirty = False
        metrics.CHECKPOINTS_WRITTEN.inc()

    def file(self, name: str) -> Path:
        """A file kept beside the checkpoint (e.g. the catalogue vectors' journal)."""
        return self.directory / name


class ExpectedOffsets:
    """Per examples partition ("topic:partition"), the next offset the learner has not yet
    taken: one past the last record this process took, or past what the checkpoint covers.

    A record delivered beyond it leaves a hole: records this learner never learned, which the
    consumer group will not deliver again (committed by a lost worker after its last checkpoint,
    or a partition whose offsets the checkpoint had none of). Reading the hole relies on no
    separate query of the group's committed offsets: that query answered "none committed"
    while the worker's own consumer started past them."""

    def __init__(self, checkpoints: Checkpoints) -> None:
        self.checkpoints = checkpoints
        self.taken: dict[str, int] = {}

    def take(self, source: str, offset: int) -> tuple[int, int] | None:
        """Take the record at ``offset``; return the hole ``[start, offset)`` it leaves, if any."""
        expected = max(self.taken.get(source, -1), self.checkpoints.offsets.get(source, -1)) + 1
        self.taken[source] = max(offset, self.taken.get(source, -1))
        return (expected, offset) if offset > expected else None


class GapReadError(RuntimeError):
    """Examples records the learner skipped could not be read from the broker."""


def checkpoint_coverage(settings: Settings, offsets: dict[str, int]) -> dict[str, int]:
    """The last learned offset of every examples partition ("topic:partition" -> offset), from
    a checkpoint's ``offsets``. A partition the checkpoint has no offset for (no checkpoint at
    all, or none of its examples learned by the last one) gets -1: learned from its start."""
    return {f"{settings.examples_topic}:{p}": -1 for p in range(settings.partitions)} | offsets


def read_committed_gap(settings: Settings, covered: dict[str, int]) -> list[ExamplesBatch]:
    """Examples records after ``covered`` ("topic:partition" -> offset) up to the consumer group's
    committed offsets."""
    group = KafkaConsumer(
        bootstrap_servers=bootstrap_servers(settings),
        group_id=settings.group_id,
        enable_auto_commit=False,
        **settings.kafka_client_options(),
    )
    try:
        ends = {key: group.committed(TopicPartition(*_topic_partition(key))) or 0 for key in covered}
    finally:
        group.close()
    gap: list[ExamplesBatch] = []
    for key, offset in covered.items():
        if ends[key] > offset + 1:
            gap.extend(read_examples(settings, key, offset + 1, ends[key]))
    return gap


def _topic_partition(source: str) -> tuple[str, int]:
    topic, partition = source.rsplit(":", 1)
    return topic, int(partition)


def read_examples(
    settings: Settings, source: str, start: int, end: int, stall_seconds: float = GAP_STALL_SECONDS
) -> list[ExamplesBatch]:
    """The examples records at offsets ``[start, end)`` of ``source`` ("topic:partition"), read
    with a plain consumer that joins no group.

    Every record is read or the call raises ``GapReadError``: stopping short would lose them.
    (It once stopped after five empty polls, and a slow broker made a restarted learner skip
    what it was reading.)"""
    # earliest: an offset the broker no longer holds resumes at the oldest record, not the end.
    reader = KafkaConsumer(
        bootstrap_servers=bootstrap_servers(settings),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **settings.kafka_client_options(),
    )
    tp = TopicPartition(*_topic_partition(source))
    batches: list[ExamplesBatch] = []
    try:
        reader.assign([tp])
        reader.seek(tp, start)
        last_progress = time.monotonic()
        while (position := reader.position(tp)) < end:
            records = reader.poll(timeout_ms=1000).get(tp, [])
            if records or reader.position(tp) > position:
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > stall_seconds:
                raise GapReadError(
                    f"{source}: examples records read up to offset {position} of {end};"
                    f" no record for {stall_seconds:.0f} s"
                )
            for record in records:
                if record.offset >= end:
                    continue
                try:
                    batches.append(ExamplesBatch(source, record.offset, decode_examples(record.value)))
                except ValueError as error:  # dead-lettered by the agent that took it first
                    log.error("examples record %s:%d not learned: %s", source, record.offset, error)
    finally:
        reader.close()
    return batches
