"""Count what went in against what came out: examples, dead letters, Qdrant points and their
click counts, checkpoints. ``onevec chaos`` and the reliability tests reconcile this way.

* accepted events: every valid input event has an example on the examples topic (``lost``
  counts those without one). An event seen again (redelivered after a crash or a rebalance)
  has its example sent again, and the copy must carry ``duplicate: true``: the learner skips
  flagged copies, so an unflagged copy is learned twice, and an event whose every copy is
  flagged is never learned (``unlearned``);
* rejected inputs: every malformed input is on the dead-letter topic with its reason header;
* Qdrant: every item of the valid input has one point (deterministic point ids), whose
  ``event_count`` equals the item's clicks in the input (each click learned exactly once);
* learned state: the learner's last checkpoint covers every example offset.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from onevec.models.clickstream.examples import ExampleRecord, decode_examples
from onevec.streams.kafka.producer import EventProducer, event_key
from onevec.streams.kafka.replay import iter_event_dicts
from onevec.streams.kafka.topics import bootstrap_servers
from onevec.streams.qdrant import QdrantStore
from onevec.streams.settings import Settings

__all__ = [
    "MALFORMED",
    "EventKey",
    "Reconciliation",
    "TopicReader",
    "checkpoint_offsets",
    "committed_offsets",
    "example_end_offsets",
    "example_key",
    "flatten",
    "input_keys",
    "input_records",
    "locate_inputs",
    "reconcile_dead_letters",
    "reconcile_examples",
    "reconcile_qdrant",
    "reconcile_topics",
    "send_records",
    "uncovered_examples",
]

EventKey = tuple[str, str, float]  # session id, item id, event time: one accepted event

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


def example_key(example: Mapping[str, Any]) -> EventKey:
    return str(example["session_id"]), str(example["item_id"]), float(example["timestamp"])


def input_keys(events: pd.DataFrame) -> set[EventKey]:
    """The key of each event's example (the events' session ids are the sessionizer's)."""
    columns = (events["session_id"].astype(str), events["item_id"].astype(str), events["timestamp"])
    return {(s, i, float(t)) for s, i, t in zip(*columns, strict=True)}


