"""A restarted learner reopens the store its checkpoint vouches for instead of publishing every
item again, and answers the same lookups; an emptied store, or a model the store was not written
by, still gets every item. Learners over the embedded engine on disk (qdrant-edge), MovieLens-100k
examples; the last test runs real worker processes on a real broker."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from onevec.models.datasets import load_events
from onevec.models.fusion import normalise
from onevec.models.online.config import ModelConfig
from onevec.models.online.item_encoder import ItemEncoder
from onevec.models.pretrain import session_examples
from onevec.streams.learner.learner import Learner
from onevec.streams.learner.publish import PublishPolicy
from onevec.streams.learner.queue import ExamplesBatch
from onevec.streams.qdrant import QdrantStore
from onevec.streams.settings import Settings
from onevec.streams.worker import WorkerProcess, metric_total
from tests.reliability.reconcile import produce, wait_metric

SOURCE = "examples:0"
PROBES = 8  # items whose neighbours are compared before and after a restart


@pytest.fixture(scope="module")
def records() -> list[ExamplesBatch]:
    examples = session_examples(load_events("movielens-100k").head(3_000))
    return [ExamplesBatch(SOURCE, offset, [example]) for offset, example in enumerate(examples)]


def learner_settings(tmp_path: Path, **overrides: Any) -> Settings:
    fields: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "qdrant_path": tmp_path / "qdrant",
        "qdrant_engine": "edge",
        "model_dim": 32,
    }
    return Settings(**(fields | overrides))


async def started(settings: Settings) -> tuple[Learner, bool]:
    """A learner as a worker starts one: restored, then the store reopened or published."""
    store = QdrantStore.from_settings(settings)
    await store.ensure_collections()
    learner = Learner(settings, store)
    learner.restore()
    reopened = await learner.open_serving()
    await learner.buffer.flush()
    await learner.user_buffer.flush()
    return learner, reopened


async def stopped(learner: Learner) -> None:
    await learner.close()
    await learner.store.close()


async def crashed(learner: Learner) -> None:
    """The process is lost: no drain, no last checkpoint (what was written stays written)."""
    # Nothing of it writes again: a buffer's task left running would call the store after its
    # close, which starts a new qdrant-edge child that holds the shards' WAL lock.
    tasks = [b._task for b in (learner.buffer, learner.session_buffer, learner.user_buffer) if b._task]
    if learner._vouching is not None:
        tasks.append(learner._vouching)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    learner.thread.shutdown(wait=True)
    await learner.store.close()


def popular(batches: Sequence[ExamplesBatch], n: int) -> list[str]:
    counts: dict[str, int] = {}
    for batch in batches:
        for example in batch.examples:
            counts[example["item_id"]] = counts.get(example["item_id"], 0) + 1
    return sorted(counts, key=lambda item: -counts[item])[:n]


async def answers(learner: Learner, probes: list[str]) -> dict[str, Any]:
    """What users see: each probe's similar items and a basket's recommendations, with scores."""
    similar = {
        item: [(hit.item_id, round(hit.score, 6)) for hit in await learner.store.similar(item, k=10)]
        for item in probes
    }
    found = await learner.recommend_for_items(probes[:3], 10)
    return {"similar": similar, "recommend": [dataclasses.astuple(r) for r in found.recommended]}


def test_the_publish_state_round_trips_to_unit_vectors_and_the_same_sweep() -> None:
    """Saved in half precision, loaded back as unit vectors within float rounding of what was
    published, with the sweep's stamps (so stale items are still swept) and its place."""
    encoder = ItemEncoder(ModelConfig(dim=64))
    for i in range(300):
        encoder.set_attributes(f"i{i}", [f"t={i % 7}"])

    def rules() -> PublishPolicy:
        return PublishPolicy(
            encoder, encoder.encode_items, min_change=0.01, refresh_seconds=0.0, sweep_items=50
        )

    saved = rules()
    ids = saved.everything()
    saved.material_changes(ids, set(ids))
    encoder.learn([{"user_id": "u", "item_id": "i1", "prefix": ["i2", "i3"]}])
    saved.due({"i1"}, len(encoder.item_vocab))  # a sweep under way: stale items left for later
    state = saved.state_dict()
    loaded = rules()
    loaded.load_state_dict(state)
    assert set(loaded.published) == set(saved.published)
    for item, vector in saved.published.items():
        assert abs(np.linalg.norm(loaded.published[item]) - 1) < 1e-6
        assert float(np.dot(loaded.published[item], vector)) > 1 - 1e-6
    swept, _ = loaded.due(set(), len(encoder.item_vocab))
    assert (swept, _) == saved.due(set(), len(encoder.item_vocab)) and len(swept) == 50


