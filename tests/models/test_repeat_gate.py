"""The repeat gate: a fresh gate ranks as the session encoder does, its learned weights follow
how often next items are repeats, and its few numbers survive a checkpoint."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from onevec.models.clickstream.examples import ExampleRecord
from onevec.models.online.config import ModelConfig
from onevec.models.online.item_follows import Followed
from onevec.models.online.repeat_gate import FEATURES, HistoryFeatures, RepeatGate
from onevec.models.online.round import LearningRound, RoundConfig
from onevec.models.online.trainer import LearnedStep, OnlineTrainer
from onevec.models.online.user_history import Had, Recalled, UserHistory
from tests.models.synthetic_streams import repeat_stream

HAD = FEATURES.index("had")


def test_a_fresh_gate_keeps_the_session_scores() -> None:
    scores = np.array([0.3, -1.0, 2.0])
    gated = RepeatGate().combine(scores, ["a", "b", "c"], {"b": Had(3.0, 1), "zz": Had(1.0, 0)})
    np.testing.assert_allclose(gated, scores)


def test_combine_adds_the_history_term_on_the_users_items_only() -> None:
    gate = RepeatGate()
    gate.weights = np.array([1.0, 2.0, 4.0, 0.0, 0.0])
    gate.scale = 0.5
    gated = gate.combine(np.array([1.0, 1.0]), ["mine", "other"], {"mine": Had(np.e - 1, 1)})
    # 0.5 * 1 + (1 * had + 2 * log1p(e - 1) + 4 * 0.5 ** 1)
    np.testing.assert_allclose(gated, [0.5 + 1 + 2 + 2, 0.5])


def test_history_features_keep_only_candidates() -> None:
    features = HistoryFeatures.of(
        [{"a": Had(1.0, 0)}, {"x": Had(1.0, 0), "b": Had(2.0, 3)}], {"a": 0, "b": 1}.get
    )
    assert features.rows.tolist() == [0, 1] and features.columns.tolist() == [0, 1]
    np.testing.assert_allclose(features.values[1], [1.0, np.log1p(2.0), 0.125, 0.0, 0.0])


def test_an_own_item_that_also_followed_the_session_is_one_triple_with_both_features() -> None:
    followed = [
        Followed.of(["b", "zz"], np.array([[0.0, 1.0], [1.0, 0.5]])),
        Followed.of(["b"], np.array([[1.0, 1.0]])),
    ]
    features = HistoryFeatures.of([{"a": Had(1.0, 0)}, {"b": Had(2.0, 3)}], {"a": 0, "b": 1}.get, followed)
    got = {
        (r, c): v
        for r, c, v in zip(
            features.rows.tolist(), features.columns.tolist(), features.values.tolist(), strict=True
        )
    }
    assert got == {
        (0, 0): [1.0, np.log1p(1.0), 1.0, 0.0, 0.0],
        (0, 1): [0.0, 0.0, 0.0, 0.0, 1.0],  # followed only; zz is not a candidate
        (1, 1): [1.0, np.log1p(2.0), 0.125, 1.0, 1.0],  # had and followed: one triple
    }


def _learned_gate(repeat: float, seed: int = 0, steps: int = 150) -> RepeatGate:
    """SYNTHETIC: 40 users with 8 earlier items each among 300 items, random session scores;
    a next item is, with probability ``repeat``, one of the user's own, else any other."""
    rng = np.random.default_rng(seed)
    items = [f"i{j}" for j in range(300)]
    column = {item: j for j, item in enumerate(items)}
    history = UserHistory()
    for user in range(40):
        for item in rng.choice(300, 8, replace=False):
            history.observe(f"u{user}", items[item], "earlier")
    gate = RepeatGate()
    for _ in range(steps):
        users = rng.integers(40, size=32)
        recalled = [history.recall(f"u{u}", "now") for u in users]
        targets = np.array(
            [
                column[rng.choice(sorted(mine))]
                if rng.random() < repeat
                else column[rng.choice(sorted(set(items) - set(mine)))]
                for mine in recalled
            ]
        )
        gate.learn(rng.normal(size=(32, 300)), targets, HistoryFeatures.of(recalled, column.get))
    return gate


