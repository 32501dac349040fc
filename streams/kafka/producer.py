"""A small producer library for click events, on kafka-python.

Batched (linger + batch size) and keyed by session, so all events of a session land on one
partition in order, where the session table for that key lives.

With ``pack=True`` the events of each partition are packed into one record (JSON lines with
the ``onevec-pack`` header, docs/events.md) of up to ``pack_max_bytes``, sent when it is full or
``pack_linger_seconds`` after its first event: the sessionizer then pays Kafka's and Faust's
per-record cost once per record instead of once per event. A packed record goes to the
partition its events' keys hash to, the same partition a single-event record with that key
would go to, so packed and single-event producers can share the topic.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any

from kafka import KafkaProducer
from kafka.partitioner.default import murmur2

from onevec.models.clickstream.packed import PACK_FORMAT, PACK_HEADER, pack_lines

__all__ = ["DEFAULT_PACK_BYTES", "EventProducer", "event_key", "key_partition"]

DEFAULT_PACK_BYTES = 256 * 1024  # well under Kafka's 1 MB default record limit


def event_key(event: Mapping[str, Any]) -> bytes:
    """The partitioning key: the session id, else the user (sessions then derived in-stream)."""
    session = event.get("session_id")
    if session is not None and session != "":
        return str(session).encode()
    return f"user:{event.get('user_id')}".encode()


@lru_cache(maxsize=65_536)  # keys repeat (a session's events), and murmur2 is pure Python
def key_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (Java's, kafka-python's and aiokafka's) picks
    for ``key`` among ``partitions``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class EventProducer:
    """Send click events (dicts) or raw bytes to the clicks topic."""

    def __init__(
        self,
        bootstrap_servers: list[str],
        topic: str,
        *,
        pack: bool = False,
        pack_max_bytes: int = DEFAULT_PACK_BYTES,
        pack_linger_seconds: float = 0.02,
        **kafka_options: Any,
    ) -> None:
        self.topic = topic
        options: dict[str, Any] = {
            "linger_ms": 20,
            "batch_size": 256 * 1024,
            "acks": 1,
            "enable_idempotence": False,  # Tansu refuses idempotent producers
            "retries": 5,
            "max_in_flight_requests_per_connection": 1,  # keeps per-session order on retries
        }
        options.update(kafka_options)
        self._producer = KafkaProducer(bootstrap_servers=bootstrap_servers, **options)
        self._packer = _Packer(self._producer, topic, pack_max_bytes, pack_linger_seconds) if pack else None
        self.sent = 0

    def send(self, event: Mapping[str, Any]) -> None:
        payload = json.dumps(event, separators=(",", ":"), allow_nan=False).encode()
        if self._packer is None:
            self.send_raw(event_key(event), payload)
        else:
            self._packer.add(event_key(event), payload)
            self.sent += 1

    def send_raw(self, key: bytes | None, value: bytes) -> None:
        """One record as given (never packed)."""
        self._producer.send(self.topic, key=key, value=value)
        self.sent += 1

    def send_many(self, events: Iterable[Mapping[str, Any]]) -> int:
        count = 0
        for event in events:
            self.send(event)
            count += 1
        return count

    def flush(self, timeout: float | None = 60.0) -> None:
        """Send every event handed over (partly filled packs included) and wait for the broker."""
        if self._packer is not None:
            self._packer.send_all()
        self._producer.flush(timeout=timeout)

    def close(self) -> None:
        if self._packer is not None:
            self._packer.stop()
        self._producer.flush()
        self._producer.close()

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Packer:
    """Events buffered per partition until a pack is full or has waited its linger (a thread
    sends those; the lock keeps each partition's records in order)."""

    def __init__(self, producer: KafkaProducer, topic: str, max_bytes: int, linger: float) -> None:
        self._producer = producer
        self._topic = topic
        self._max_bytes = max_bytes
        self._linger = linger
        self._partitions = 0  # the topic's partition count, read once from the metadata
        self._lines: dict[int, list[bytes]] = {}
        self._sizes: dict[int, int] = {}
        self._since: dict[int, float] = {}  # monotonic time of each buffer's first event
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, key: bytes, line: bytes) -> None:
        with self._lock:
            if not self._partitions:
                self._partitions = len(self._producer.partitions_for(self._topic))
                self._thread = threading.Thread(target=self._send_lingering, name="onevec-pack", daemon=True)
                self._thread.start()
            partition = key_partition(key, self._partitions)
            lines = self._lines.setdefault(partition, [])
            if not lines:
                self._since[partition] = time.monotonic()
            lines.append(line)
            self._sizes[partition] = self._sizes.get(partition, 0) + len(line) + 1
            if self._sizes[partition] >= self._max_bytes:
                self._send(partition)

    def send_all(self) -> None:
        with self._lock:
            for partition in list(self._lines):
                self._send(partition)

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()
        self.send_all()

    def _send_lingering(self) -> None:
        while not self._stopped.wait(self._linger / 2):
            due = time.monotonic() - self._linger
            with self._lock:
                for partition in [p for p, since in self._since.items() if since <= due]:
                    self._send(partition)

    def _send(self, partition: int) -> None:
        """Send a partition's buffered events as packed records (the lock is held)."""
        lines = self._lines.pop(partition, [])
        self._sizes.pop(partition, None)
        self._since.pop(partition, None)
        for value in pack_lines(lines, self._max_bytes):
            self._producer.send(
                self._topic, value=value, partition=partition, headers=[(PACK_HEADER, PACK_FORMAT)]
            )
