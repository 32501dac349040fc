"""Count what went in against what came out: examples, dead letters, Qdrant points, checkpoints.

Every fault test replays one input (a MovieLens-100k slice with malformed records mixed in)
and reconciles it stage by stage:

* accepted events: every valid input event has an example on the examples topic (lost = 0);
  extra copies are duplicates, and a duplicate must carry the ``duplicate`` flag or repeat an
  identical example (harmless: the learner's and Qdrant's writes are idempotent overwrites);
* rejected inputs: every malformed input is on the dead-letter topic with its reason header;
* Qdrant: every item of the valid input has exactly one point (deterministic point ids);
* learned state: the last checkpoint covers every example offset.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from kafka import KafkaConsumer, TopicPartition

from onevec.models.datasets import load_events
from onevec.streams.kafka.producer import EventProducer
from onevec.streams.kafka.replay import iter_event_dicts
from onevec.streams.kafka.topics import bootstrap_servers
from onevec.streams.qdrant import QdrantStore
from onevec.streams.settings import Settings
from onevec.streams.worker import WorkerProcess, metric_total
from tests.kafka_helpers import read_examples, read_topic

# Malformed inputs with the reason the stream stage must give each (one of every kind).
MALFORMED: list[tuple[bytes, str]] = [
    (b"this is not json", "bad_json"),
    (b"\xff\xfe\x00garbage", "bad_encoding"),
    (b'{"user_id": 1, "event_type": "click", "timestamp": 880000000}', "missing_field"),
    (b'{"user_id": 1, "item_id": 2, "event_type": "teleport", "timestamp": 880000000}', "unknown_event_type"),
    (b'{"user_id": 1, "item_id": 2, "event_type": "click", "timestamp": Infinity}', "bad_json"),
    (b'{"user_id": 1, "item_id": 2, "event_type": "click", "timestamp": 12}', "absurd_timestamp"),
    (
        b'{"user_id": 1, "item_id": 2, "event_type": "click", "timestamp": 8.8e8, "price": -3}',
        "invalid_field",
    ),
    (b"[1, 2, 3]", "not_an_object"),
    (
        b'{"user_id": 1, "item_id": 2, "event_type": "click", "timestamp": 8.8e8, "p": "'
        + b"x" * 70_000
        + b'"}',
        "oversize",
    ),
]


def movielens_slice(settings: Settings, start: int, stop: int) -> pd.DataFrame:
    return load_events("movielens-100k", settings.session_gap_seconds).iloc[start:stop]


def event_key(example: dict[str, Any]) -> tuple[str, str, float]:
    return example["session_id"], example["item_id"], example["timestamp"]


def produce(settings: Settings, events: pd.DataFrame, malformed: list[bytes] = ()) -> int:
    """Send the events, one malformed record after every len(events)/len(malformed) of them."""
    rows = list(iter_event_dicts(events))
    every = max(1, len(rows) // max(1, len(malformed)))
    bad = list(malformed)
    with EventProducer(bootstrap_servers(settings), settings.clicks_topic) as producer:
        for position, row in enumerate(rows):
            if bad and position % every == 0:
                producer.send_raw(b"bad", bad.pop(0))
            producer.send(row)
        for raw in bad:
            producer.send_raw(b"bad", raw)
    return len(rows) + len(malformed)


def wait_for(predicate, what: str, timeout: float = 180.0, every: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(every)


def wait_metric(worker: WorkerProcess, name: str, target: float, timeout: float = 180.0) -> None:
    wait_for(lambda: metric_total(worker.metrics(), name) >= target, f"{name} >= {target}", timeout)


@dataclass
class Reconciliation:
    inputs: int
    valid: int
    malformed: int
    examples: int = 0
    lost: int = 0
    duplicates: int = 0
    unflagged_changed: int = 0  # duplicates that differ from the original without the flag
    dead_letters: int = 0
    dead_lost: int = 0
    wrong_reasons: int = 0
    items_expected: int = 0
    items_in_qdrant: int = 0
    items_missing: int = 0
    notes: dict[str, Any] = field(default_factory=dict)

    def line(self, label: str) -> str:
        extra = ", ".join(f"{k} {v}" for k, v in self.notes.items())
        return (
            f"{label}: {self.inputs} inputs = {self.valid} valid + {self.malformed} malformed | "
            f"examples {self.examples} (lost {self.lost}, duplicates {self.duplicates}) | "
            f"DLQ {self.dead_letters} (lost {self.dead_lost}, wrong reason {self.wrong_reasons}) | "
            f"Qdrant items {self.items_in_qdrant}/{self.items_expected} (missing {self.items_missing})"
            + (f" | {extra}" if extra else "")
        )

    def assert_nothing_lost(self) -> None:
        assert self.lost == 0, f"{self.lost} accepted events lost"
        assert self.unflagged_changed == 0, f"{self.unflagged_changed} duplicates differ without a flag"
        assert self.dead_lost == 0, f"{self.dead_lost} rejected inputs missing from the DLQ"
        assert self.wrong_reasons == 0, f"{self.wrong_reasons} dead letters with the wrong reason"
        assert self.items_missing == 0, f"{self.items_missing} input items have no Qdrant point"


def reconcile_topics(
    settings: Settings, events: pd.DataFrame, malformed: list[tuple[bytes, str]], timeout: float = 240.0
) -> Reconciliation:
    """Examples and dead letters against the input (waits until every expected record is there)."""
    wanted = set(zip(events["session_id"], events["item_id"], events["timestamp"].astype(float), strict=True))
    result = Reconciliation(len(events) + len(malformed), len(events), len(malformed))

    def covered(examples: list[dict[str, Any]]) -> bool:
        return {event_key(e) for e in examples} >= wanted

    examples = read_examples(settings, len(events), timeout=timeout, settle=2, until=covered)
    got = {event_key(e) for e in examples}
    result.examples = len(examples)
    result.lost = len(wanted - got)
    result.duplicates = len(examples) - len(got)
    first: dict[tuple[str, str, float], dict[str, Any]] = {}
    for example in examples:
        key = event_key(example)
        if key in first and not example["duplicate"] and example != first[key]:
            result.unflagged_changed += 1
        first.setdefault(key, example)

    dead = read_topic(settings, settings.dlq_topic, len(malformed), timeout=60, settle=1) if malformed else []
    result.dead_letters = len(dead)
    reasons = {r.value: dict(r.headers).get("onevec-reason", b"").decode() for r in dead}
    result.dead_lost = sum(raw not in reasons for raw, _ in malformed)
    result.wrong_reasons = sum(raw in reasons and reasons[raw] != reason for raw, reason in malformed)
    return result


async def stored_items(path: Path, dim: int, expected: set[str]) -> tuple[set[str], int]:
    """The expected items that have a point in the on-disk Qdrant at ``path``, and its item count."""
    async with QdrantStore(dim=dim, path=path) as store:
        found = {i for i in expected if await store.get_item(i) is not None}
        return found, await store.count("items")


def reconcile_qdrant(result: Reconciliation, events: pd.DataFrame, paths: list[Path], dim: int) -> None:
    """Item points in the on-disk Qdrant collections of stopped workers (their union)."""
    expected = set(events["item_id"].astype(str))
    stored: set[str] = set()
    for path in paths:
        found, points = asyncio.run(stored_items(path, dim, expected))
        stored |= found
        result.notes[f"points[{path.parent.name}/{path.name}]"] = points
    result.items_expected = len(expected)
    result.items_in_qdrant = len(stored)
    result.items_missing = len(expected - stored)


def example_end_offsets(settings: Settings) -> dict[str, int]:
    """The last offset of every examples partition, as "topic:partition" -> offset, found by
    reading the records (a broker's reported end offsets are not trusted: Tansu's s3:// engine
    reports wrong ones)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap_servers(settings), enable_auto_commit=False, consumer_timeout_ms=2000
    )
    last: dict[str, int] = {}
    try:
        partitions = [TopicPartition(settings.examples_topic, p) for p in range(settings.partitions)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        for record in consumer:  # until 2 s without a record
            key = f"{record.topic}:{record.partition}"
            last[key] = max(record.offset, last.get(key, -1))
    finally:
        consumer.close()
    return last


def checkpoint_offsets(data_dirs: list[Path]) -> dict[str, int]:
    """The example offsets the workers' last checkpoints cover (max over workers)."""
    covered: dict[str, int] = {}
    for data_dir in data_dirs:
        path = data_dir / "checkpoints" / "learner.pt"
        if path.exists():
            for key, offset in torch.load(path, weights_only=True)["offsets"].items():
                covered[key] = max(offset, covered.get(key, -1))
    return covered


def uncovered_examples(settings: Settings, data_dirs: list[Path]) -> int:
    """Examples past the last checkpoints' offsets: learned state a restart would have to redo."""
    covered = checkpoint_offsets(data_dirs)
    return sum(max(0, end - covered.get(key, -1)) for key, end in example_end_offsets(settings).items())


def duplicate_counts(examples: list[dict[str, Any]]) -> Counter:
    return Counter(event_key(e) for e in examples)
