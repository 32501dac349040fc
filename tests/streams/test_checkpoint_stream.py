"""A checkpoint knows the stream its offsets belong to: restored against another broker, the
worker says so (log line and metric), keeps the model and learns the new stream from its start;
with ONEVEC_CHECKPOINT_OTHER_STREAM=refuse it stops with a clear message instead."""

from __future__ import annotations

import json
import time
from pathlib import Path

from onevec.deploy.embedded_broker import EmbeddedBroker
from onevec.models.datasets import load_events
from onevec.streams.kafka.producer import EventProducer
from onevec.streams.kafka.replay import iter_event_dicts
from onevec.streams.kafka.topics import bootstrap_servers, ensure_topics
from onevec.streams.settings import Settings
from onevec.streams.worker import WorkerProcess, metric_total
from tests.conftest import isolated_settings
from tests.reliability.reconcile import wait_metric

ROWS = list(iter_event_dicts(load_events("movielens-100k", 1800.0).iloc[:600]))


def _learn_on(settings: Settings, rows: list[dict]) -> WorkerProcess:
    """A worker on ``settings``' broker that learned every example of ``rows``."""
    ensure_topics(settings)
    worker = WorkerProcess(settings, settings.broker_url).start()
    with EventProducer(bootstrap_servers(settings), settings.clicks_topic) as producer:
        producer.send_many(rows)
        producer.flush()
    wait_metric(worker, "onevec_examples_learned_total", len(rows), timeout=240)
    return worker


def test_a_checkpoint_of_another_broker_is_said_and_its_offsets_are_not_applied(settings: Settings) -> None:
    first = _learn_on(settings, ROWS)
    assert first.stop() == 0  # a graceful stop writes the checkpoint (with its stream identity)
    stream = json.loads((settings.data_dir / "checkpoints" / "stream.json").read_text())
    assert set(stream) == {"cluster_id", "examples_topic_id"}

    # The same data folder against a new broker: its offsets start at 0 again.
    with EmbeddedBroker() as other:
        moved = settings.model_copy(update={"broker_url": other.url})
        second = _learn_on(moved, ROWS[:300])  # would time out if offsets <= the old ones were skipped
        try:
            samples = second.metrics()
            assert metric_total(samples, "onevec_checkpoint_other_stream_total") == 1
            assert metric_total(samples, "onevec_checkpoint_restores_total") == 1  # the model was kept
        finally:
            second.stop()
    log = second.log_path.read_text()
    assert "covers another stream" in log and "keeping the model" in log


def test_refusing_a_checkpoint_of_another_stream_stops_the_worker(settings: Settings, tmp_path: Path) -> None:
    first = _learn_on(settings, ROWS[:200])
    first.stop()
    with EmbeddedBroker() as other:
        moved = isolated_settings(
            other.url, tmp_path, data_dir=settings.data_dir, checkpoint_other_stream="refuse"
        )
        ensure_topics(moved)
        worker = WorkerProcess(moved, other.url).launch()
        try:
            deadline = time.monotonic() + 120
            while worker.proc is not None and worker.proc.poll() is None:
                assert time.monotonic() < deadline, "the worker kept running on another stream's checkpoint"
                time.sleep(0.5)
        finally:
            worker.stop()
    assert "refusing to start (ONEVEC_CHECKPOINT_OTHER_STREAM=refuse)" in worker.log_path.read_text()
