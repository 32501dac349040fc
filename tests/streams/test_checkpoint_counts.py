"""Each item's click count (the ``event_count`` of its Qdrant point) survives a crash: it is
saved in the checkpoint with the example offsets it covers, so a learner restarted after the
checkpoint, which learns the examples after those offsets again, counts every click once.
Real Qdrant local mode (in memory), MovieLens-100k examples, no Kafka."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from onevec.models.datasets import load_events
from onevec.models.pretrain import session_examples
from onevec.streams.learner.learner import Learner
from onevec.streams.learner.queue import ExamplesBatch
from onevec.streams.qdrant import QdrantStore
from onevec.streams.settings import Settings

SOURCE = "examples:0"


@pytest.fixture(scope="module")
def records() -> list[ExamplesBatch]:
    """One examples record per offset; every 50th is a redelivered copy, flagged duplicate."""
    examples = session_examples(load_events("movielens-100k").head(3_000))
    batches = []
    for offset, example in enumerate(examples):
        batches.append(ExamplesBatch(SOURCE, len(batches), [example]))
        if offset % 50 == 0:
            batches.append(ExamplesBatch(SOURCE, len(batches), [{**example, "duplicate": True}]))
    return batches


def clicks(batches: list[ExamplesBatch]) -> dict[str, int]:
    return dict(Counter(e["item_id"] for b in batches for e in b.examples if not e.get("duplicate")))


def clicked(counts: dict[str, int]) -> dict[str, int]:
    """Without the items met only in prefixes (known to the model, never clicked)."""
    return {item_id: count for item_id, count in counts.items() if count}


def test_a_restored_learner_counts_each_click_once(tmp_path: Path, records: list[ExamplesBatch]) -> None:
    settings = Settings(data_dir=tmp_path / "data", model_dim=32)
    saved, after = records[: len(records) // 2], records[len(records) // 2 :]

    async def scenario() -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
        store = QdrantStore(dim=32)
        await store.ensure_collections()
        crashed = Learner(settings, store)
        await crashed.learn_records(saved)
        await crashed.checkpoint()
        await crashed.learn_records(after)  # learned, never checkpointed: lost with the process
        crashed.thread.shutdown(wait=True)

        served = QdrantStore(dim=32)  # the serving store is empty after the restart
        await served.ensure_collections()
        restarted = Learner(settings, served)
        restarted.restore()
        at_restore = dict(restarted.event_counts)
        await restarted.learn_records([b for b in records if not restarted.checkpoints.covers(b)])
        await restarted.publish_all()
        await restarted.buffer.flush()
        payloads = {}
        for item_id in restarted.event_counts:
            point = await restarted.store.get_item(item_id)
            assert point is not None, item_id
            payloads[item_id] = point.payload["event_count"]
        await restarted.close()
        return at_restore, dict(restarted.event_counts), payloads

    at_restore, final, payloads = asyncio.run(scenario())
    assert clicked(at_restore) == clicks(saved)
    assert clicked(final) == clicks(records)
    assert payloads == final
