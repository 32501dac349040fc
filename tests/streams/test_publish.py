"""The publish policy over a real item encoder (no Kafka, no Qdrant): which items a round
publishes, and the stale sweep that walks the catalogue in bounded slices.

Synthetic catalogue: items carrying one of a few attribute tokens, so a step that touches a
token moves every item carrying it (the case that made the sweep never drain at 1M items).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from onevec.models.online.config import ModelConfig
from onevec.models.online.item_encoder import ItemEncoder
from onevec.monitoring.drift import IndexedVectors, ReferenceSnapshot, window_signals
from onevec.streams.learner import publish
from onevec.streams.learner.publish import PublishPolicy


def catalogue(items: int, tokens: int = 4) -> ItemEncoder:
    encoder = ItemEncoder(ModelConfig(dim=8))
    for i in range(items):
        encoder.set_attributes(f"i{i}", [f"t={i % tokens}"])
    return encoder


def policy(encoder: ItemEncoder, sweep_items: int, refresh_seconds: float = 0.0) -> PublishPolicy:
    def encode(ids: Sequence[str]) -> np.ndarray:
        return encoder.encode_items(ids)

    return PublishPolicy(
        encoder, encode, min_change=0.0, refresh_seconds=refresh_seconds, sweep_items=sweep_items
    )


def learn(encoder: ItemEncoder, item: str, prefix: list[str]) -> None:
    encoder.learn([{"user_id": "u", "item_id": item, "prefix": prefix}])


def carriers(encoder: ItemEncoder, token: str) -> set[str]:
    row = encoder.vocabularies["token"].get(token)
    return {item for item in encoder.item_ids() if row in encoder.item_tokens[encoder.item_vocab.get(item)]}


def test_clicked_and_new_items_are_due_at_once_and_the_rest_waits_for_the_sweep() -> None:
    encoder = catalogue(40)
    rules = policy(encoder, sweep_items=1000, refresh_seconds=3600.0)
    ids = rules.everything()
    assert len(ids) == 40 and ids == encoder.item_ids()
    known = len(encoder.item_vocab)
    learn(encoder, "new", ["i0", "i1"])
    due, always = rules.due({"new", "i1"}, known)
    assert always == {"new", "i1"} and set(due) == always  # the moved ones wait for the sweep


@pytest.mark.parametrize("chunk", [4_096, 3, 1])  # rows examined at a time within a round
def test_a_sweep_takes_every_stale_item_once_in_bounded_slices(
    monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    monkeypatch.setattr(publish, "SWEEP_SCAN_ROWS", 16)  # rows examined per round
    monkeypatch.setattr(publish, "SWEEP_CHUNK_ROWS", chunk)
    encoder = catalogue(100)
    rules = policy(encoder, sweep_items=5)
    rules.everything()
    known = len(encoder.item_vocab)
    learn(encoder, "i0", ["i1"])  # touches t=0 and t=1 (and negatives among the clicked)
    stale = carriers(encoder, "t=0") | carriers(encoder, "t=1")
    swept: list[str] = []
    rounds = 0
    while True:
        due, always = rules.due(set(), known)
        assert not always and len(due) <= 5
        swept += due
        rounds += 1
        if not rules._sweeping:
            break
    assert sorted(swept) == sorted(stale)  # each moved item once, nothing that did not move
    assert rounds >= 100 / 16  # the scan is bounded per round
    # The next pass finds nothing new: nothing moved since.
    assert rules.due(set(), known) == ([], set())


def test_a_sweep_reads_only_as_far_as_its_budget_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where every row is stale, a round examines one chunk, not its whole window."""
    monkeypatch.setattr(publish, "SWEEP_CHUNK_ROWS", 8)
    encoder = catalogue(200, tokens=1)
    rules = policy(encoder, sweep_items=5)
    rules.everything()
    learn(encoder, "i0", ["i1"])  # the one token: every item moved
    read: list[int] = []
    bag_max = encoder.bag_max

    def counted(rows: np.ndarray, values: np.ndarray, empty: int) -> np.ndarray:
        read.append(len(rows))
        return bag_max(rows, values, empty)

    monkeypatch.setattr(encoder, "bag_max", counted)
    due, _ = rules.due(set(), len(encoder.item_vocab))
    assert len(due) == 5 and read == [10]  # one chunk of max(8, 2 x 5) rows


