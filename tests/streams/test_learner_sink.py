"""The learner against real Qdrant local mode (on disk), without Kafka: what it publishes,
how a new model version is aligned to the served one, and how state survives a restart."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY

from onevec.models.alignment import linear_cka
from onevec.models.catalog import load_attributes
from onevec.models.datasets import load_events
from onevec.models.online.prequential import RankingPass
from onevec.models.online.round import RoundConfig
from onevec.models.pretrain import session_examples
from onevec.streams.learner.learner import Learner
from onevec.streams.learner.queue import ExamplesBatch
from onevec.streams.qdrant import QdrantStore
from onevec.streams.settings import Settings


@pytest.fixture(scope="module")
def examples() -> list[dict]:
    return session_examples(load_events("movielens-100k").head(12_000))


def make_learner(tmp_path: Path, seed: int, store: QdrantStore, attributes: dict | None = None) -> Learner:
    settings = Settings(data_dir=tmp_path / f"data-{seed}", model_seed=seed, model_dim=32)
    return Learner(settings, store, attributes)


async def train(learner: Learner, examples: list[dict], publish: bool) -> None:
    if publish:
        await learner.learn_records(
            [ExamplesBatch("examples:0", offset, [e]) for offset, e in enumerate(examples)]
        )
    else:
        for start in range(0, len(examples), 256):
            learner.trainer.learn(examples[start : start + 256])
    await learner.buffer.flush()


def test_new_version_is_rotated_onto_the_served_one(tmp_path: Path, examples: list[dict]) -> None:
    async def scenario() -> tuple[float, float, float, float]:
        store = QdrantStore(dim=32, path=tmp_path / "qdrant")
        await store.ensure_collections()
        served = make_learner(tmp_path, 0, store)
        await train(served, examples, publish=True)
        ids = served.trainer.item_encoder.item_ids()
        old = np.asarray([(await store.get_item(i)).vectors["behaviour"] for i in ids])

        # A retrained model (another seed): same data, different coordinates.
        retrained = make_learner(tmp_path, 1, store)
        await train(retrained, examples, publish=False)
        raw = retrained.trainer.encode_items(ids)
        cka = await retrained.align_to_serving()
        await retrained.publish_all()
        await retrained.buffer.flush()
        new = np.asarray([(await store.get_item(i)).vectors["behaviour"] for i in ids])

        def mean_cos(a: np.ndarray, b: np.ndarray) -> float:
            a = a / np.linalg.norm(a, axis=1, keepdims=True)
            b = b / np.linalg.norm(b, axis=1, keepdims=True)
            return float((a * b).sum(1).mean())

        # Scores are unchanged by the rotation.
        assert np.allclose(new @ new[:5].T, raw @ raw[:5].T, atol=1e-3)
        await store.close()
        return mean_cos(raw, old), mean_cos(new, old), cka, linear_cka(new, old)

    unaligned, aligned, cka, cka_after = asyncio.run(scenario())
    print(
        f"\nmean cosine to the served version: unaligned {unaligned:.3f}, "
        f"aligned {aligned:.3f}; CKA {cka:.3f}"
    )
    # Two seeds on 12k events share little geometry (CKA is low), yet the rotation recovers what
    # they share; unaligned coordinates of independent versions are unrelated (cosine ~0).
    assert aligned > unaligned + 0.1
    assert cka == pytest.approx(cka_after, abs=1e-6)  # a rotation leaves CKA unchanged


def test_never_clicked_item_with_attributes_is_published(tmp_path: Path, examples: list[dict]) -> None:
    attributes = load_attributes("movielens-100k")
    clicked = {e["item_id"] for e in examples}
    cold = next(i for i in attributes if i not in clicked and attributes[i].get("genre"))

    async def scenario() -> tuple[dict, list]:
        store = QdrantStore(dim=32, path=tmp_path / "qdrant")
        await store.ensure_collections()
        learner = make_learner(tmp_path, 0, store, attributes)
        await learner.publish_all()
        await train(learner, examples, publish=True)
        item = await store.get_item(cold)
        hits = await store.similar(cold, k=10)
        await store.close()
        return item, hits

    item, hits = asyncio.run(scenario())
    assert item is not None and item.payload["event_count"] == 0
    assert np.linalg.norm(item.vectors["unified"]) == pytest.approx(1.0, abs=1e-4)
    genres = set(attributes[cold]["genre"])
    shared = sum(bool(genres & set(h.payload["attributes"].get("genre", []))) for h in hits)
    assert shared >= 7, f"only {shared}/10 neighbours share a genre with the cold item"


@pytest.mark.parametrize(("records", "steps"), [([300], 1), ([200, 250, 150], 2), ([40], 1), ([700, 330], 4)])
def test_a_round_takes_as_many_steps_as_full_batches_would(
    tmp_path: Path, examples: list[dict], records: list[int], steps: int
) -> None:
    """Records arrive in whatever sizes sessionize batched; a round of them is cut into equal
    steps of about the batch size (256), never a full batch plus a small remainder step."""

    async def scenario() -> tuple[int, list[int]]:
        store = QdrantStore(dim=32, path=tmp_path / "qdrant")
        await store.ensure_collections()
        learner = make_learner(tmp_path, 0, store)
        sizes: list[int] = []
        step = learner.round.step
        learner.round.step = lambda batch: sizes.append(len(batch)) or step(batch)  # type: ignore[method-assign]
        before = learner.trainer.steps
        bounds = np.cumsum([0, *records])
        await learner._process(
            [
                ExamplesBatch("examples:0", i, examples[a:b])
                for i, (a, b) in enumerate(itertools.pairwise(bounds))
            ]
        )
        await learner.buffer.flush()
        await store.close()
        return learner.trainer.steps - before, sizes

    taken, sizes = asyncio.run(scenario())
    assert taken == steps
    assert sum(sizes) == sum(records)
    assert max(sizes) - min(sizes) <= 1


def test_a_round_takes_what_is_queued_up_to_its_batches(tmp_path: Path, examples: list[dict]) -> None:
    """Under backlog a round takes queued records up to ``learner_round_batches`` batches (its
    points are built once for all its steps); with one batch in hand it waits for no more."""

    async def scenario() -> tuple[list[int], list[int]]:
        store = QdrantStore(dim=32, path=tmp_path / "qdrant")
        learner = make_learner(tmp_path, 0, store)
        learner.queue.round_examples = 1024  # rounds of 4 batches of 256
        for offset in range(8):  # a backlog: 8 records of 200 examples
            await learner.submit(
                ExamplesBatch("examples:0", offset, examples[200 * offset : 200 * (offset + 1)])
            )
        backlog = [batch.offset for batch in await learner.queue.take_round(await learner.queue.get())]
        rest = [batch.offset for batch in await learner.queue.take_round(await learner.queue.get())]
        await store.close()
        return backlog, rest

    backlog, rest = asyncio.run(scenario())
    assert backlog == [0, 1, 2, 3, 4, 5]  # 1,200 examples: the first count past 1,024
    assert rest == [6, 7]  # 400 examples, more than a batch: the queue is empty, no wait


def test_prequential_scores_a_sample_above_the_item_budget(tmp_path: Path, examples: list[dict]) -> None:
    """Up to ``prequential_item_budget`` known items every step is scored; above it one step's
    sample (at most ``RoundConfig.pass_examples``) is ranked over the following steps, budget
    item rows a step, and scored in the step where its pass completes."""

    def scored_steps(budget: int) -> tuple[int, int, list[int]]:
        path = tmp_path / f"budget-{budget}"
        settings = Settings(data_dir=path, model_dim=32, prequential_item_budget=budget)
        learner = Learner(settings, QdrantStore(dim=32), None)
        per_step: list[int] = []
        for start in range(0, 10_240, 256):
            before = learner.score.scored
            learner.learn_round(examples[start : start + 256])
            per_step.append(learner.score.scored - before)
        return learner.score.scored, len(learner.trainer.item_encoder.item_vocab), per_step

    everything, known, all_steps = scored_steps(10_000)
    assert known < 10_000 and all(all_steps[1:])  # under the budget: every step scored
    sampled, _, steps = scored_steps(300)
    chosen = [i for i, n in enumerate(steps) if n]
    assert 0 < sampled < everything / 2, (sampled, everything)
    # Whole steps while the catalogue is under the budget, then samples of at most
    # pass_examples, each pass spanning more steps as the catalogue grows.
    limit = RoundConfig().pass_examples
    first_sample = next(i for i, n in enumerate(steps) if 0 < n <= limit)
    assert all(n in (0, all_steps[i]) for i, n in enumerate(steps[:first_sample])), steps
    assert all(n <= limit for n in steps[first_sample:]), steps
    later = steps[len(steps) // 2 :]
    assert 0 < sum(1 for n in later if n) < len(later) / 2, steps
    assert 2 <= len(chosen) <= 25, chosen


def test_a_failed_ranking_pass_is_counted_and_learning_goes_on(
    tmp_path: Path, examples: list[dict], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A ranking pass that raises leaves its examples unscored: logged, exported as
    ``onevec_prequential_passes_dropped``, and the learner goes on learning and scoring."""
    learner = Learner(Settings(data_dir=tmp_path, model_dim=32), QdrantStore(dim=32), None)
    learner.learn_round(examples[:256])
    before = REGISTRY.get_sample_value("onevec_prequential_passes_dropped") or 0.0
    advance = RankingPass.advance

    def failing(self: RankingPass, items: int) -> int:
        raise ValueError("a slice failed")

    monkeypatch.setattr(RankingPass, "advance", failing)
    steps = learner.trainer.steps
    learner.learn_round(examples[256:512])
    assert learner.trainer.steps > steps  # the step itself was learned
    assert REGISTRY.get_sample_value("onevec_prequential_passes_dropped") == before + 1
    assert "a prequential ranking pass failed" in caplog.text
    monkeypatch.setattr(RankingPass, "advance", advance)
    scored = learner.score.scored
    learner.learn_round(examples[512:768])
    assert learner.score.scored > scored
