"""Offline pre-training (onevec.models.pretrain): stream-identical examples, multi-epoch training in
stream order, held-out next-item evaluation, and a checkpoint that carries the result.

The MovieLens-100k tests use the built-in data set as ``load_events`` returns it (sessions
derived at 30-minute gaps), split by example at 80% in stream (time) order: the first part
trains for two epochs, the last part is ranked without learning.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from onevec.models.clickstream.events import Event
from onevec.models.clickstream.sessions import SessionBook, SessionWindow, fingerprint
from onevec.models.datasets import load_events
from onevec.models.online.config import ModelConfig
from onevec.models.online.trainer import OnlineTrainer
from onevec.models.pretrain import evaluate_next_item, pretrain, session_examples
from onevec.models.ranking import TOP_K, PrequentialScore
from onevec.streams.kafka.replay import iter_event_dicts

EPOCHS = 2
BATCH = 256
SEED = 0


def frame(rows: list[tuple[str, str, str, float]], event_type: str = "click") -> pd.DataFrame:
    """A normalised events frame from (user, session, item, timestamp) rows in time order."""
    return pd.DataFrame(
        [
            {"user_id": u, "session_id": s, "item_id": i, "event_type": event_type, "timestamp": t}
            for u, s, i, t in rows
        ]
    )


def stream_examples(events: pd.DataFrame, max_items: int) -> list[dict[str, Any]]:
    """What the stream emits for ``events``: the worker's SessionBook over a plain dict, fed
    the events as replay sends them, with increasing input offsets."""
    book = SessionBook({}, SessionWindow(max_items=max_items))
    return [
        book.process(Event.model_validate(event), 0, offset)[0].to_dict()
        for offset, event in enumerate(iter_event_dicts(events))
    ]


# ---- session_examples on hand-made frames ------------------------------------------------

# Two sessions interleaved in time, max_items=2: each row's expected prefix.
INTERLEAVED = [
    # user, session, item, ts,   expected prefix
    ("u1", "s1", "a", 1000.0, []),
    ("u2", "s2", "x", 1001.0, []),
    ("u1", "s1", "b", 1002.0, ["a"]),
    ("u1", "s1", "c", 1003.0, ["a", "b"]),
    ("u2", "s2", "y", 1004.0, ["x"]),
    ("u1", "s1", "d", 1005.0, ["b", "c"]),  # only the newest max_items=2 items are kept
    ("u1", "s1", "a", 1006.0, ["c", "d"]),  # a re-click (new time) is a new event
    ("u2", "s2", "z", 1007.0, ["x", "y"]),
]

# An exact repeat (same item, type and time) is flagged and keeps its original's prefix.
REPEATED = [
    ("u1", "s1", "a", 1000.0, [], False),
    ("u1", "s1", "b", 1001.0, ["a"], False),
    ("u1", "s1", "b", 1001.0, ["a"], True),  # repeat of the previous event
    ("u1", "s1", "c", 1002.0, ["a", "b"], False),  # the repeat did not extend the session
]

# An explicit session id spanning a pause longer than the stream's 30-minute gap restarts.
PAUSED = [
    ("u1", "s1", "a", 1000.0, []),
    ("u1", "s1", "b", 1000.0 + 1800.0, ["a"]),  # exactly the gap: same session
    ("u1", "s1", "c", 1000.0 + 3601.0, []),  # more than the gap after b: afresh
    ("u1", "s1", "d", 1000.0 + 3602.0, ["c"]),
]


def test_session_examples_prefixes_interleaved_sessions() -> None:
    events = frame([row[:4] for row in INTERLEAVED])
    records = session_examples(events, max_items=2)
    assert [r["prefix"] for r in records] == [row[4] for row in INTERLEAVED]
    assert records[0] == {
        "event_id": fingerprint(Event.model_validate(next(iter_event_dicts(events)))),
        "session_id": "s1",
        "user_id": "u1",
        "item_id": "a",
        "event_type": "click",
        "timestamp": 1000.0,
        "prefix": [],
        "duplicate": False,
    }
    assert len({r["event_id"] for r in records}) == len(records)
    assert not any(r["duplicate"] for r in records)
    # Prefixes are fresh lists, not views of the session state.
    assert records[2]["prefix"] is not records[3]["prefix"]
    assert records == stream_examples(events, max_items=2)


def test_session_examples_flags_exact_repeats_like_the_stream() -> None:
    events = frame([row[:4] for row in REPEATED])
    records = session_examples(events)
    assert [(r["prefix"], r["duplicate"]) for r in records] == [(row[4], row[5]) for row in REPEATED]
    assert records[2]["event_id"] == records[1]["event_id"]  # the same event, sent again
    assert records == stream_examples(events, max_items=50)


def test_session_examples_restart_after_the_gap_like_the_stream() -> None:
    events = frame([row[:4] for row in PAUSED])
    records = session_examples(events)
    assert [r["prefix"] for r in records] == [row[4] for row in PAUSED]
    assert records == stream_examples(events, max_items=50)


def test_session_examples_rejects_what_the_stream_rejects() -> None:
    with pytest.raises(ValueError, match="addtocart"):
        session_examples(frame([("u1", "s1", "a", 1000.0)], event_type="addtocart"))
    with pytest.raises(ValueError, match="session_id"):
        session_examples(frame([("u1", "s1", "a", 1000.0)]).drop(columns="session_id"))


# ---- MovieLens-100k ------------------------------------------------------------------------


@dataclass(frozen=True)
class Split:
    events: pd.DataFrame
    examples: list[dict[str, Any]]
    train: list[dict[str, Any]]  # first 80%, stream order
    test: list[dict[str, Any]]  # last 20%, stream order


@dataclass(frozen=True)
class Pretrained:
    trainer: OnlineTrainer
    losses: list[float]
    epochs_reported: list[tuple[int, float]]
    progress: list[int]
    score: PrequentialScore  # on the test part


@pytest.fixture(scope="module")
def movielens() -> Split:
    events = load_events("movielens-100k")
    examples = session_examples(events)
    cut = int(0.8 * len(examples))
    return Split(events=events, examples=examples, train=examples[:cut], test=examples[cut:])


@pytest.fixture(scope="module")
def pretrained(movielens: Split) -> Pretrained:
    trainer = OnlineTrainer(ModelConfig(seed=SEED))
    reported: list[tuple[int, float]] = []
    progress: list[int] = []
    losses = pretrain(
        trainer,
        movielens.train,
        EPOCHS,
        batch_size=BATCH,
        on_progress=progress.append,
        on_epoch=lambda epoch, loss: reported.append((epoch, loss)),
    )
    score = evaluate_next_item(trainer, movielens.test, k=TOP_K)
    return Pretrained(trainer, losses, reported, progress, score)


def test_movielens_examples_match_the_stream(movielens: Split) -> None:
    assert len(movielens.examples) == len(movielens.events) == 100_000
    assert movielens.examples == stream_examples(movielens.events, max_items=50)
    # Stream order is time order, sessions interleaved.
    times = [e["timestamp"] for e in movielens.examples]
    assert times == sorted(times)


def test_pretrain_loss_falls_per_epoch_and_reports_progress(movielens: Split, pretrained: Pretrained) -> None:
    losses = pretrained.losses
    rounded = [round(x, 4) for x in losses]
    print(f"\npretrain on {len(movielens.train)} examples: mean loss per epoch {rounded}")
    assert len(losses) == EPOCHS
    assert losses[1] < losses[0]
    assert pretrained.epochs_reported == list(enumerate(losses, start=1))
    batches_per_epoch = -(-len(movielens.train) // BATCH)
    assert len(pretrained.progress) == EPOCHS * batches_per_epoch
    assert sum(pretrained.progress) == EPOCHS * len(movielens.train)
    assert pretrained.trainer.steps == EPOCHS * batches_per_epoch


def popularity_on(train: list[dict[str, Any]], test: list[dict[str, Any]], k: int) -> PrequentialScore:
    """prequential_popularity's rule with counts frozen at the end of training (nothing is
    learned from the test part, as for the model): the k most-clicked training items that
    are not in the session's prefix, over the same scored examples."""
    ranked = [item for item, _ in Counter(e["item_id"] for e in train if not e["duplicate"]).most_common()]
    score = PrequentialScore()
    for example in test:
        if not example["prefix"] or example["duplicate"]:
            continue
        seen = set(example["prefix"])
        top = [item for item in ranked[: k + len(seen)] if item not in seen][:k]
        score.add(top.index(example["item_id"]) + 1 if example["item_id"] in top else None)
    return score


