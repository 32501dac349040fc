"""The model's bounded tables never forget silently: what the user history and the followers'
table drop is counted in ``onevec_model_forgotten_total{what}`` and logged, by the learner's
report (unit) and by a real worker on the real broker (MovieLens-100k slice, tiny bounds)."""

from __future__ import annotations

import logging

import pytest
from prometheus_client import REGISTRY

from onevec.models.online.config import ModelConfig
from onevec.models.online.trainer import OnlineTrainer
from onevec.streams.learner import forgetting
from onevec.streams.learner.forgetting import ForgettingReport
from onevec.streams.settings import Settings
from onevec.streams.worker import WorkerProcess
from tests.reliability.reconcile import movielens_slice, produce, wait_for


def forgotten_metric(what: str) -> float:
    return REGISTRY.get_sample_value("onevec_model_forgotten_total", {"what": what}) or 0.0


def served_forgotten(worker: WorkerProcess) -> dict[str, float]:
    samples = worker.metrics()
    return {
        what: samples.get(f"onevec_model_forgotten_total{{what={what}}}", 0) for what in forgetting.BOUNDS
    }


def record(user: str, session: str, prefix: list[str], item: str) -> dict[str, object]:
    return {"user_id": user, "session_id": session, "prefix": prefix, "item_id": item, "duplicate": False}


def test_the_report_counts_and_logs_what_the_bounds_drop(caplog: pytest.LogCaptureFixture) -> None:
    trainer = OnlineTrainer(ModelConfig(history_users=1, history_items=1, follows_entries=1))
    report = ForgettingReport(trainer)
    before = {what: forgotten_metric(what) for what in forgetting.BOUNDS}
    assert report.update() == {"user": 0, "user_item": 0, "follower": 0}

    # u's second item drops the first; v drops u; b after a, then c after b drops a's list.
    trainer.observe([record("u", "s", [], "a"), record("u", "s", ["a"], "b")])  # type: ignore[list-item]
    trainer.observe([record("v", "t", ["b"], "c")])  # type: ignore[list-item]
    with caplog.at_level(logging.WARNING, logger=forgetting.__name__):
        assert report.update() == {"user": 1, "user_item": 1, "follower": 1}
    for what in forgetting.BOUNDS:
        assert forgotten_metric(what) - before[what] == 1
    (line,) = [r.getMessage() for r in caplog.records]
    assert "ONEVEC_MODEL_HISTORY_USERS" in line and "ONEVEC_MODEL_FOLLOWS_ENTRIES" in line

    # Counted at once, logged at most once per LOG_EVERY_SECONDS.
    trainer.observe([record("w", "x", ["c"], "d")])  # type: ignore[list-item]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=forgetting.__name__):
        assert report.update() == {"user": 1, "user_item": 0, "follower": 1}
    assert caplog.records == [] and forgotten_metric("user") - before["user"] == 2


def test_a_worker_exports_and_logs_what_its_bounded_tables_forget(settings: Settings) -> None:
    events = movielens_slice(settings, 0, 1_500)
    bounds = {"model_history_users": 5, "model_history_items": 5, "model_follows_entries": 50}
    worker = WorkerProcess(settings.model_copy(update=bounds), settings.broker_url).start()
    try:
        produce(settings, events)
        wait_for(lambda: all(served_forgotten(worker).values()), "every bound's forgetting counted")
    finally:
        worker.stop()
    log = worker.log_path.read_text()
    assert "the model's bounded tables forgot" in log and "ONEVEC_MODEL_HISTORY_ITEMS" in log
