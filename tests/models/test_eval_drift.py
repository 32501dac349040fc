"""Following the live model: kernel alignment tracked per upsert, and drift between snapshots."""

from __future__ import annotations

import numpy as np
from scipy.stats import ortho_group

from onevec.models.catalog import attribute_tokens, load_attributes
from onevec.models.datasets import load_events
from onevec.models.evaluation.data import tasks_from_attributes
from onevec.models.evaluation.drift import LiveWatch, Snapshot, drift_series
from onevec.models.kernel_alignment import centred_alignment
from onevec.models.online.config import ModelConfig
from onevec.models.online.trainer import OnlineTrainer
from onevec.models.pretrain import session_examples


def test_alignment_from_upserts_matches_a_recomputation_on_movielens() -> None:
    attributes = load_attributes("movielens-100k")
    tasks = tasks_from_attributes(attributes)
    assert {"decade", "genre=Drama", "genre (single-genre items)"} <= {t.name for t in tasks}
    trainer = OnlineTrainer(ModelConfig(dim=16, seed=0))
    for item, attrs in attributes.items():
        trainer.set_attributes(item, attribute_tokens(attrs))
    records = session_examples(load_events("movielens-100k").head(3000))
    watch = LiveWatch(trainer, tasks, snapshot_every=3)
    for start in range(0, len(records), 256):
        batch = records[start : start + 256]
        trainer.learn(batch)
        watch(start, batch)
    assert len(watch.snapshots) == len(range(0, len(records), 256)) // 3
    # Every catalogue item was published once at the start, then only the ones that moved.
    assert len(attributes) < watch.upserts < len(attributes) * (watch.batches + 1)
    for task in tasks:
        vectors, labels = watch.published_matrix(task)
        assert np.isclose(
            watch.trackers[task.name].alignment(), centred_alignment(vectors, labels), atol=1e-9
        )
    # What was published is what the model serves now, up to the skipped small moves.
    served = trainer.encode_items(list(watch.published))
    published = np.array(list(watch.published.values()))
    cosine = (served * published).sum(1) / np.linalg.norm(served, axis=1) / np.linalg.norm(published, axis=1)
    assert cosine.min() > 1 - 0.011


def test_drift_tells_a_rotation_from_a_real_change() -> None:
    rng = np.random.default_rng(0)
    first = rng.normal(size=(500, 16))
    rotated = first @ ortho_group.rvs(16, random_state=1)
    changed = first + rng.normal(size=first.shape)
    items = [f"i{n}" for n in range(500)]
    rows = drift_series(
        [
            Snapshot(0.0, items, first, {}),
            Snapshot(1.0, items, rotated, {}),
            Snapshot(2.0, items, changed, {}),
        ]
    )
    assert np.isclose(rows[0]["cka_previous"], 1.0) and rows[0]["cosine_change_previous"] < 1e-9
    assert rows[1]["cka_first"] < 0.9 and rows[1]["cosine_change_first"] > 0.1