def test_a_smaller_round_takes_its_share_of_a_slice() -> None:
    encoder = catalogue(200, tokens=1)
    rules = policy(encoder, sweep_items=40)
    rules.everything()
    learn(encoder, "i0", ["i1"])  # the one token: every item moved
    due, _ = rules.due(set(), len(encoder.item_vocab), share=0.25)
    assert len(due) == 10
    due, _ = rules.due(set(), len(encoder.item_vocab))
    assert len(due) == 40


def test_an_item_moved_again_after_its_sweep_is_swept_again_in_the_next_pass() -> None:
    encoder = catalogue(30, tokens=1)
    rules = policy(encoder, sweep_items=1000)
    rules.everything()
    known = len(encoder.item_vocab)
    learn(encoder, "i0", ["i1"])  # the one token: every item moved
    first, _ = rules.due(set(), known)
    assert sorted(first) == sorted(encoder.item_ids())
    assert rules.due(set(), known) == ([], set())  # swept: nothing is stale
    learn(encoder, "i0", ["i1"])
    second, _ = rules.due(set(), known)
    assert second == first


def test_the_drift_monitor_reads_published_vectors_as_it_reads_a_plain_mapping() -> None:
    """PublishedVectors' sample and gather (no walk over the catalogue) give the drift reference
    and window signals a dict of the same vectors gives."""
    encoder = catalogue(300)
    rules = policy(encoder, sweep_items=1000)
    ids = rules.everything()
    rules.material_changes(ids, set(ids))
    learn(encoder, "new", ["i0", "i1"])  # known to the model, never published
    published = rules.published
    assert isinstance(published, IndexedVectors) and "new" not in published
    plain = {item: published[item].copy() for item in published}
    assert len(plain) == 300

    sample = published.sample_ids(50, np.random.default_rng(0))
    assert len(set(sample)) == 50 and set(sample) <= plain.keys()
    present, vectors = published.vectors_of(["i3", "new", "nobody", "i7"])
    assert present.tolist() == [True, False, False, True]
    np.testing.assert_array_equal(vectors, np.stack([plain["i3"], plain["i7"]]))

    clicks = {f"i{i}": i % 7 for i in range(300)}
    fast = ReferenceSnapshot.take(published, clicks, 20, 1000, np.random.default_rng(0))
    slow = ReferenceSnapshot.take(plain, clicks, 20, 1000, np.random.default_rng(0))
    assert fast.ids == slow.ids and fast.anchors == slow.anchors
    np.testing.assert_array_equal(fast.vectors, slow.vectors)

    learn(encoder, "i5", ["i9"])  # a window later, some items moved
    rules.material_changes(["i5", "i9", "new"], {"i5", "i9", "new"})
    plain = {item: published[item].copy() for item in published}
    signals = window_signals(fast, published, [0.1], 0.5, 10)
    assert signals == window_signals(fast, plain, [0.1], 0.5, 10)
    # The same list asked again (its rows kept): "later" once published is found.
    learn(encoder, "later", ["i1"])
    asked = ["i3", "later", "nobody"]
    assert published.vectors_of(asked)[0].tolist() == [True, False, False]
    assert published.vectors_of(asked)[0].tolist() == [True, False, False]
    assert rules.material_changes(["later"], {"later"})[0]
    present, vectors = published.vectors_of(asked)
    assert present.tolist() == [True, True, False]
    np.testing.assert_array_equal(vectors[1], published["later"])
