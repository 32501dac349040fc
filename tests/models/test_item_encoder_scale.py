"""The item encoder's per-step bookkeeping that must not read the whole catalogue: the
negative sampler, the changes it reports, and the optimiser's moments of a large table.

Synthetic catalogues and click counts throughout (labelled in each test).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from onevec.models.online.base import parse_examples
from onevec.models.online.config import ModelConfig
from onevec.models.online.item_encoder import ItemEncoder
from onevec.models.online.optim import RowAdam


def test_negatives_follow_smoothed_clicks_across_blocks() -> None:
    # Synthetic: 5,000 items (several sampler blocks), every fifth one clicked 1-20 times.
    encoder = ItemEncoder(ModelConfig(dim=4, negative_power=0.75))
    rng = np.random.default_rng(0)
    clicked = np.arange(0, 5000, 5)
    clicks = rng.integers(1, 21, size=len(clicked))
    records = [
        {"user_id": "u", "item_id": f"i{row}", "prefix": []}
        for row, n in zip(clicked.tolist(), clicks.tolist(), strict=True)
        for _ in range(n)
    ]
    for start in range(0, len(records), 4096):
        encoder.prepare(parse_examples(records[start : start + 4096]))
    draws = torch.cat([encoder.sample_negatives(256) for _ in range(1500)]).numpy()  # as steps draw
    rows = np.array([encoder.item_vocab.get(f"i{row}") for row in clicked.tolist()])
    expected = clicks**0.75 / (clicks**0.75).sum()
    observed = np.bincount(draws, minlength=len(encoder.item_vocab))
    assert observed.sum() == observed[rows].sum()  # never an item without clicks
    assert np.abs(observed[rows] / len(draws) - expected).max() < 5 * np.sqrt(expected.max() / len(draws))
    # The log-Q correction reads the same distribution.
    batch = encoder.prepare(parse_examples(records[:8]), count=False)
    log_q = encoder.candidate_log_q(batch).double().numpy()
    counts = encoder.counts[: len(encoder.item_vocab)].double()
    smoothed = counts**0.75
    direct = torch.cat(
        [
            torch.log(counts[batch.targets] / counts.sum()),
            torch.log(smoothed[batch.negatives] / smoothed.sum()),
        ]
    ).numpy()
    assert np.allclose(log_q, direct, atol=1e-5)


def test_drained_changes_and_bags_give_the_changed_items() -> None:
    # Synthetic: 300 items over 7 tokens, two models learning the same records.
    def build() -> ItemEncoder:
        encoder = ItemEncoder(ModelConfig(dim=4))
        for i in range(300):
            encoder.set_attributes(f"i{i}", [f"t={i % 7}", f"s={i % 3}"] if i % 11 else [])
        encoder.changed_rows()  # the registration: drained
        return encoder

    first, second = build(), build()
    records = [{"user_id": "u", "item_id": f"i{i}", "prefix": [f"i{i + 1}"]} for i in (5, 22, 77)]
    first.learn(records)
    second.learn(records)
    rows, tokens = first.drain_changes()
    marks = np.zeros(len(first.vocabularies["token"]), dtype=np.int64)
    marks[tokens] = 1
    every = np.arange(len(first.item_vocab))
    via_bags = np.flatnonzero(first.bag_max(every, marks, 0) > 0)
    assert np.array_equal(np.union1d(rows, via_bags), second.changed_rows())
    assert len(via_bags) > len(rows)  # tokens moved items nobody looked up
    assert first.drain_changes()[0].size == 0  # drained


def test_moments_exist_only_for_rows_with_gradients_and_old_dense_state_loads() -> None:
    table = nn.Parameter(torch.randn(100_000, 8, generator=torch.Generator().manual_seed(0)))
    twin = nn.Parameter(table.detach().clone())
    slotted, dense = RowAdam(lr=0.1), RowAdam(lr=0.1)
    # The format saved before slots: a moment row per table row.
    dense.load_state_dict(
        {
            "t": {
                "exp_avg": torch.zeros(100_000, 8),
                "exp_avg_sq": torch.zeros(100_000, 8),
                "steps": torch.zeros(100_000),
            }
        }
    )
    for seed, rows in enumerate([[5, 9], [9, 70_000], [5, 9, 3]]):
        for optimizer, param in ((slotted, table), (dense, twin)):
            target = torch.randn(len(rows), 8, generator=torch.Generator().manual_seed(seed))
            F.embedding(torch.tensor(rows), param, sparse=True).mul(target).sum().backward()
            optimizer.step([("t", param)])
    assert torch.equal(table, twin)  # the same Adam trajectory
    state = slotted.state_dict()["t"]
    assert int(state["used"]) == 4 and state["exp_avg"].shape[0] < 100  # 4 rows ever stepped
