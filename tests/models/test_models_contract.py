"""The verb set every encoder and the trainer share, checked on each of them."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from onevec.models.online.base import Encoder
from onevec.models.online.config import ModelConfig
from onevec.models.online.item_encoder import ItemEncoder
from onevec.models.online.session_encoder import SessionEncoder
from onevec.models.online.trainer import OnlineTrainer

# Small tables and few negatives, so a handful of batches makes the tables grow and leaves
# some old items untouched by a step; no replay, whose steps revisit old items.
CONFIG = ModelConfig(dim=16, negatives=4, initial_capacity=8, replay=0, seed=3)

FACTORIES: dict[str, Callable[[ModelConfig], Encoder]] = {
    "item-sgns": lambda c: ItemEncoder(c),
    "item-bpr": lambda c: ItemEncoder(c.model_copy(update={"objective": "bpr"})),
    "session": lambda c: SessionEncoder(config=c),
    "trainer": lambda c: OnlineTrainer(c),
}


def item_encoder_of(encoder: Encoder) -> ItemEncoder:
    if isinstance(encoder, ItemEncoder):
        return encoder
    return encoder.item_encoder  # type: ignore[attr-defined]


def records(items: list[str], sessions: int, seed: int, first_session: int = 0) -> list[dict[str, Any]]:
    """Next-item examples of random sessions over ``items``."""
    rng = random.Random(seed)
    out = []
    for s in range(first_session, first_session + sessions):
        clicks = [rng.choice(items) for _ in range(rng.randint(1, 6))]
        for i, item in enumerate(clicks):
            out.append(
                {
                    "session_id": f"s{s}",
                    "user_id": f"u{s % 5}",
                    "item_id": item,
                    "event_type": "click",
                    "timestamp": 1_700_000_000.0 + 60 * i,
                    "prefix": clicks[:i],
                    "duplicate": False,
                }
            )
    return out


OLD_ITEMS = [f"old{i}" for i in range(30)]
NEW_ITEMS = [f"new{i}" for i in range(40)]


@pytest.fixture(params=sorted(FACTORIES))
def make(request: pytest.FixtureRequest) -> Callable[[], Encoder]:
    factory = FACTORIES[request.param]

    def build() -> Encoder:
        encoder = factory(CONFIG)
        # A few items carry catalogue attributes, so token tables are exercised too.
        for i, item in enumerate(OLD_ITEMS[:6]):
            item_encoder_of(encoder).set_attributes(item, [f"genre=g{i % 2}"])
        return encoder

    return build


def test_shared_verb_set(make: Callable[[], Encoder]) -> None:
    encoder = make()
    batch = records(OLD_ITEMS, sessions=40, seed=1)
    losses = [encoder.learn(batch[i : i + 16]) for i in range(0, len(batch), 16)]
    assert all(isinstance(loss, float) and math.isfinite(loss) for loss in losses)

    # Encodings: shapes and dtypes; an id never seen gets the zero vector.
    vectors = encoder.encode_items([*OLD_ITEMS, "never-seen"])
    assert vectors.shape == (len(OLD_ITEMS) + 1, CONFIG.dim) and vectors.dtype == np.float32
    assert np.all(np.isfinite(vectors))
    assert vectors[:-1].any(axis=1).all() and not vectors[-1].any()
    session = encoder.encode_session(OLD_ITEMS[:3])
    assert session.shape == (CONFIG.dim,) and session.dtype == np.float32

    # recommend: k best by inner product with the session vector, exclusions honoured.
    ranked = encoder.recommend(OLD_ITEMS[:3], k=5, exclude={OLD_ITEMS[0]})
    assert len(ranked) == 5 and OLD_ITEMS[0] not in {item for item, _ in ranked}
    scores = [score for _, score in ranked]
    assert scores == sorted(scores, reverse=True)
    by_item = dict(zip(OLD_ITEMS, encoder.encode_items(OLD_ITEMS) @ session, strict=True))
    for item, score in ranked:
        assert score == pytest.approx(float(by_item[item]), rel=1e-4, abs=1e-5)

    # state_dict round trip: identical encodings, and training continues identically.
    restored = make()
    restored.load_state_dict(encoder.state_dict())
    assert np.array_equal(restored.encode_items(OLD_ITEMS), encoder.encode_items(OLD_ITEMS))
    assert np.array_equal(restored.encode_session(OLD_ITEMS[:3]), session)
    more = records(OLD_ITEMS, sessions=5, seed=2, first_session=100)
    assert restored.learn(more) == encoder.learn(more)
    assert np.array_equal(restored.encode_items(OLD_ITEMS), encoder.encode_items(OLD_ITEMS))


def test_growth_keeps_untouched_vectors(make: Callable[[], Encoder]) -> None:
    encoder = make()
    encoder.learn(records(OLD_ITEMS, sessions=40, seed=1))
    table = item_encoder_of(encoder).tables["item"]
    capacity = table.shape[0]
    before = encoder.encode_items(OLD_ITEMS)
    encoder.changed_items()  # drain

    # Sessions made only of new ids: the item table must grow past its capacity.
    assert math.isfinite(encoder.learn(records(NEW_ITEMS, sessions=30, seed=4)))
    assert item_encoder_of(encoder).tables["item"].shape[0] > capacity
    changed = encoder.changed_items()
    assert set(NEW_ITEMS) & changed  # the new items got vectors
    after = encoder.encode_items(OLD_ITEMS)
    untouched = [i for i, item in enumerate(OLD_ITEMS) if item not in changed]
    assert untouched, "every old item was touched: the check below would be vacuous"
    # Growth copied the old rows exactly; only items reported as changed moved.
    assert np.array_equal(after[untouched], before[untouched])
    assert encoder.changed_items() == set()  # drained


def test_duplicates_are_not_learned(make: Callable[[], Encoder]) -> None:
    encoder = make()
    encoder.learn(records(OLD_ITEMS, sessions=10, seed=1))
    before = encoder.encode_items(OLD_ITEMS)
    encoder.changed_items()
    duplicates = [dict(r, duplicate=True) for r in records(OLD_ITEMS, sessions=5, seed=5)]
    assert encoder.learn(duplicates) == 0.0
    assert encoder.changed_items() == set()
    assert np.array_equal(encoder.encode_items(OLD_ITEMS), before)


def test_same_seed_same_model(make: Callable[[], Encoder]) -> None:
    first, second = make(), make()
    batch = records(OLD_ITEMS, sessions=20, seed=6)
    assert [first.learn(batch[i::3]) for i in range(3)] == [second.learn(batch[i::3]) for i in range(3)]
    assert np.array_equal(first.encode_items(OLD_ITEMS), second.encode_items(OLD_ITEMS))


@pytest.mark.parametrize("objective", ["sgns", "bpr"])
def test_item_objective_alone_touches_only_the_rows_it_reads(objective: str) -> None:
    # SGNS reads the `window` newest prefix items, BPR none. A prefix item outside that (never
    # a target, so never a sampled negative either) must not be looked up: a looked-up row
    # gets a sparse gradient entry even when the loss ignores it, the optimiser steps it (with
    # whatever momentum it has) and it is reported as changed.
    encoder = ItemEncoder(ModelConfig(objective=objective, window=1))
    record = {"user_id": "u", "item_id": "a", "prefix": ["far", "near"]}
    encoder.learn([record])
    encoder.changed_items()  # new rows count as changed once: drained
    encoder.learn([record, {**record, "item_id": "b"}])
    assert "far" not in encoder.changed_items()
