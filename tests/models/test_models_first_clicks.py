"""A micro-batch made only of first clicks (empty prefixes) is a normal batch, not an error."""

from __future__ import annotations

import math

from onevec.models.online.trainer import OnlineTrainer


def example(item: str, prefix: list[str]) -> dict:
    return {
        "session_id": "s",
        "user_id": "u",
        "item_id": item,
        "event_type": "click",
        "timestamp": 0.0,
        "prefix": prefix,
        "duplicate": False,
    }


def test_batch_of_first_clicks_trains() -> None:
    trainer = OnlineTrainer()
    assert math.isfinite(trainer.learn([example("b", ["a"]), example("c", ["a", "b"])]))
    loss = trainer.learn([example("d", []), example("e", [])])
    assert math.isfinite(loss)
    assert {"d", "e"} <= set(trainer.item_encoder.item_ids())


def test_lookups_before_any_click_answer_empty() -> None:
    """A fresh worker asked to recommend for unknown items answered 500 (IndexError on the
    empty item table); it must answer an empty list and zero session vectors."""
    trainer = OnlineTrainer()
    assert trainer.recommend(["unknown"], 20, {"unknown"}) == []
    assert not trainer.encode_sessions([["unknown"], []]).any()