def input_records(events: pd.DataFrame, malformed: Sequence[bytes] = ()) -> list[tuple[bytes, bytes]]:
    """The (key, value) records a producer sends for ``events``, with one malformed record
    after every len(events) / len(malformed) events."""
    every = max(1, len(events) // max(1, len(malformed)))
    bad = list(malformed)
    records: list[tuple[bytes, bytes]] = []
    for position, event in enumerate(iter_event_dicts(events)):
        if bad and position % every == 0:
            records.append((b"bad", bad.pop(0)))
        records.append((event_key(event), json.dumps(event, separators=(",", ":")).encode()))
    records.extend((b"bad", raw) for raw in bad)
    return records


def send_records(settings: Settings, records: Iterable[tuple[bytes, bytes]]) -> int:
    """Send records to the clicks topic and wait until the broker has them all."""
    with EventProducer(
        bootstrap_servers(settings), settings.clicks_topic, **settings.kafka_client_options()
    ) as producer:
        for key, value in records:
            producer.send_raw(key, value)
        return producer.sent


class TopicReader:
    """Every partition of a topic from its start; each :meth:`read` adds what arrived since."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap_servers(settings),
            enable_auto_commit=False,
            **settings.kafka_client_options(),
        )
        partitions = [TopicPartition(topic, p) for p in range(settings.partitions)]
        self.consumer.assign(partitions)
        self.consumer.seek_to_beginning(*partitions)
        self.records: list[ConsumerRecord] = []

    def read(self, quiet_ms: int = 500) -> list[ConsumerRecord]:
        """The records that arrived since the last read (until a poll waits ``quiet_ms`` for
        nothing)."""
        new: list[ConsumerRecord] = []
        while batch := self.consumer.poll(timeout_ms=quiet_ms):
            for records in batch.values():
                new.extend(records)
        self.records.extend(new)
        return new

    def close(self) -> None:
        self.consumer.close()

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class Reconciliation:
    inputs: int
    valid: int
    malformed: int
    examples: int = 0
    lost: int = 0  # valid events without an example
    lost_keys: list[EventKey] = field(default_factory=list)  # the first of them, to locate
    unlearned: int = 0  # valid events whose every example is flagged: the learner skips them
    unlearned_keys: list[EventKey] = field(default_factory=list)  # the first of them
    duplicates_flagged: int = 0
    duplicates_unflagged: int = 0  # learned twice
    dead_letters: int = 0
    dead_lost: int = 0
    wrong_reasons: int = 0
    items_expected: int = 0
    items_in_qdrant: int = 0
    items_missing: int = 0
    clicks_checked: bool = False
    items_wrong_clicks: int = 0  # items whose event_count is not their clicks in the input
    clicks_short: int = 0  # sum over items of the clicks Qdrant's event_count lacks
    clicks_extra: int = 0  # ... and of the clicks it has too many
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def duplicates(self) -> int:
        return self.duplicates_flagged + self.duplicates_unflagged

    def line(self, label: str) -> str:
        extra = ", ".join(f"{k} {v}" for k, v in self.notes.items())
        clicks = (
            f" | wrong click counts {self.items_wrong_clicks} (short {self.clicks_short}, "
            f"extra {self.clicks_extra})"
            if self.clicks_checked
            else ""
        )
        return (
            f"{label}: {self.inputs} inputs = {self.valid} valid + {self.malformed} malformed | "
            f"examples {self.examples} (lost {self.lost}, unlearned {self.unlearned}, duplicates "
            f"{self.duplicates}: {self.duplicates_flagged} flagged, {self.duplicates_unflagged} unflagged) | "
            f"DLQ {self.dead_letters} (lost {self.dead_lost}, wrong reason {self.wrong_reasons}) | "
            f"Qdrant items {self.items_in_qdrant}/{self.items_expected} (missing {self.items_missing})"
            + clicks
            + (f" | {extra}" if extra else "")
        )

    def failures(self) -> list[str]:
        """What broke the goal: lost or unlearned events, unflagged duplicates, missing dead
        letters, items missing from Qdrant or with a wrong click count."""
        checks = [
            (self.lost, "accepted events lost"),
            (self.unlearned, "accepted events with only flagged examples (never learned)"),
            (self.duplicates_unflagged, "duplicates not flagged"),
            (self.dead_lost, "rejected inputs missing from the DLQ"),
            (self.wrong_reasons, "dead letters with the wrong reason"),
            (self.items_missing, "input items without a Qdrant point"),
            (self.items_wrong_clicks, "items with a wrong click count in Qdrant"),
        ]
        return [f"{count} {what}" for count, what in checks if count]

    def assert_nothing_lost(self) -> None:
        failures = self.failures()
        assert not failures, "; ".join(failures)


def reconcile_examples(
    result: Reconciliation, wanted: set[EventKey], examples: Sequence[ExampleRecord]
) -> None:
    """Examples (in topic order) against the accepted events they should cover."""
    copies: dict[EventKey, list[bool]] = {}
    for example in examples:
        copies.setdefault(example_key(example), []).append(bool(example["duplicate"]))
    result.examples = len(examples)
    lost = wanted - copies.keys()
    result.lost = len(lost)
    result.lost_keys = sorted(lost)[:20]
    for key in sorted(wanted & copies.keys()):
        flags = copies[key]
        unflagged = flags.count(False)
        if unflagged == 0:
            result.unlearned += 1
            if len(result.unlearned_keys) < 20:
                result.unlearned_keys.append(key)
        result.duplicates_unflagged += max(0, unflagged - 1)
        result.duplicates_flagged += len(flags) - 1 - max(0, unflagged - 1)


def reconcile_dead_letters(
    result: Reconciliation, malformed: Sequence[tuple[bytes, str]], records: Sequence[ConsumerRecord]
) -> None:
    """Dead letters against the malformed inputs: each there, with its reason."""
    result.dead_letters = len(records)
    reasons = {r.value: dict(r.headers).get("onevec-reason", b"").decode() for r in records}
    result.dead_lost = sum(raw not in reasons for raw, _ in malformed)
    result.wrong_reasons = sum(raw in reasons and reasons[raw] != reason for raw, reason in malformed)


def flatten(records: Iterable[ConsumerRecord]) -> list[ExampleRecord]:
    return [example for record in records for example in decode_examples(record.value)]


def reconcile_topics(
    settings: Settings,
    events: pd.DataFrame,
    malformed: Sequence[tuple[bytes, str]],
    timeout: float = 240.0,
    settle: float = 2.0,
) -> Reconciliation:
    """Examples and dead letters against the input: waits until every accepted event has an
    example (at most ``timeout`` seconds), then ``settle`` seconds more for late copies."""
    wanted = input_keys(events)
    result = Reconciliation(len(events) + len(malformed), len(events), len(malformed))
    with TopicReader(settings, settings.examples_topic) as reader:
        seen: set[EventKey] = set()
        deadline = time.monotonic() + timeout
        while not seen >= wanted and time.monotonic() < deadline:
            seen.update(example_key(e) for e in flatten(reader.read()))
        time.sleep(settle)
        reader.read()
        reconcile_examples(result, wanted, flatten(reader.records))
    with TopicReader(settings, settings.dlq_topic) as reader:
        deadline = time.monotonic() + min(timeout, 60.0)
        while len(reader.records) < len(malformed) and time.monotonic() < deadline:
            reader.read()
        reconcile_dead_letters(result, malformed, reader.records)
    return result


async def stored_clicks(path: Path, dim: int, expected: Iterable[str]) -> tuple[dict[str, int], int]:
    """The ``event_count`` of each expected item that has a point in the on-disk Qdrant at
    ``path``, and the number of item points there."""
    async with QdrantStore(dim=dim, path=path) as store:
        found = {}
        for item_id in expected:
            item = await store.get_item(item_id)
            if item is not None:
                found[item_id] = int(item.payload.get("event_count", 0))
        return found, await store.count("items")


def reconcile_qdrant(
    result: Reconciliation, events: pd.DataFrame, paths: Sequence[Path], dim: int, clicks: bool = True
) -> None:
    """Item points in the on-disk Qdrant of stopped workers (their union); with ``clicks``,
    each item's event_count against its clicks in the input (one Qdrant, one learner)."""
    expected = Counter(events["item_id"].astype(str))
    stored: dict[str, int] = {}
    for path in paths:
        found, points = asyncio.run(stored_clicks(path, dim, expected))
        stored |= found
        result.notes[f"points[{path.parent.name}/{path.name}]"] = points
    result.items_expected = len(expected)
    result.items_in_qdrant = len(stored)
    result.items_missing = len(expected.keys() - stored.keys())
    result.clicks_checked = clicks
    if clicks:
        differences = [stored[item] - count for item, count in expected.items() if item in stored]
        result.items_wrong_clicks = sum(d != 0 for d in differences)
        result.clicks_short = -sum(d for d in differences if d < 0)
        result.clicks_extra = sum(d for d in differences if d > 0)


def example_end_offsets(settings: Settings) -> dict[str, int]:
    """The last offset of every examples partition, as "topic:partition" -> offset, found by
    reading the records (Tansu's reported end offsets are those of its last record batch)."""
    last: dict[str, int] = {}
    with TopicReader(settings, settings.examples_topic) as reader:
        for record in reader.read(quiet_ms=2000):
            key = f"{record.topic}:{record.partition}"
            last[key] = max(record.offset, last.get(key, -1))
    return last


def checkpoint_offsets(data_dirs: Sequence[Path]) -> dict[str, int]:
    """The example offsets the workers' last checkpoints cover (max over workers)."""
    covered: dict[str, int] = {}
    for data_dir in data_dirs:
        path = data_dir / "checkpoints" / "learner.pt"
        if path.exists():
            for key, offset in torch.load(path, weights_only=True)["offsets"].items():
                covered[key] = max(offset, covered.get(key, -1))
    return covered


def uncovered_examples(settings: Settings, data_dirs: Sequence[Path]) -> int:
    """Examples past the last checkpoints' offsets: learned state a restart would have to redo."""
    covered = checkpoint_offsets(data_dirs)
    return sum(max(0, end - covered.get(key, -1)) for key, end in example_end_offsets(settings).items())


def committed_offsets(settings: Settings, group: str, topic: str | None = None) -> dict[int, int]:
    """The offsets ``group`` has committed on ``topic`` (the clicks topic by default), by
    partition."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers(settings), **settings.kafka_client_options())
    try:
        offsets = admin.list_group_offsets(group)[group]
    finally:
        admin.close()
    topic = topic or settings.clicks_topic
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}


def locate_inputs(settings: Settings, keys: Iterable[EventKey]) -> dict[EventKey, list[str]]:
    """Where each event of ``keys`` sits in the clicks topic ("partition:offset"), to tell what
    happened to a lost one. A click carries no derived session id: it is matched by item and
    event time, so another user's click of the same item at the same second is listed too."""
    wanted = {(item, timestamp): key for key in keys for _, item, timestamp in [key]}
    found: dict[EventKey, list[str]] = {key: [] for key in wanted.values()}
    with TopicReader(settings, settings.clicks_topic) as reader:
        for record in reader.read(quiet_ms=2000):
            try:
                click = json.loads(record.value)
                key = wanted.get((str(click["item_id"]), float(click["timestamp"])))
            except (ValueError, TypeError, KeyError):
                continue
            if key is not None:
                found[key].append(f"{record.partition}:{record.offset}")
    return found
