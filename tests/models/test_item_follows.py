"""What followed what: the table's known answers, bounds and state, that the learner's scoring
never reads a step's own clicks from it, and that the gate learns to use it where next items
follow the session's items (SYNTHETIC streams)."""

from __future__ import annotations

import gc
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from onevec.models.clickstream.examples import ExampleRecord
from onevec.models.evaluation.baselines import LiveModel
from onevec.models.evaluation.harness import run_prequential
from onevec.models.online.config import ModelConfig
from onevec.models.online.item_follows import FollowedMany, ItemFollows
from onevec.models.online.repeat_gate import FEATURES, HistoryFeatures
from onevec.models.online.round import LearningRound, RoundConfig
from onevec.models.online.trainer import OnlineTrainer
from onevec.models.online.vocab import Vocabulary


def test_weights_are_one_over_the_gap_and_features_are_scaled_to_one() -> None:
    follows = ItemFollows(window=2)
    for prefix, item in ([["a"], "b"], [["a", "b"], "c"], [["a", "b", "c"], "d"], [["x"], "c"]):
        follows.observe(prefix, item)
    assert follows.followers("a") == {"b": 1.0, "c": 0.5}  # d is 3 clicks after a: beyond the window
    assert follows.followers("b") == {"c": 1.0, "d": 0.5}
    followed = follows.followed(["a", "b"])
    values = dict(zip(followed.items, followed.values.tolist(), strict=True))
    # last (b): c 1, d 0.5; session: a at 1/2 of the prefix, b at 2/2: b 0.5, c 0.25 + 1, d 0.5.
    assert values == {"b": [0.0, 0.4], "c": [1.0, 1.0], "d": [0.5, 0.4]}
    assert follows.followed([]).items == [] and follows.followed(["unknown"]).items == []


def test_many_sessions_at_once_give_each_sessions_own_features() -> None:
    follows = ItemFollows()
    for record in _chain_stream(sessions=60, items=30, seed=3, follow=True):
        follows.observe(record["prefix"], record["item_id"])
    prefixes = [["i1"], [], ["i4", "i9", "i2"], ["unknown", "i7"], ["i3", "i3"]]
    many = follows.followed_many(prefixes)
    assert np.all(np.diff(many.rows) >= 0)  # sorted by query
    names = follows.names(many.ids)
    for query, prefix in enumerate(prefixes):
        alone = follows.followed(prefix)
        got = {names[i]: many.values[i].tolist() for i in np.flatnonzero(many.rows == query)}
        assert got == dict(zip(alone.items, alone.values.tolist(), strict=True)), prefix
    assert not np.any(many.rows == 1) and np.any(many.rows == 4)


def columns(follows: ItemFollows, many: FollowedMany, vocabulary: Vocabulary) -> dict[str, int]:
    return dict(zip(follows.names(many.ids), follows.columns_in(many, vocabulary).tolist(), strict=True))


def test_columns_follow_the_vocabulary_as_it_grows_and_reloads() -> None:
    follows = ItemFollows()
    follows.observe(["a"], "b")
    follows.observe(["a"], "c")
    vocabulary = Vocabulary()
    vocabulary.index_many(["x", "c"])
    many = follows.followed_many([["a"]])
    assert columns(follows, many, vocabulary) == {
        "b": -1,
        "c": 1,
    }
    vocabulary.index("b")  # b was missing: looked up again once the vocabulary has it
    assert columns(follows, many, vocabulary) == {
        "b": 2,
        "c": 1,
    }
    vocabulary.load_state_dict({"keys": ["c", "b"]})  # a restore renumbers: the cache is dropped
    assert columns(follows, many, vocabulary) == {
        "b": 1,
        "c": 0,
    }


def test_bounds_keep_what_keeps_coming() -> None:
    follows = ItemFollows(max_entries=3, max_next=2)
    for item in ("b", "c", "b"):
        follows.observe(["a"], item)
    follows.observe(["a"], "d")  # full: d takes c's place with c's weight plus its own
    assert follows.followers("a") == {"b": 2.0, "d": 2.0} and follows.entries == 2
    assert follows.forgotten == 1  # c, counted
    follows.observe(["p"], "q")
    follows.observe(["r"], "s")  # a fourth entry: a's list, the least recently clicked, goes
    assert follows.followers("a") == {} and len(follows) == 2 and follows.entries == 2
    assert follows.forgotten == 3  # and a's two
    follows.observe(["p"], "t")
    assert follows.followers("p") == {"q": 1.0, "t": 1.0} and follows.entries == 3


def test_state_round_trips_and_a_smaller_bound_keeps_the_strongest() -> None:
    follows = ItemFollows()
    for prefix, item in ([["a"], "b"], [["a"], "b"], [["a"], "c"], [["b"], "c"]):
        follows.observe(prefix, item)
    again = ItemFollows()
    again.load_state_dict(follows.state_dict())
    assert again.followers("a") == follows.followers("a") and again.followers("b") == {"c": 1.0}
    smaller = ItemFollows(max_next=1)
    smaller.load_state_dict(follows.state_dict())
    assert smaller.followers("a") == {"b": 2.0} and smaller.forgotten == 1
    fewer = ItemFollows(max_entries=1)  # a, the least recently clicked, goes; b's one stays
    fewer.load_state_dict(follows.state_dict())
    assert fewer.followers("a") == {} and fewer.followers("b") == {"c": 1.0} and fewer.entries == 1
    assert fewer.forgotten == 2 and again.forgotten == 0
    broken = {**follows.state_dict(), "followers": ["b"]}
    with pytest.raises(ValueError, match="do not match"):
        again.load_state_dict(broken)