def test_a_restarted_learner_reopens_the_store_and_answers_the_same(
    tmp_path: Path, records: list[ExamplesBatch]
) -> None:
    settings = learner_settings(tmp_path)
    probes = popular(records, PROBES)

    async def scenario() -> dict[str, Any]:
        first, reopened_first = await started(settings)
        await first.learn_records(records)
        await first.buffer.flush()
        before = await answers(first, probes)
        points = await first.store.count()
        published = {item: vector.copy() for item, vector in first.publish.published.items()}
        await stopped(first)

        second, reopened = await started(settings)
        after = await answers(second, probes)
        result = {
            "reopened_first": reopened_first,
            "reopened": reopened,
            "upserted": second.buffer.upserted_points,
            "points": points,
            "count": await second.store.count(),
            # What the restarted learner takes as published (saved in half precision).
            "same_published": published.keys() == set(second.publish.published)
            and all(np.allclose(v, second.publish.published[k], atol=1e-3) for k, v in published.items()),
            "before": before,
            "after": after,
        }
        await stopped(second)
        return result

    got = asyncio.run(scenario())
    assert not got["reopened_first"] and got["reopened"]
    assert got["upserted"] == 0  # no item republished
    assert got["count"] == got["points"] > 500
    assert got["same_published"]
    assert got["after"] == got["before"]
    assert len(got["before"]["recommend"]) == 10


def test_an_emptied_store_gets_every_item_again(tmp_path: Path, records: list[ExamplesBatch]) -> None:
    settings = learner_settings(tmp_path)

    async def scenario() -> tuple[int, bool, int, int]:
        first, _ = await started(settings)
        await first.learn_records(records[:1500])
        await first.buffer.flush()
        points = await first.store.count()
        await stopped(first)
        assert settings.qdrant_path is not None
        shutil.rmtree(settings.qdrant_path)
        second, reopened = await started(settings)
        count, written = await second.store.count(), second.buffer.upserted_points
        await stopped(second)
        return points, reopened, count, written

    points, reopened, count, written = asyncio.run(scenario())
    assert not reopened
    assert count == points and written == points


@pytest.mark.parametrize("change", ["checkpoint saved, never vouched for", "fusion weights"])
def test_a_record_that_does_not_vouch_for_the_restart_publishes_everything(
    tmp_path: Path, records: list[ExamplesBatch], change: str
) -> None:
    """A crash after a checkpoint was saved but before its points were all written leaves the
    record naming the previous state; other fusion weights change every unified vector."""
    settings = learner_settings(tmp_path)
    restart = settings
    if change == "fusion weights":
        restart = learner_settings(tmp_path, fusion_weights={"behaviour": 1.0, "text": 0.5, "image": 0.5})

    async def scenario() -> tuple[bool, int, int]:
        first, _ = await started(settings)
        await first.learn_records(records[:1500])
        if change == "fusion weights":
            await stopped(first)
        else:
            await first.checkpoint()
            assert first._vouching is not None
            await first._vouching
            await first.learn_records(records[1500:])
            await first.checkpoint()  # its record is never written: the process is lost first
            await crashed(first)
        second, reopened = await started(restart)
        count, written = await second.store.count(), second.buffer.upserted_points
        await stopped(second)
        return reopened, count, written

    reopened, count, written = asyncio.run(scenario())
    assert not reopened and written == count


def test_a_store_restored_from_an_older_copy_gets_every_item(
    tmp_path: Path, records: list[ExamplesBatch], caplog: pytest.LogCaptureFixture
) -> None:
    """The store is put back to a copy taken one checkpoint earlier: its points are older than
    what the restored checkpoint recorded, and learning the examples after the checkpoint would
    never rewrite them all."""
    settings = learner_settings(tmp_path)
    assert settings.qdrant_path is not None
    backup = tmp_path / "backup"
    # Later examples of the same users and items only: the older copy has as many points, so
    # only the points read back can tell it is older.
    seen = [e for b in records[:1500] for e in b.examples]
    items = {e["item_id"] for e in seen} | {i for e in seen for i in e["prefix"]}
    users = {e["user_id"] for e in seen}
    later = [
        b
        for b in records[1500:]
        if all(
            e["user_id"] in users and e["item_id"] in items and set(e["prefix"]) <= items for e in b.examples
        )
    ]

    async def scenario() -> tuple[bool, int, int]:
        first, _ = await started(settings)
        await first.learn_records(records[:1500])
        await stopped(first)
        shutil.copytree(settings.qdrant_path, backup)
        second, reopened = await started(settings)
        assert reopened
        await second.learn_records(later)
        await stopped(second)
        shutil.rmtree(settings.qdrant_path)
        shutil.copytree(backup, settings.qdrant_path)
        third, reopened = await started(settings)
        count, written = await third.store.count(), third.buffer.upserted_points
        await stopped(third)
        return reopened, count, written

    with caplog.at_level("WARNING"):
        reopened, count, written = asyncio.run(scenario())
    assert not reopened and written == count
    assert any(
        "publishing every item: " in r.message and "no checkpoint" not in r.message for r in caplog.records
    )


