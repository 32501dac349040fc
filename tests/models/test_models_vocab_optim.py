"""Vocabulary growth/persistence and the row-wise Adam's behaviour on growing tables."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from onevec.models.online.optim import RowAdam
from onevec.models.online.vocab import Vocabulary


def test_vocabulary_grows_without_collisions_and_round_trips_through_json() -> None:
    vocab = Vocabulary()
    keys = [f"item-{i}" for i in range(1000)]
    rows = [vocab.index(k) for k in keys]
    assert rows == list(range(1000))
    assert vocab.index("item-7") == 7  # existing keys keep their row
    assert vocab.get("missing") is None and len(vocab) == 1000
    restored = Vocabulary()
    restored.load_state_dict(json.loads(json.dumps(vocab.state_dict())))
    assert restored.keys() == keys and restored.get("item-999") == 999
    with pytest.raises(ValueError):
        restored.load_state_dict({"keys": ["a", "a"]})


def test_non_string_ids_are_the_rows_of_their_strings() -> None:
    # Records from users' own files may carry int ids in a prefix (parsing keeps prefix items
    # as given, for speed): they must land on the same rows as their strings, never new ones.
    vocab = Vocabulary()
    assert vocab.index_many(["7", 8, "9"]) == [0, 1, 2]
    assert vocab.index_many([7, "8", 9, 7]) == [0, 1, 2, 0]
    assert vocab.index_many([["a"], "x"]) == [3, 4]  # unhashable: its str, not a crash
    assert vocab.keys() == ["7", "8", "9", "['a']", "x"]


def test_int_prefix_items_train_like_their_strings() -> None:
    from onevec.models.online.trainer import OnlineTrainer

    as_ints, as_strings = OnlineTrainer(), OnlineTrainer()
    records = [
        {"user_id": 1, "item_id": str(i % 5), "prefix": [j % 5 for j in range(i)]} for i in range(1, 9)
    ]
    loss_ints = as_ints.learn(records)
    loss_strings = as_strings.learn([{**r, "prefix": [str(p) for p in r["prefix"]]} for r in records])
    assert loss_ints == pytest.approx(loss_strings)
    assert as_ints.item_encoder.item_vocab.keys() == as_strings.item_encoder.item_vocab.keys()


def sparse_step(optimizer: RowAdam, table: nn.Parameter, rows: list[int], seed: int) -> None:
    target = torch.randn(len(rows), table.shape[1], generator=torch.Generator().manual_seed(seed))
    F.embedding(torch.tensor(rows), table, sparse=True).mul(target).sum().backward()
    optimizer.step([("table", table)])


def test_growth_preserves_weights_and_optimiser_state() -> None:
    start = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    plain, grown = nn.Parameter(start.clone()), nn.Parameter(start.clone())
    plain_opt, grown_opt = RowAdam(lr=0.1), RowAdam(lr=0.1)
    for seed in range(3):
        sparse_step(plain_opt, plain, [0, 2], seed)
        sparse_step(grown_opt, grown, [0, 2], seed)
    # Grow one table to 8 rows, the way ItemEncoder does (new Parameter, old rows copied).
    bigger = torch.zeros(8, 3)
    bigger[:4] = grown.detach()
    grown = nn.Parameter(bigger)
    for seed in range(3, 6):
        sparse_step(plain_opt, plain, [0, 2], seed)
        sparse_step(grown_opt, grown, [0, 2, 6], seed)  # also touches a new row
    # Old rows followed exactly the same Adam trajectory: their moments survived growth.
    assert torch.equal(grown.detach()[[0, 2]], plain.detach()[[0, 2]])
    # Rows never touched never moved (lazy: no momentum drift on untouched rows).
    assert torch.equal(grown.detach()[[1, 3]], start[[1, 3]])
    assert torch.equal(grown.detach()[[4, 5, 7]], torch.zeros(3, 3))
    assert not torch.equal(grown.detach()[6], torch.zeros(3))


def test_dense_parameters_get_plain_adam() -> None:
    weight = nn.Parameter(torch.ones(2, 2))
    reference = nn.Parameter(torch.ones(2, 2))
    ours, torch_adam = RowAdam(lr=0.01), torch.optim.Adam([reference], lr=0.01)
    for _ in range(5):
        (weight**2).sum().backward()
        ours.step([("w", weight)])
        torch_adam.zero_grad()
        (reference**2).sum().backward()
        torch_adam.step()
    assert torch.allclose(weight, reference, atol=1e-6)
