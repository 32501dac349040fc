"""The pipeline split over two worker processes on one real broker: an ``ingest`` worker
(sessions, session table, HTTP ingest) and a ``learn`` worker (learner, Qdrant local mode,
lookups). Together they do what one ``all`` worker does; a killed learn worker restarts from
its checkpoint and loses nothing."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request

import pytest
from pydantic import ValidationError

from onevec.models.datasets import load_events
from onevec.streams.settings import Settings
from onevec.streams.worker import WorkerProcess, metric_total, run_worker
from tests.reliability.reconcile import uncovered_examples, wait_for
from tests.streams.test_learning_e2e import replay, wait_metric

LEARNER = {"catalog": "movielens-100k", "checkpoint_interval_seconds": 1.0}
FIRST, SECOND = 6_000, 2_000


def test_ingest_and_learn_workers_run_the_pipeline_together(settings, start_worker) -> None:
    events = load_events("movielens-100k", settings.session_gap_seconds).iloc[: FIRST + SECOND]
    ingest: WorkerProcess = start_worker(role="ingest", **LEARNER)
    learn: WorkerProcess = start_worker(role="learn", **LEARNER)
    assert ingest.get_json("/healthz")["role"] == "ingest"
    assert learn.get_json("/healthz")["role"] == "learn"

    replay(settings, events.iloc[:FIRST])
    wait_metric(ingest, "onevec_events_accepted_total", FIRST)
    wait_metric(learn, "onevec_examples_learned_total", FIRST)
    # Each half did its own work only.
    assert metric_total(ingest.metrics(), "onevec_examples_learned_total") == 0
    assert metric_total(learn.metrics(), "onevec_events_accepted_total") == 0

    # Lookups: sessions on the ingest worker, vectors on the learn worker; the other one
    # answers 404 with the role to ask.
    last = events.iloc[FIRST - 1]
    session = urllib.parse.quote(str(last["session_id"]))
    assert str(last["item_id"]) in ingest.get_json(f"/sessions/{session}")["items"]
    assert learn.get_json(f"/sessions/{session}") is None
    item = urllib.parse.quote(str(last["item_id"]))
    assert "unified" in learn.get_json(f"/items/{item}")["vectors"]
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{ingest.base_url}/items/{item}", timeout=10)
    assert refused.value.code == 404
    assert "ask a learn worker" in json.loads(refused.value.read())["error"]
    ranked = learn.get_json(f"/recommend?items={item}&k=5")["recommended"]
    assert len(ranked) == 5

    # A crash of the learn worker: the next one restores the checkpoint, learns what the
    # lost one had taken after it, then the live stream; the ingest worker never stops.
    wait_for(lambda: uncovered_examples(settings, [settings.data_dir]) == 0, "checkpoint covers all", 60)
    learn.kill()
    replay(settings, events.iloc[FIRST:])
    wait_metric(ingest, "onevec_events_accepted_total", FIRST + SECOND)
    second = start_worker(role="learn", **LEARNER)
    assert metric_total(second.metrics(), "onevec_checkpoint_restores_total") == 1
    wait_metric(second, "onevec_examples_learned_total", SECOND)
    wait_for(lambda: uncovered_examples(settings, [settings.data_dir]) == 0, "checkpoint covers all", 60)
    assert second.get_json("/stats")["prequential"]["scored"] > 0


def test_a_split_role_refuses_the_embedded_broker(tmp_path) -> None:
    # Each process would start a broker of its own, and the two halves would never meet.
    settings = Settings(role="ingest", broker_url="", data_dir=tmp_path)
    with pytest.raises(SystemExit, match="ONEVEC_BROKER_URL"):
        run_worker(settings)


def test_an_unknown_role_is_a_clear_settings_error() -> None:
    with pytest.raises(ValidationError, match="role"):
        Settings(role="sessions")