def test_another_model_version_is_aligned_and_published_whole(
    tmp_path: Path, records: list[ExamplesBatch]
) -> None:
    """The checkpoint is replaced by another model's (retrained with another seed): its record
    vouches for nothing, so the new model is rotated onto the stored vectors and every item is
    published in that rotation."""
    settings = learner_settings(tmp_path)
    other = learner_settings(tmp_path / "other", model_seed=settings.model_seed + 1)

    async def scenario() -> tuple[bool, int, int, float | None]:
        first, _ = await started(settings)
        await first.learn_records(records)
        await first.buffer.flush()
        points = await first.store.count()
        await stopped(first)
        retrained, _ = await started(other)
        await retrained.learn_records(records)
        await stopped(retrained)
        shutil.copy(other.data_dir / "checkpoints" / "learner.pt", settings.data_dir / "checkpoints")
        second, reopened = await started(settings)
        written = second.buffer.upserted_points
        rotated = second.rotation.matrix is not None
        await stopped(second)
        return reopened, points, written, rotated

    reopened, points, written, rotated = asyncio.run(scenario())
    assert not reopened and rotated
    assert written == points


def test_after_a_crash_the_items_learned_again_are_republished(
    tmp_path: Path, records: list[ExamplesBatch]
) -> None:
    """The lost learner published after its last checkpoint; the restarted one reopens the store,
    learns the examples after the checkpoint again and republishes what they touched (and only
    that), so those items serve its vectors. A catalogue change journalled after the checkpoint
    is written again at once."""
    settings = learner_settings(tmp_path)
    saved, after = records[:1200], records[1200:1500]

    async def scenario() -> dict[str, Any]:
        lost, _ = await started(settings)
        await lost.learn_records(saved)
        await lost.checkpoint()
        assert lost._vouching is not None
        await lost._vouching
        await lost.learn_records(after)  # published, never checkpointed
        removed = after[0].examples[0]["item_id"]
        await lost.remove_catalog(removed)  # journalled after the checkpoint
        await lost.buffer.flush()
        await crashed(lost)

        second, reopened = await started(settings)
        at_open = second.buffer.upserted_points
        await second.learn_records([b for b in records[:1500] if not second.checkpoints.covers(b)])
        await second.buffer.flush()
        clicked = sorted({e["item_id"] for b in after for e in b.examples})
        stored = {item.item_id: item.vectors["behaviour"] for item in await second.store.get_items(clicked)}
        served = second._served_vectors(clicked)
        result = {
            "reopened": reopened,
            "at_open": at_open,
            "since": second.sources.since_checkpoint,
            "removed": removed,
            "written": second.buffer.upserted_points,
            "items": await second.store.count(),
            "clicked": clicked,
            "agree": [
                float(np.dot(normalise(np.asarray([stored[item]]))[0], normalise(served[[i]])[0]))
                for i, item in enumerate(clicked)
            ],
        }
        await stopped(second)
        return result

    got = asyncio.run(scenario())
    assert got["reopened"]
    assert got["since"] == [got["removed"]] and got["at_open"] == 1
    # Every item clicked after the checkpoint serves the restarted model's vector...
    assert min(got["agree"]) > 1 - 1e-5
    # ...and far from every item was written again.
    print(f"\n{len(got['clicked'])} clicked, {got['written']} written, {got['items']} items")
    assert len(got["clicked"]) <= got["written"] < got["items"] / 2


def ready(worker: WorkerProcess, timeout: float = 120.0) -> None:
    """Until /healthz?ready answers 200: the learner has opened the store."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{worker.base_url}/healthz?ready", timeout=5):
                return
        except (urllib.error.HTTPError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.25)


def test_a_restarted_worker_does_not_republish_every_item(settings: Settings, start_worker) -> None:
    """A worker stopped and started again on its data folder writes no item point (the metric)
    and answers what the stopped worker had stored; with its store emptied, it writes them all."""
    events = load_events("movielens-100k").iloc[:3000]
    probe = str(events["item_id"].value_counts().index[0])
    first = start_worker(catalog="movielens-100k")
    produce(settings, events.drop(columns="session_id"))
    wait_metric(first, "onevec_examples_learned_total", len(events))
    first.stop()

    async def stored() -> tuple[list[dict[str, Any]], int]:
        async with QdrantStore.from_settings(settings) as store:
            hits = await store.similar(probe, k=10)
            return [{"item_id": h.item_id, "score": h.score} for h in hits], await store.count()

    before, points = asyncio.run(stored())
    second = start_worker(catalog="movielens-100k")
    ready(second)
    time.sleep(2)  # a republish would be under way by now
    after = [
        {"item_id": h["item_id"], "score": h["score"]}
        for h in second.get_json(f"/similar/{probe}?k=10")["similar"]
    ]
    republished = metric_total(second.metrics(), "onevec_items_upserted")
    second.stop()

    assert settings.qdrant_path is not None
    shutil.rmtree(settings.qdrant_path)
    third = start_worker(catalog="movielens-100k")
    ready(third)
    wait_metric(third, "onevec_items_upserted", points, timeout=60)
    third.stop()

    assert republished == 0
    assert after == before and len(before) == 10
