"""Replay: each micro-batch is followed by steps on examples drawn from a bounded buffer of
recent ones; replayed clicks are not counted again; the buffer survives a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from onevec.models.online.base import Example
from onevec.models.online.config import ModelConfig
from onevec.models.online.trainer import OnlineTrainer
from tests.models.synthetic_streams import repeat_stream

RECORDS = repeat_stream(0.5, users=20, baskets=4)  # SYNTHETIC: 400 records
CONFIG = ModelConfig(dim=8, negatives=16, replay=2, replay_size=50, replay_batch=12, seed=1)


def batches(size: int = 40) -> list[list[Any]]:
    return [RECORDS[i : i + size] for i in range(0, len(RECORDS), size)]


def test_each_step_replays_from_the_buffer_without_counting_again(monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = OnlineTrainer(CONFIG)
    prepared: list[tuple[int, bool]] = []
    prepare = trainer.item_encoder.prepare

    def spy(examples: list[Example], count: bool = True) -> Any:
        prepared.append((len(examples), count))
        return prepare(examples, count)

    monkeypatch.setattr(trainer.item_encoder, "prepare", spy)
    learned = 0
    for batch in batches()[:3]:
        trainer.learn(batch)
        learned += len(batch)
    # Per micro-batch: itself (counted), then two replayed draws of 12 (not counted).
    assert prepared == [(40, True), (12, False), (12, False)] * 3
    assert trainer.item_encoder.counts.sum().item() == learned
    assert trainer.steps == 3


def test_the_buffer_keeps_the_newest_examples_only() -> None:
    trainer = OnlineTrainer(CONFIG)
    for batch in batches()[:4]:
        trainer.learn(batch)
    assert len(trainer.replay_buffer) == 50
    assert [e.item_id for e in trainer.replay_buffer] == [r["item_id"] for r in RECORDS[160 - 50 : 160]]


def test_replay_fits_a_stream_better_than_one_pass() -> None:
    # SYNTHETIC: 20 fixed chains of 5 items, each walked by 12 sessions; after one pass over
    # them, the model that also replayed predicts the chains' next items with a lower loss.
    chains = [[f"c{c}-{j}" for j in range(5)] for c in range(20)]
    records = [
        {"user_id": f"u{s}", "session_id": f"s{s}", "item_id": item, "prefix": chain[:j]}
        for s in range(240)
        for chain in [chains[s % 20]]
        for j, item in enumerate(chain)
    ]
    examples = [Example(r["user_id"], r["item_id"], tuple(r["prefix"])) for r in records]

    def loss_after_one_pass(config: ModelConfig) -> float:
        trainer = OnlineTrainer(config)
        for start in range(0, len(records), 60):
            trainer.learn(records[start : start + 60])
        with torch.no_grad():
            return trainer.session_encoder.loss(trainer.item_encoder.prepare(examples, count=False)).item()

    config = CONFIG.model_copy(update={"lr": 0.02, "replay_size": 500, "replay_batch": None, "replay": 1})
    assert loss_after_one_pass(config) < 0.9 * loss_after_one_pass(config.model_copy(update={"replay": 0}))


def test_a_restart_keeps_the_buffer_and_continues_exactly(tmp_path: Path) -> None:
    original = OnlineTrainer(CONFIG)
    for batch in batches()[:5]:
        original.learn(batch)
    path = tmp_path / "trainer.pt"
    original.save_checkpoint(path, {"examples:0": 4})
    restored = OnlineTrainer(CONFIG)
    assert restored.load_checkpoint(path) == {"examples:0": 4}
    assert list(restored.replay_buffer) == list(original.replay_buffer)
    # The replay draws continue where they were: the same next steps, the same weights.
    for batch in batches()[5:]:
        assert original.learn(batch) == restored.learn(batch)
    items = original.item_encoder.item_ids()
    assert np.array_equal(original.encode_items(items), restored.encode_items(items))


def test_a_checkpoint_from_before_replay_still_loads(tmp_path: Path) -> None:
    old = OnlineTrainer(CONFIG.model_copy(update={"replay": 0}))
    for batch in batches()[:2]:
        old.learn(batch)
    state = old.state_dict()
    del state["replay"]  # what a checkpoint written before the buffer existed holds
    torch.save({"format": 1, "offsets": {}, "state": state}, tmp_path / "old.pt")
    restored = OnlineTrainer(CONFIG.model_copy(update={"repeat_gate": True}))
    restored.load_checkpoint(tmp_path / "old.pt")
    assert len(restored.replay_buffer) == 0 and restored.steps == 2
    assert restored.repeat_gate is not None and restored.repeat_gate.steps == 0
    restored.learn(batches()[2])  # and learns on, replaying from what arrives now
    assert len(restored.replay_buffer) == 40


def test_a_smaller_buffer_after_restart_keeps_the_newest() -> None:
    original = OnlineTrainer(CONFIG)
    for batch in batches()[:3]:
        original.learn(batch)
    smaller = OnlineTrainer(CONFIG.model_copy(update={"replay_size": 10}))
    smaller.load_state_dict(original.state_dict())
    assert list(smaller.replay_buffer) == list(original.replay_buffer)[-10:]
