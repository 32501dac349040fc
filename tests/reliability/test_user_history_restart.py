"""The user history survives kill -9: a worker whose model keeps the user history (the repeat
gate's, ``ONEVEC_MODEL_REPEAT_GATE``) is killed
mid-replay and restarted, with Qdrant in memory (nothing of it survives the kill); afterwards
``/recommend?user=...&mode=again`` gives every user exactly the items and decayed counts an
independent ``UserHistory`` gets from the examples topic (each click once: nothing lost from
before the kill, nothing counted twice from the examples learned again after it).

The events carry no session id, so each user's sessions are derived by the stream and keyed by
the user: all of a user's examples sit in one partition, in an order the topic keeps.
"""

from __future__ import annotations

import contextlib

import pytest

from onevec.models.datasets import load_events
from onevec.models.online.user_history import UserHistory
from onevec.streams.settings import Settings
from onevec.streams.worker import WorkerProcess, metric_total
from tests.kafka_helpers import read_examples
from tests.reliability.reconcile import coverage_report, produce, uncovered_examples, wait_for, wait_metric

# Qdrant in memory: what a restarted worker serves comes from its checkpoint alone.
LEARNER = {
    "model_repeat_gate": True,
    "checkpoint_interval_seconds": 1.0,
    "upsert_interval_ms": 200.0,
    "qdrant_path": None,
}
SELDOM = {"checkpoint_interval_seconds": 10.0}


def start(settings: Settings, **overrides: object) -> WorkerProcess:
    return WorkerProcess(settings.model_copy(update=LEARNER | overrides), settings.broker_url).start()


def test_user_history_survives_kill_9_and_restart(settings: Settings) -> None:
    events = load_events("movielens-100k").iloc[20_000:24_000].drop(columns="session_id")
    checkpointed, learned, later = events.iloc[:2_000], events.iloc[2_000:3_000], events.iloc[3_000:]
    first = start(settings, **SELDOM)
    try:
        produce(settings, checkpointed)
        wait_metric(first, "onevec_examples_learned_total", len(checkpointed))
        wait_for(
            lambda: uncovered_examples(settings, [settings.data_dir]) == 0, "a checkpoint of the first part"
        )
        produce(settings, learned)
        wait_metric(first, "onevec_examples_learned_total", len(checkpointed) + len(learned))
    finally:
        first.kill()
    # Learned, in the history, and in no checkpoint: the restart must learn these again once.
    past_checkpoint = uncovered_examples(settings, [settings.data_dir])
    produce(settings, later)

    second = start(settings)
    try:
        restores = metric_total(second.metrics(), "onevec_checkpoint_restores_total")
        try:
            wait_for(
                lambda: uncovered_examples(settings, [settings.data_dir]) == 0, "checkpoint covers all", 180
            )
        except TimeoutError as error:  # a rare failure: say where the examples stopped
            raise AssertionError(coverage_report(settings, [settings.data_dir], [second])) from error
        print(f"\nexamples records learned but outside the checkpoint at the kill: {past_checkpoint}")
        assert past_checkpoint > 0, "the kill came after a checkpoint of everything: no gap was tested"
        assert restores == 1

        config = settings.model_copy(update=LEARNER).model_config_for_training()
        truth = UserHistory(config.history_decay, config.history_users, config.history_items)
        truth.observe_records(read_examples(settings, expect=len(events)))
        users = truth.state_dict()["users"]
        assert len(users) > 20

        def served(user: str) -> dict[str, float] | None:
            answer = second.get_json(f"/recommend?user={user}&mode=again&k=1000")
            return None if answer is None else {row["item_id"]: row["had"] for row in answer["recommended"]}

        def matches(user: str) -> bool:
            return served(user) == pytest.approx(truth.items(user), rel=1e-9)

        # The users' points follow the last round within the sink's interval; then, in detail:
        with contextlib.suppress(TimeoutError):
            wait_for(lambda: all(map(matches, users)), "every user's history served", 30)
        for user in users:
            expected = truth.items(user)  # as of the user's next session, as ?user= serves
            got = served(user)
            assert got is not None and got.keys() == expected.keys(), f"user {user}'s items"
            assert got == pytest.approx(expected, rel=1e-9), f"user {user}'s decayed counts"
    finally:
        second.stop()