def _chain_stream(sessions: int, items: int, seed: int, follow: bool) -> list[ExampleRecord]:
    """SYNTHETIC: sessions of 6 clicks. ``follow``: each session walks a fixed random order of
    the catalogue from a random start, so the next item is the one that followed the last one
    before; otherwise every click is drawn at random."""
    rng = random.Random(seed)
    order = list(range(items))
    rng.shuffle(order)
    records: list[ExampleRecord] = []
    for s in range(sessions):
        start = rng.randrange(items)
        clicks = [order[(start + j) % items] if follow else rng.randrange(items) for j in range(6)]
        for j, item in enumerate(clicks):
            record: dict[str, Any] = {
                "session_id": f"s{s}",
                "user_id": f"u{s}",
                "item_id": f"i{item}",
                "prefix": [f"i{p}" for p in clicks[:j]],
                "timestamp": float(s * 10 + j),
                "event_type": "click",
                "duplicate": False,
            }
            records.append(record)  # type: ignore[arg-type]
    return records


def test_scoring_never_reads_the_steps_own_clicks_from_the_table() -> None:
    """Every (last item, next item) pair of the stream occurs once, so a scored example whose
    next item is among its session's followers was read from the future."""
    records = _chain_stream(sessions=40, items=400, seed=1, follow=False)
    pairs = [(r["prefix"][-1], r["item_id"]) for r in records if r["prefix"]]
    assert len(set(pairs)) == len(pairs)
    trainer = OnlineTrainer(ModelConfig(dim=8, negatives=16, replay=0))
    target = {(r["session_id"], len(r["prefix"])): r["item_id"] for r in records}
    read: list[bool] = []
    gate_features = trainer.gate_features

    def spy(queries: Sequence[tuple[str, str, Sequence[str]]], column: Any) -> HistoryFeatures:
        assert trainer.item_follows is not None
        for _, session, prefix in queries:
            followed = trainer.item_follows.followed(prefix)
            read.append(target[(session, len(prefix))] in followed.items)
        return gate_features(queries, column)

    trainer.gate_features = spy  # type: ignore[method-assign]
    learning = LearningRound(trainer, RoundConfig(batch_size=32))
    learning.learn(records)
    assert len(read) > 100 and not any(read)
    # ... and the table did take in the stream's clicks once they were scored.
    assert trainer.item_follows is not None and len(trainer.item_follows) > 150


@pytest.mark.parametrize("follow", [True, False])
def test_the_gate_learns_how_much_following_pays(follow: bool) -> None:
    """Where sessions walk a fixed order the follows_last weight grows and lifts HR well above
    the model without the table; where clicks are random it stays small."""
    records = _chain_stream(sessions=700, items=300, seed=2, follow=follow)
    scores = {}
    weights = {}
    for follows in (True, False):
        model = LiveModel(ModelConfig(dim=16, negatives=32, follows=follows), history_epochs=1)
        result = run_prequential([model], records, history=600)
        scores[follows] = result.hr(model.name)
        assert model.trainer.repeat_gate is not None
        weights[follows] = dict(zip(FEATURES, model.trainer.repeat_gate.weights.tolist(), strict=True))
    if follow:
        assert weights[True]["follows_last"] > 1.0
        assert scores[True] > scores[False] + 0.2
    else:
        assert abs(weights[True]["follows_last"]) < 1.0
        assert scores[True] == pytest.approx(scores[False], abs=0.05)
    assert np.isfinite(list(weights[True].values())).all()


def test_the_table_is_part_of_the_trainers_checkpointed_state() -> None:
    trainer = OnlineTrainer(ModelConfig(dim=8, negatives=16))
    trainer.observe(_chain_stream(sessions=5, items=50, seed=3, follow=True))
    restored = OnlineTrainer(ModelConfig(dim=8, negatives=16))
    restored.load_state_dict(trainer.state_dict())
    assert trainer.item_follows is not None and restored.item_follows is not None
    assert restored.item_follows.state_dict()["followers"] == trainer.item_follows.state_dict()["followers"]
    assert len(restored.item_follows) == len(trainer.item_follows) > 0
    # A checkpoint written before the table existed loads with an empty one.
    old = {k: v for k, v in trainer.state_dict().items() if k != "item_follows"}
    fresh = OnlineTrainer(ModelConfig(dim=8, negatives=16))
    fresh.load_state_dict(old)
    assert fresh.item_follows is not None and len(fresh.item_follows) == 0


def test_the_table_gives_the_garbage_collector_nothing_to_walk_per_item() -> None:
    """A full collection walks every object the collector tracks; per-item lists it tracked
    (two array objects and their holder) stalled the learner for 18-31 ms at 1M items."""
    gc.collect()
    before = len(gc.get_objects())
    follows = ItemFollows()
    for n in range(2000):
        follows.observe([f"i{n}", f"i{n + 1}"], f"i{n + 2}")
    gc.collect()  # a tuple of untracked objects is untracked by a collection
    assert len(follows) == 2001 and follows.entries == 4000
    assert len(gc.get_objects()) - before < 20  # the table itself, not a few per item
