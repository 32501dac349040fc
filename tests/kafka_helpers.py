"""Reading topics, posting events to workers and waiting on them, for tests."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord

from onevec.models.clickstream.examples import decode_examples
from onevec.streams.kafka.topics import bootstrap_servers
from onevec.streams.settings import Settings
from onevec.streams.worker import WorkerProcess, metric_total


def read_topic(
    settings: Settings,
    topic: str,
    expect: int,
    timeout: float = 120.0,
    settle: float = 1.0,
    until: Callable[[list[ConsumerRecord]], bool] | None = None,
) -> list[ConsumerRecord]:
    """Every record of ``topic`` once at least ``expect`` arrived, ``until`` holds and the topic
    is read up to the end it had when called (plus ``settle`` seconds for late extras such as
    duplicates). Without that end a read expecting nothing could stop before its first fetch
    came back, on a loaded machine, and report a topic that held records as empty."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap_servers(settings),
        enable_auto_commit=False,
        consumer_timeout_ms=500,
    )
    partitions = [TopicPartition(topic, p) for p in range(settings.partitions)]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    ends = consumer.end_offsets(partitions)
    records: list[ConsumerRecord] = []
    deadline = time.monotonic() + timeout
    settled_at: float | None = None
    try:
        while time.monotonic() < deadline:
            batch = consumer.poll(timeout_ms=300)
            for recs in batch.values():
                records.extend(recs)
            read = all(consumer.position(p) >= ends[p] for p in partitions)
            if read and len(records) >= expect and (until is None or until(records)):
                settled_at = settled_at or time.monotonic()
                if time.monotonic() - settled_at >= settle:
                    break
    finally:
        consumer.close()
    return records


def read_examples(
    settings: Settings,
    expect: int,
    timeout: float = 120.0,
    settle: float = 1.0,
    until: Callable[[list[dict]], bool] | None = None,
) -> list[dict]:
    """Every example on the examples topic (records are micro-batches of examples), once at
    least ``expect`` examples arrived and ``until`` holds on them."""

    def flat(records: list[ConsumerRecord]) -> list[dict]:
        return [e for r in records for e in decode_examples(r.value)]

    def enough(records: list[ConsumerRecord]) -> bool:
        examples = flat(records)
        return len(examples) >= expect and (until is None or until(examples))

    return flat(read_topic(settings, settings.examples_topic, 0, timeout, settle, until=enough))


def post_events(
    url: str, body: bytes, headers: dict[str, str] | None = None, timeout: float = 60.0
) -> tuple[int, dict]:
    """POST a body to a worker's /events: (status, JSON answer), error statuses included."""
    request = urllib.request.Request(f"{url}/events", data=body, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - loopback
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def wait_processed(worker: WorkerProcess, total: int, timeout: float = 180.0) -> dict[str, float]:
    """Wait until the worker has accepted or rejected ``total`` inputs; return its metrics."""
    deadline = time.monotonic() + timeout
    while True:
        samples = worker.metrics()
        done = metric_total(samples, "onevec_events_accepted_total") + metric_total(
            samples, "onevec_events_rejected_total"
        )
        if done >= total:
            return samples
        if time.monotonic() > deadline:
            raise TimeoutError(f"worker processed {done:.0f} of {total}")
        time.sleep(0.25)
