"""Shared fixtures: a real Tansu broker on loopback, isolated settings, real worker processes."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from deploy.embedded_broker import EmbeddedBroker
from streams.settings import Settings
from streams.topics import ensure_topics
from streams.worker import WorkerProcess


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as embedded:
        yield embedded


@pytest.fixture
def settings(broker: EmbeddedBroker, tmp_path: Path) -> Settings:
    """Settings with topic and group names of their own, so tests share one broker safely."""
    tag = uuid.uuid4().hex[:8]
    made = Settings(
        broker_url=broker.url,
        tansu=True,
        app_id=f"onevec-test-{tag}",
        partitions=4,
        clicks_topic=f"clicks-{tag}",
        dlq_topic=f"dlq-{tag}",
        examples_topic=f"examples-{tag}",
        sessions_topic=f"sessions-{tag}",
        data_dir=tmp_path / "data",
        qdrant_path=tmp_path / "qdrant",
    )
    ensure_topics(made)
    return made


@pytest.fixture
def start_worker(settings: Settings) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(**overrides: object) -> WorkerProcess:
        worker = WorkerProcess(settings.model_copy(update=overrides), settings.broker_url)
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        worker.stop(timeout=15)
