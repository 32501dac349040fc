"""Shared fixtures: a real Tansu broker on loopback, isolated settings, real worker processes."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from onevec.deploy.embedded_broker import EmbeddedBroker
from onevec.streams.kafka.topics import ensure_topics
from onevec.streams.settings import Settings
from onevec.streams.worker import WorkerProcess


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as embedded:
        yield embedded


def isolated_settings(broker_url: str, tmp_path: Path, **overrides: object) -> Settings:
    """Settings with an app id, every topic name and data folders of their own, so tests share
    one broker safely; ``overrides`` replace any field. Topics are not created here (a test may
    want to show that creating them fails first): call ``ensure_topics``."""
    tag = uuid.uuid4().hex[:8]
    fields: dict[str, object] = {
        "broker_url": broker_url,
        "tansu": True,
        "app_id": f"onevec-test-{tag}",
        "partitions": 4,
        "clicks_topic": f"clicks-{tag}",
        "dlq_topic": f"dlq-{tag}",
        "examples_topic": f"examples-{tag}",
        "sessions_topic": f"sessions-{tag}",
        "catalog_topic": f"catalog-{tag}",
        "data_dir": tmp_path / "data",
        "qdrant_path": tmp_path / "qdrant",
    }
    return Settings(**(fields | overrides))  # type: ignore[arg-type]


@pytest.fixture
def settings(broker: EmbeddedBroker, tmp_path: Path) -> Settings:
    made = isolated_settings(broker.url, tmp_path)
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