def test_the_learned_weight_follows_the_repeat_share() -> None:
    always, half, never = (_learned_gate(p).weights[HAD] for p in (1.0, 0.5, 0.0))
    assert always > half > never
    assert always > 0 > never


def test_targets_outside_the_candidates_and_excluded_items_are_handled() -> None:
    gate = RepeatGate()
    features = HistoryFeatures.of([{"a": Had(1.0, 1)}, {"a": Had(1.0, 1)}], {"a": 0, "b": 1}.get)
    # Query 0's target is unknown (skipped); query 1 had "a" in its session (excluded), and
    # its next item is "b": excluding "a" leaves nothing to learn about "had" from it.
    gate.learn(np.zeros((2, 2)), np.array([-1, 1]), features, (np.array([1]), np.array([0])))
    assert gate.weights[HAD] == 0.0
    gate.learn(np.zeros((2, 2)), np.array([-1, 1]), features)
    assert gate.weights[HAD] < 0  # "a" was a candidate and not chosen


def test_state_round_trip(tmp_path: object) -> None:
    gate = _learned_gate(1.0, steps=5)
    path = f"{tmp_path}/gate.pt"
    torch.save(gate.state_dict(), path)
    restored = RepeatGate()
    restored.load_state_dict(torch.load(path, weights_only=True))
    np.testing.assert_array_equal(restored.weights, gate.weights)
    assert (restored.scale, restored.steps) == (gate.scale, gate.steps)
    with pytest.raises(ValueError):
        RepeatGate(lr=0)


# ---- the gate in the learner's prequential round ------------------------------------------


def _round(repeat: float, gate: bool = True) -> LearningRound:
    """A round over a SYNTHETIC stream where ``repeat`` of the next items are repeats (the gate
    alone: no replay)."""
    trainer = OnlineTrainer(ModelConfig(dim=16, negatives=32, replay=0, repeat_gate=gate, seed=0))
    learning = LearningRound(trainer, RoundConfig(batch_size=64))
    learning.learn(repeat_stream(repeat))
    return learning


def _typical_term(learning: LearningRound) -> float:
    """The gate's term for an item the user had once, one session ago."""
    gate = learning.trainer.repeat_gate
    assert gate is not None
    return float(gate.bonus(HistoryFeatures.of([{"x": Had(1.0, 1)}], {"x": 0}.get))[0])


def test_the_round_learns_whether_repeats_pay() -> None:
    always, half, never = (_round(p) for p in (1.0, 0.5, 0.0))
    assert _typical_term(always) > _typical_term(half) > 0 > _typical_term(never)
    # Where everything is a repeat, the session encoder's share shrinks.
    assert always.trainer.repeat_gate is not None and always.trainer.repeat_gate.scale < 1.0


def test_the_gate_lifts_the_live_score_where_people_buy_again() -> None:
    gated, plain = _round(1.0), _round(1.0, gate=False)
    assert gated.score.hr > 2 * plain.score.hr and gated.score.mrr > 2 * plain.score.mrr


def test_scoring_never_reads_a_users_future(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every history the round reads holds only clicks of steps learned before: were the
    step's own clicks (or later ones) observed first, a user's next item would be in it."""
    trainer = OnlineTrainer(ModelConfig(dim=16, negatives=32, repeat_gate=True, seed=0))
    learning = LearningRound(trainer, RoundConfig(batch_size=64))
    history = trainer.user_history
    assert history is not None
    learned: dict[str, set[str]] = {}
    read: list[int] = []
    learn, recall = trainer.learn_with_sessions, history.recall_arrays

    def learn_spy(
        batch: list[ExampleRecord], on_sessions: Callable[[LearnedStep], None] | None
    ) -> LearnedStep:
        step = learn(batch, on_sessions)
        for record in batch:
            learned.setdefault(record["user_id"], set()).add(record["item_id"])
        return step

    def recall_spy(user_id: str, session_id: str | None = None) -> Recalled:
        recalled = recall(user_id, session_id)
        assert set(recalled.items) <= learned.get(user_id, set()), "a history read a click not learned yet"
        read.append(len(recalled.items))
        return recalled

    monkeypatch.setattr(trainer, "learn_with_sessions", learn_spy)
    monkeypatch.setattr(history, "recall_arrays", recall_spy)
    learning.learn(repeat_stream(0.5))
    assert sum(read) > 1000  # histories were read, and were not empty
