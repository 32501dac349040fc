"""Negatives and frequent items: the sampler's power, the log-Q correction that follows it, and
word2vec-style subsampling of frequent items in the item objective."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from onevec.models.online.base import Example
from onevec.models.online.config import ModelConfig
from onevec.models.online.item_encoder import ItemEncoder

# SYNTHETIC clicks: item "hot" 900 times, "cold" 100 times.
CLICKS = [Example("u", "hot", ("x",))] * 900 + [Example("u", "cold", ("y",))] * 100


def encoder(**change: object) -> ItemEncoder:
    items = ItemEncoder(ModelConfig(**{"dim": 4, "negatives": 20_000, **change}))  # type: ignore[arg-type]
    items.prepare(CLICKS)
    return items


def test_negatives_follow_the_clicks_to_the_chosen_power() -> None:
    for power in (0.75, 1.0, 0.5):
        items = encoder(negative_power=power)
        sampled = items.prepare([Example("u", "hot", ())], count=False).negatives
        hot, cold = (items.item_vocab.get(i) for i in ("hot", "cold"))
        ratio = (sampled == hot).sum().item() / (sampled == cold).sum().item()
        assert abs(ratio / 9**power - 1) < 0.1, (power, ratio)


def test_log_q_follows_the_sampler() -> None:
    for power in (0.75, 1.0):
        items = encoder(negative_power=power)
        batch = items.prepare([Example("u", "hot", ())], count=False)
        log_q = items.candidate_log_q(batch)[1:]  # the negatives'
        hot = batch.negatives == items.item_vocab.get("hot")
        expected = np.log(9**power / (9**power + 1))
        assert torch.allclose(log_q[hot], torch.tensor(expected, dtype=torch.float32))


def test_subsampling_weighs_frequent_pairs_down() -> None:
    # Contexts "x" and "y" were never clicked (weight 1); the targets' shares are 0.9 and 0.1,
    # so with t = 0.01 the pairs weigh sqrt(0.01 / 0.9) and sqrt(0.01 / 0.1).
    hot, cold = Example("u", "hot", ("x",)), Example("u", "cold", ("y",))

    def loss(examples: list[Example], t: float) -> float:
        items = encoder(subsample=t, negatives=8)
        items.generator.manual_seed(0)  # the same negatives for every batch
        with torch.no_grad():
            return items.loss(items.prepare(examples, count=False)).item()

    alone = {"hot": loss([hot], 0.0), "cold": loss([cold], 0.0)}
    assert loss([hot, cold], 0.0) == pytest.approx((alone["hot"] + alone["cold"]) / 2)
    assert loss([hot, cold], 1.0) == pytest.approx((alone["hot"] + alone["cold"]) / 2)  # t above every share
    w_hot, w_cold = np.sqrt(0.01 / 0.9), np.sqrt(0.01 / 0.1)
    expected = (w_hot * alone["hot"] + w_cold * alone["cold"]) / (w_hot + w_cold)
    assert loss([hot, cold], 0.01) == pytest.approx(expected, rel=1e-5)
