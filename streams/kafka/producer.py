"""A small producer library for click events, on kafka-python.

Batched (linger + batch size) and keyed by session, so all events of a session land on one
partition in order, where the session table for that key lives.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from kafka import KafkaProducer

__all__ = ["EventProducer", "event_key"]


def event_key(event: Mapping[str, Any]) -> bytes:
    """The partitioning key: the session id, else the user (sessions then derived in-stream)."""
    session = event.get("session_id")
    if session is not None and session != "":
        return str(session).encode()
    return f"user:{event.get('user_id')}".encode()


class EventProducer:
    """Send click events (dicts) or raw bytes to the clicks topic."""

    def __init__(self, bootstrap_servers: list[str], topic: str, **kafka_options: Any) -> None:
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
        self.sent = 0

    def send(self, event: Mapping[str, Any]) -> None:
        payload = json.dumps(event, separators=(",", ":"), allow_nan=False).encode()
        self.send_raw(event_key(event), payload)

    def send_raw(self, key: bytes | None, value: bytes) -> None:
        self._producer.send(self.topic, key=key, value=value)
        self.sent += 1

    def send_many(self, events: Iterable[Mapping[str, Any]]) -> int:
        count = 0
        for event in events:
            self.send(event)
            count += 1
        return count

    def flush(self, timeout: float | None = 60.0) -> None:
        self._producer.flush(timeout=timeout)

    def close(self) -> None:
        self._producer.flush()
        self._producer.close()

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
