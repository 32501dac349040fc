"""Qdrant unreachable for a while: the worker retries with backoff, its sink buffer stays
bounded (back-pressure, nothing dropped), it does not crash, /metrics shows the retries and
the buffered points, and once Qdrant is back every item catches up.

Qdrant's unavailability is a fake (see onevec.streams.tools.qdrant_outage): no Qdrant server
runs here, so the worker's real local-mode client is wrapped to refuse every call while a
switch file exists. Broker, worker process, learner and storage are real.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections import Counter

import pytest

from onevec.streams.settings import Settings
from onevec.streams.tools.qdrant_outage import worker_command
from onevec.streams.worker import WorkerProcess, metric_total
from tests.reliability.reconcile import (
    MALFORMED,
    movielens_slice,
    produce,
    reconcile_topics,
    wait_for,
    wait_metric,
)

MAX_PENDING, BATCH = 64, 32


def unavailable_qdrant_worker(settings: Settings, down_file) -> WorkerProcess:
    """A worker whose Qdrant refuses every call while ``down_file`` exists."""
    worker = WorkerProcess(settings, settings.broker_url)
    worker.command = worker_command(down_file)
    return worker


@pytest.fixture
def down_file(tmp_path):
    return tmp_path / "qdrant-down"


def get_json(worker: WorkerProcess, path: str) -> dict:
    with urllib.request.urlopen(f"{worker.base_url}{path}", timeout=30) as response:
        return json.loads(response.read())


def test_qdrant_outage_retries_backpressure_and_catch_up(settings, down_file) -> None:
    events = movielens_slice(settings, 50_000, 53_000)
    first, rest = events.iloc[:1000], events.iloc[1000:]
    worker = unavailable_qdrant_worker(
        settings.model_copy(
            update={
                "qdrant_path": None,  # in memory: read back through the worker's HTTP lookups
                "upsert_max_pending_points": MAX_PENDING,
                "upsert_batch_points": BATCH,
                "upsert_interval_ms": 200.0,
                "checkpoint_interval_seconds": 1.0,
                # One batch per round: a round of up to 16 batches could learn the whole
                # outage's 2,000 events before its points meet the full buffer.
                "learner_round_batches": 1,
            }
        ),
        down_file,
    )
    worker.start()
    try:
        produce(settings, first)
        wait_metric(worker, "onevec_examples_learned_total", len(first))
        wait_for(lambda: worker.metrics()["onevec_upsert_buffer_pending_points"] == 0, "first items written")

        down_file.touch()  # Qdrant "goes down"
        outage_started = time.monotonic()
        produce(settings, rest, [raw for raw, _ in MALFORMED])
        peak_pending, samples = 0.0, worker.metrics()
        # Keep it down until retries happened and the bounded buffer filled up (back-pressure).
        while time.monotonic() - outage_started < 12 or samples["onevec_upsert_buffer_retries"] < 3:
            assert worker.proc is not None and worker.proc.poll() is None, "worker died during the outage"
            samples = worker.metrics()
            peak_pending = max(peak_pending, samples["onevec_upsert_buffer_pending_points"])
            assert time.monotonic() - outage_started < 120, "no retries seen during the outage"
            time.sleep(0.5)
        during = samples
        learned_during = metric_total(during, "onevec_examples_learned_total")
        down_file.unlink()  # Qdrant is back
        outage_seconds = time.monotonic() - outage_started

        result = reconcile_topics(settings, events, MALFORMED)
        wait_metric(worker, "onevec_examples_learned_total", len(events))
        wait_for(lambda: worker.metrics()["onevec_upsert_buffer_pending_points"] == 0, "buffer drained")
        after = worker.metrics()
        # Every item of the input has its point, with its full click count (no restart here,
        # so no example was seen twice).
        clicks = Counter(events["item_id"])
        wrong_counts = 0
        for item_id, count in clicks.items():
            stored = get_json(worker, f"/items/{item_id}")
            wrong_counts += stored["payload"]["event_count"] != count
        stats = get_json(worker, "/stats")
        result.items_expected, result.items_in_qdrant = len(clicks), stats["items"]
        result.items_missing = len(clicks) - stats["items"]
        result.notes.update(
            {
                "outage s": round(outage_seconds, 1),
                "retries": int(after["onevec_upsert_buffer_retries"]),
                "failed batches re-queued": int(after["onevec_upsert_buffer_failed_batches"]),
                "peak pending": int(peak_pending),
                "learned at outage end": int(learned_during),
                "wrong event_count": wrong_counts,
            }
        )
        print("\n" + result.line("qdrant outage"))
        assert worker.proc is not None and worker.proc.poll() is None, "worker died"
        result.assert_nothing_lost()
        assert stats["items"] == len(clicks)
        assert wrong_counts == 0
        assert during["onevec_upsert_buffer_retries"] >= 3
        assert 0 < peak_pending <= MAX_PENDING + BATCH, "the sink buffer is not bounded"
        # Back-pressure: while the buffer was full the learner stopped taking examples.
        assert learned_during < len(events)
        # Live session vectors are not buffered: their failed writes are counted and skipped.
        assert metric_total(after, "onevec_upsert_errors_total") > 0
    finally:
        down_file.unlink(missing_ok=True)
        worker.stop(timeout=30)


def test_learner_started_before_qdrant_waits_for_it(settings, down_file) -> None:
    """Qdrant is down when the worker starts: the learner keeps retrying its start-up (the
    collections, the catalogue) instead of dying; meanwhile the lookups answer 503 with
    Retry-After and the worker does not report ready. Once Qdrant is up it becomes ready and
    learns what arrived in between."""
    events = movielens_slice(settings, 0, 500)
    down_file.touch()
    worker = unavailable_qdrant_worker(settings.model_copy(update={"qdrant_path": None}), down_file).launch()
    try:
        answers: list[int] = []

        def item_lookup_status() -> int:
            try:
                with urllib.request.urlopen(f"{worker.base_url}/items/1", timeout=10):
                    return 200
            except urllib.error.HTTPError as error:
                assert error.headers.get("Retry-After") if error.code == 503 else True
                return error.code
            except OSError:
                return 0  # the web server is not listening yet

        wait_for(lambda: answers.append(item_lookup_status()) or answers[-1] != 0, "web server up", 60)
        produce(settings, events)
        time.sleep(5)  # retries happen while Qdrant stays down
        assert worker.proc is not None and worker.proc.poll() is None, "worker died with Qdrant down"
        assert item_lookup_status() == 503
        assert metric_total(worker.metrics(), "onevec_worker_partitions") == 0  # not ready
        assert metric_total(worker.metrics(), "onevec_examples_learned_total") == 0

        down_file.unlink()  # Qdrant is up
        worker.wait_ready(60)
        wait_metric(worker, "onevec_examples_learned_total", len(events))
        assert get_json(worker, f"/items/{events['item_id'].iloc[0]}")["item_id"] == events["item_id"].iloc[0]
        print(f"\nlookup answers while Qdrant was down: {sorted(set(answers))}")
    finally:
        down_file.unlink(missing_ok=True)
        worker.stop(timeout=30)
