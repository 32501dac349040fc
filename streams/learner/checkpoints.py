"""The learner's checkpoints and the examples they do not cover yet.

A checkpoint holds the trainer (weights, optimiser state, id maps) and the example offsets it
covers. The consumer group commits examples offsets as the ``learn`` agent takes records, which
can be ahead of the last checkpoint: after a crash those records were taken but never
checkpointed, so a starting learner reads them directly (from the checkpoint's offsets up to the
group's committed ones) and learns them before the live stream. No learned state is lost.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition

from onevec.models.clickstream.examples import decode_examples
from onevec.models.online.trainer import OnlineTrainer
from onevec.monitoring import metrics
from onevec.streams.kafka.topics import bootstrap_servers
from onevec.streams.learner.queue import ExamplesBatch
from onevec.streams.settings import Settings

__all__ = ["Checkpoints", "checkpoint_coverage", "read_committed_gap"]

log = logging.getLogger(__name__)


class Checkpoints:
    """Where the learner's checkpoint lives, when it was last written, what it covers."""

    def __init__(self, settings: Settings) -> None:
        self.directory = settings.data_dir / "checkpoints"
        self.path = self.directory / "learner.pt"
        self.interval = settings.checkpoint_interval_seconds
        self.offsets: dict[str, int] = {}  # "topic:partition" -> last example offset learned
        self.dirty = False  # learned since the last checkpoint
        self._last = time.monotonic()

    def restore(self, trainer: OnlineTrainer) -> dict[str, int]:
        """Load the last checkpoint into ``trainer``, if any; return the offsets it covers."""
        if not self.path.exists():
            return {}
        self.offsets = trainer.load_checkpoint(self.path)
        log.warning("restored checkpoint %s (%d steps)", self.path, trainer.steps)
        metrics.CHECKPOINT_RESTORES.inc()
        return dict(self.offsets)

    def learned(self, batches: list[ExamplesBatch]) -> None:
        for batch in batches:
            self.offsets[batch.source] = max(batch.offset, self.offsets.get(batch.source, -1))
        self.dirty = True

    def covers(self, batch: ExamplesBatch) -> bool:
        """Already learned: covered by the restored checkpoint or an earlier round."""
        return batch.offset <= self.offsets.get(batch.source, -1)

    def due(self) -> bool:
        return self.dirty and time.monotonic() - self._last >= self.interval

    def save(self, trainer: OnlineTrainer) -> None:
        trainer.save_checkpoint(self.path, self.offsets)
        self._last = time.monotonic()
        self.dirty = False
        metrics.CHECKPOINTS_WRITTEN.inc()

    def file(self, name: str) -> Path:
        """A file kept beside the checkpoint (e.g. the catalogue vectors' journal)."""
        return self.directory / name


def checkpoint_coverage(settings: Settings, offsets: dict[str, int]) -> dict[str, int]:
    """The last learned offset of every examples partition ("topic:partition" -> offset), from
    a checkpoint's ``offsets``. A partition the checkpoint has no offset for (no checkpoint at
    all, or none of its examples learned by the last one) gets -1: learned from its start.
    (Seen: after a kill -9 with 3 of 4 partitions in the checkpoint, the fourth's examples
    taken before the kill were never learned.)"""
    return {f"{settings.examples_topic}:{p}": -1 for p in range(settings.partitions)} | offsets


def read_committed_gap(settings: Settings, covered: dict[str, int]) -> list[ExamplesBatch]:
    """Examples records after ``covered`` ("topic:partition" -> offset) up to the consumer group's
    committed offsets, read with a plain consumer that joins no group."""
    servers = bootstrap_servers(settings)
    security = settings.kafka_client_options()
    group = KafkaConsumer(
        bootstrap_servers=servers, group_id=settings.group_id, enable_auto_commit=False, **security
    )
    reader = KafkaConsumer(bootstrap_servers=servers, enable_auto_commit=False, **security)
    gap: list[ExamplesBatch] = []
    try:
        for key, offset in covered.items():
            topic, partition = key.rsplit(":", 1)
            tp = TopicPartition(topic, int(partition))
            end = group.committed(tp) or 0
            if end <= offset + 1:
                continue
            reader.assign([tp])
            reader.seek(tp, offset + 1)
            empty_polls = 0
            while reader.position(tp) < end and empty_polls < 5:
                records = reader.poll(timeout_ms=1000).get(tp, [])
                empty_polls = 0 if records else empty_polls + 1
                for record in records:
                    if record.offset >= end:
                        continue
                    try:
                        gap.append(ExamplesBatch(key, record.offset, decode_examples(record.value)))
                    except ValueError as error:  # the agent dead-lettered it when it took it
                        log.error("examples record %s:%d not learned: %s", key, record.offset, error)
    finally:
        group.close()
        reader.close()
    return gap