def test_pretrained_model_beats_popularity_on_the_tail(movielens: Split, pretrained: Pretrained) -> None:
    model = pretrained.score
    popularity = popularity_on(movielens.train, movielens.test, TOP_K)
    print(
        f"\nMovieLens-100k tail: {model.scored} scored of {len(movielens.test)} held-out examples"
        f"\n  pretrained  HR@{TOP_K} {model.hr:.4f}  MRR@{TOP_K} {model.mrr:.4f}"
        f"\n  popularity  HR@{TOP_K} {popularity.hr:.4f}  MRR@{TOP_K} {popularity.mrr:.4f}"
    )
    assert model.scored == popularity.scored == sum(1 for e in movielens.test if e["prefix"]) > 10_000
    assert model.hr > popularity.hr and model.mrr > popularity.mrr
    # Evaluation does not train: scoring again changes nothing and gives the same figures.
    steps, items = pretrained.trainer.steps, pretrained.trainer.item_encoder.item_ids()
    assert evaluate_next_item(pretrained.trainer, movielens.test) == model
    assert pretrained.trainer.steps == steps and pretrained.trainer.item_encoder.item_ids() == items


def test_checkpoint_after_pretrain_restores_the_evaluation(
    movielens: Split, pretrained: Pretrained, tmp_path: Path
) -> None:
    path = tmp_path / "pretrained.pt"
    pretrained.trainer.save_checkpoint(path, {})
    restored = OnlineTrainer(ModelConfig(seed=SEED))
    assert restored.load_checkpoint(path) == {}
    assert restored.steps == pretrained.trainer.steps
    assert evaluate_next_item(restored, movielens.test) == pretrained.score


# ---- edge cases ------------------------------------------------------------------------------


def test_pretrain_edge_cases() -> None:
    trainer = OnlineTrainer(ModelConfig(seed=SEED, dim=8, negatives=4))
    examples = session_examples(frame([("u1", "s1", item, 1000.0 + n) for n, item in enumerate("abcab")]))
    assert pretrain(trainer, examples, 0) == [] and trainer.steps == 0
    with pytest.raises(ValueError):
        pretrain(trainer, examples, -1)
    with pytest.raises(ValueError):
        pretrain(trainer, examples, 1, batch_size=0)
    # A batch holding only duplicates trains nothing and adds nothing to the mean.
    only_duplicates = [dict(e, duplicate=True) for e in examples]
    assert pretrain(trainer, only_duplicates, 2) == [0.0, 0.0] and trainer.steps == 0
    assert evaluate_next_item(trainer, only_duplicates).scored == 0
    losses = pretrain(trainer, examples + only_duplicates, 1, batch_size=5)
    assert trainer.steps == 1 and losses[0] > 0
    # The first event (empty prefix) is not scored; the rest are.
    assert evaluate_next_item(trainer, examples, batch_size=2).scored == len(examples) - 1
