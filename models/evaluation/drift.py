"""Following the live model's item vectors while it learns: drift and kernel alignment.

:class:`LiveWatch` is the harness's ``on_batch`` hook for the live model. After every batch it
does what the learner's sink does, *upserting* the items whose vector moved (clicked items,
and any whose direction moved by more than ``min_change`` in cosine distance since it was
last published), and keeps one :class:`onevec.models.kernel_alignment.AlignmentTracker` per task up
to date from those upserts alone (running sums: subtract the old vector, add the new one).
Every ``snapshot_every`` batches it keeps a copy of all item vectors; :func:`drift_series`
compares successive snapshots (linear CKA, centroid shift, cosine after Procrustes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from onevec.models.alignment import align, centroid_shift, linear_cka
from onevec.models.clickstream.examples import ExampleRecord
from onevec.models.evaluation.data import Task
from onevec.models.fusion import normalise
from onevec.models.kernel_alignment import AlignmentTracker
from onevec.models.online.trainer import OnlineTrainer

__all__ = ["LiveWatch", "Snapshot", "drift_series"]


@dataclass
class Snapshot:
    timestamp: float
    items: list[str]
    vectors: np.ndarray
    alignment: dict[str, float]  # task -> tracked alignment at this point


@dataclass
class LiveWatch:
    trainer: OnlineTrainer
    tasks: Sequence[Task]
    snapshot_every: int = 20
    min_change: float = 0.01
    published: dict[str, np.ndarray] = field(default_factory=dict)
    snapshots: list[Snapshot] = field(default_factory=list)
    upserts: int = 0
    batches: int = 0

    def __post_init__(self) -> None:
        dim = self.trainer.config.dim
        self.trackers = {t.name: AlignmentTracker(dim, len(t.classes)) for t in self.tasks}
        self.trainer.changed_items()  # history already learned: start from a clean slate
        self._publish(self.trainer.item_encoder.item_ids(), force=True)

    def _publish(self, items: Sequence[str], force: bool) -> None:
        if not items:
            return
        vectors = self.trainer.encode_items(items).astype(np.float64)
        if not force:  # only the items whose direction moved by more than min_change
            old_units = normalise(
                np.stack([self.published.get(i, np.zeros(vectors.shape[1])) for i in items])
            )
            moved = 1.0 - (normalise(vectors) * old_units).sum(1) > self.min_change
            items = [item for item, keep in zip(items, moved, strict=True) if keep]
            vectors = vectors[moved]
        labelled = [(task, self.trackers[task.name]) for task in self.tasks]
        for item, vector in zip(items, vectors, strict=True):
            old = self.published.get(item)
            for task, tracker in labelled:
                label = task.labels.get(item)
                if label is None:
                    continue
                if old is None:
                    tracker.add(vector, label)
                else:
                    tracker.replace(old, vector, label)
            self.published[item] = vector
            self.upserts += 1

    def __call__(self, position: int, batch: list[ExampleRecord]) -> None:
        clicked = {str(r["item_id"]) for r in batch}
        changed = self.trainer.changed_items()
        # Clicked items are always re-published; the rest only when they really moved.
        self._publish(sorted(clicked), force=True)
        self._publish(sorted(changed - clicked), force=False)
        self.batches += 1
        if self.batches % self.snapshot_every == 0:
            self.snapshot(float(batch[-1]["timestamp"]))

    def snapshot(self, timestamp: float) -> None:
        items = self.trainer.item_encoder.item_ids()
        self.snapshots.append(
            Snapshot(
                timestamp,
                items,
                self.trainer.encode_items(items),
                {name: tracker.alignment() for name, tracker in self.trackers.items()},
            )
        )

    def published_matrix(self, task: Task) -> tuple[np.ndarray, np.ndarray]:
        """The published vectors and labels of a task's items (to check a tracker against)."""
        chosen = [item for item in self.published if item in task.labels]
        return np.array([self.published[i] for i in chosen]), np.array([task.labels[i] for i in chosen])


def drift_series(snapshots: Sequence[Snapshot]) -> list[dict[str, float]]:
    """Per snapshot after the first, compared with the previous one and with the first, on the
    items both hold: linear CKA, the centroid shift of the unit vectors (the live drift
    monitor's signal), and the mean cosine distance of each item after an orthogonal
    Procrustes alignment (the change a rotation cannot explain)."""
    rows = []
    for previous, current in zip(snapshots, snapshots[1:], strict=False):
        row = {"timestamp": current.timestamp}
        for label, reference in (("previous", previous), ("first", snapshots[0])):
            # Item rows only grow, in first-seen order: the reference's rows are a prefix.
            old = reference.vectors
            new = current.vectors[: len(reference.items)]
            row[f"cka_{label}"] = linear_cka(new, old)
            # On unit vectors, as the live drift monitor reads the served ones.
            row[f"centroid_shift_{label}"] = centroid_shift(normalise(old), normalise(new))
            aligned, _ = align(new, old, new)
            row[f"cosine_change_{label}"] = float(1.0 - (normalise(aligned) * normalise(old)).sum(1).mean())
        rows.append(row)
    return rows
