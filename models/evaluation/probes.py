"""Probes: how well a frozen item vector predicts a catalogue label (paper 1, task 1), and how
well its neighbours share it. The one probe harness: ``onevec eval`` and ``onevec static
report`` both measure with it.

A logistic regression (scikit-learn, standardised inputs, balanced class weights) is fitted
on a stratified 70% of the task's items and scored on the other 30% (or on a given test split)
by *balanced accuracy* (mean recall per class), so chance is 1 / classes whatever the class
balance; a label an item may have among others (a genre flag) is probed one-vs-rest and scored
by ROC AUC (chance 0.5). Neighbours: the share of an item's nearest neighbours (cosine) with
its label. The unified vector is probed twice: with equal fusion weights, and with one set of
weights for all tasks chosen on validation parts of the training splits (paper 1 chose its
weights by downstream results, for one embedding serving every task).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from onevec.models.evaluation.data import Task
from onevec.models.evaluation.sources import unified
from onevec.models.fusion import normalise

__all__ = [
    "ProbeRow",
    "label_aucs",
    "neighbour_precision",
    "probe_score",
    "probe_tasks",
    "split_probe_score",
    "validation_score",
    "weight_candidates",
]


def _probe() -> Any:
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced"))


def _split(labels: np.ndarray, seed: int, test_size: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    return train_test_split(np.arange(len(labels)), test_size=test_size, random_state=seed, stratify=labels)


def split_probe_score(
    train: np.ndarray, train_labels: np.ndarray, test: np.ndarray, test_labels: np.ndarray
) -> float:
    """Balanced accuracy on ``test`` of a linear probe fitted on ``train``."""
    probe = _probe().fit(train, train_labels)
    return float(balanced_accuracy_score(test_labels, probe.predict(test)))


def probe_score(vectors: np.ndarray, labels: np.ndarray, seed: int = 0) -> float:
    """Held-out balanced accuracy of a linear probe from ``vectors`` to ``labels``."""
    train, test = _split(labels, seed)
    return split_probe_score(vectors[train], labels[train], vectors[test], labels[test])


def label_aucs(vectors: np.ndarray, flags: np.ndarray, min_items: int = 20, seed: int = 0) -> list[float]:
    """Held-out ROC AUC of a one-vs-rest linear probe per label: ``flags`` is (items, labels)
    0/1 (an item may have several labels); labels with fewer than ``min_items`` items on
    either side are left out."""
    aucs = []
    for column in range(flags.shape[1]):
        target = np.asarray(flags[:, column], dtype=np.int64)
        if min(target.sum(), len(target) - target.sum()) < min_items:
            continue
        train, test = _split(target, seed)
        probe = _probe().fit(vectors[train], target[train])
        aucs.append(float(roc_auc_score(target[test], probe.decision_function(vectors[test]))))
    return aucs


def neighbour_precision(vectors: np.ndarray, labels: np.ndarray, k: int = 10, chunk: int = 2048) -> float:
    """Share of each item's ``k`` nearest neighbours (cosine, the item itself excluded) that
    have its label."""
    units = normalise(vectors)
    labels = np.asarray(labels)
    hits = 0
    for start in range(0, len(units), chunk):
        scores = units[start : start + chunk] @ units.T
        rows = np.arange(len(scores))
        scores[rows, rows + start] = -np.inf
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        hits += int((labels[top] == labels[start : start + len(scores), None]).sum())
    return hits / (len(units) * k)


def weight_candidates(sources: Sequence[str]) -> list[dict[str, float]]:
    """Equal weights, each source up-weighted 3x, each source left out."""
    candidates = [dict.fromkeys(sources, 1.0)]
    if len(sources) > 1:
        for source in sources:
            candidates.append({s: 3.0 if s == source else 1.0 for s in sources})
            candidates.append({s: 0.0 if s == source else 1.0 for s in sources})
    return candidates


def validation_score(
    sources: Mapping[str, np.ndarray], labels: np.ndarray, weights: Mapping[str, float], seed: int = 0
) -> float:
    """Balanced accuracy of the fused vector on a validation part of the probe's *training*
    split: choosing weights with it never looks at the test split."""
    train, _ = _split(labels, seed)
    fit, validate = train_test_split(train, test_size=0.3, random_state=seed, stratify=labels[train])
    fused = unified(sources, weights)
    return split_probe_score(fused[fit], labels[fit], fused[validate], labels[validate])


@dataclass(frozen=True)
class ProbeRow:
    task: str
    items: int
    chance: float
    scores: dict[str, float]  # source (and "unified") -> balanced accuracy

    @property
    def best_single(self) -> tuple[str, float]:
        singles = {s: v for s, v in self.scores.items() if not s.startswith("unified")}
        best = max(singles, key=lambda s: singles[s])
        return best, singles[best]

    @property
    def unified_holds(self) -> bool:
        """Paper 1's claim on this task: unified at least as good as the best single source
        (within 0.01, the scale of the split's noise)."""
        return self.scores["unified"] >= self.best_single[1] - 0.01


def _task_rows(task: Task, items: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    position = {item: i for i, item in enumerate(items)}
    chosen = [item for item in items if item in task.labels]
    rows = np.array([position[item] for item in chosen], dtype=np.int64)
    return rows, np.array([task.labels[item] for item in chosen])


def probe_tasks(
    tasks: Sequence[Task],
    items: Sequence[str],
    sources_for: Callable[[Task], Mapping[str, np.ndarray]],
    seed: int = 0,
) -> tuple[list[ProbeRow], dict[str, float]]:
    """Probe every single source and the unified vector on every task.

    Paper 1's unified vector is *one* embedding for all tasks, its weights chosen by
    downstream results: here the candidate (see :func:`weight_candidates`) with the best mean
    validation score over all tasks, then scored on each task's test split. ``sources_for``
    gives a task's per-source item vectors (rows = ``items``).
    """
    problems = []
    for task in tasks:
        rows, labels = _task_rows(task, items)
        problems.append((task, {name: m[rows] for name, m in sources_for(task).items()}, labels))
    if not problems:
        return [], {}
    candidates = weight_candidates(list(problems[0][1]))
    means = [np.mean([validation_score(s, y, w, seed) for _, s, y in problems]) for w in candidates]
    weights = candidates[int(np.argmax(means))]
    result = []
    for task, sources, labels in problems:
        scores = {name: probe_score(matrix, labels, seed) for name, matrix in sources.items()}
        scores["unified, equal weights"] = probe_score(unified(sources), labels, seed)
        scores["unified"] = probe_score(unified(sources, weights), labels, seed)
        result.append(ProbeRow(task.name, len(labels), 1.0 / len(np.unique(labels)), scores))
    return result, weights
