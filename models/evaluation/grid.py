"""Paper 3's check that kernel alignment predicts probe accuracy, over embedding variants.

Each variant is a small behaviour-only model (no attribute tokens, so a label cannot be read
off a token) trained on the same examples: the skip-gram item table alone, varied one
hyper-parameter at a time (dimension, window, negatives, epochs), plus the joint
session + skip-gram trainer at two weights ``lambda`` of the skip-gram term. For every
(variant, task) the centred kernel-target alignment of the item vectors
(``onevec.models.kernel_alignment.centred_alignment``) is computed without training anything, and
the linear probe is trained; per task, the Spearman rank correlation across variants says
whether alignment ranks the variants the way the probes do.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from onevec.models.clickstream.examples import ExampleRecord
from onevec.models.evaluation.data import Task
from onevec.models.evaluation.probes import probe_score
from onevec.models.kernel_alignment import centred_alignment
from onevec.models.online.config import ModelConfig
from onevec.models.online.item_encoder import ItemEncoder
from onevec.models.online.trainer import OnlineTrainer
from onevec.models.pretrain import pretrain

__all__ = ["GridResult", "Variant", "default_variants", "run_grid"]


@dataclass(frozen=True)
class Variant:
    name: str
    config: ModelConfig
    epochs: int
    joint: bool = False  # session encoder + lambda * skip-gram, instead of skip-gram alone


def default_variants(quick: bool = False) -> list[Variant]:
    base: dict[str, Any] = {"dim": 32, "window": 5, "negatives": 16, "seed": 0}

    def skipgram(name: str, epochs: int = 2, **change: Any) -> Variant:
        return Variant(name, ModelConfig(**{**base, **change}), epochs)

    variants = [
        skipgram("base (dim 32, window 5, 16 negatives, 2 epochs)"),
        skipgram("dim 8", dim=8),
        skipgram("window 1", window=1),
        skipgram("2 negatives", negatives=2),
        skipgram("1 epoch", epochs=1),
        Variant("session + 1.0 x skip-gram", ModelConfig(**base, item_loss_weight=1.0), 1, joint=True),
    ]
    if not quick:
        variants += [
            skipgram("dim 128", dim=128),
            skipgram("window 20", window=20),
            skipgram("128 negatives", negatives=128),
            skipgram("4 epochs", epochs=4),
            Variant("session only (lambda 0)", ModelConfig(**base, item_loss_weight=0.0), 1, joint=True),
        ]
    return variants


def _train(variant: Variant, records: list[ExampleRecord], batch_size: int = 256) -> ItemEncoder:
    if variant.joint:
        trainer = OnlineTrainer(variant.config)
        pretrain(trainer, records, variant.epochs, batch_size)
        return trainer.item_encoder
    encoder = ItemEncoder(variant.config)
    for _ in range(variant.epochs):
        for start in range(0, len(records), batch_size):
            encoder.learn(records[start : start + batch_size])
    return encoder


@dataclass
class GridResult:
    variants: list[str]
    tasks: list[str]
    alignment: np.ndarray  # (variants, tasks)
    probe: np.ndarray  # (variants, tasks) balanced accuracy

    def spearman(self) -> list[float]:
        """Per task, rank correlation between alignment and probe accuracy across variants."""
        rhos = []
        for t in range(len(self.tasks)):
            rho = spearmanr(self.alignment[:, t], self.probe[:, t]).statistic
            rhos.append(float(rho) if np.isfinite(rho) else 0.0)
        return rhos


def run_grid(
    records: list[ExampleRecord],
    items: Sequence[str],
    tasks: Sequence[Task],
    variants: Sequence[Variant],
    on_variant: Callable[[str], None] | None = None,
) -> GridResult:
    """Train each variant on ``records`` and measure alignment and probe accuracy on ``items``."""
    alignment = np.zeros((len(variants), len(tasks)))
    probe = np.zeros_like(alignment)
    for v, variant in enumerate(variants):
        vectors = _train(variant, records).encode_items(items)
        position = {item: i for i, item in enumerate(items)}
        for t, task in enumerate(tasks):
            chosen = [item for item in items if item in task.labels]
            rows = [position[item] for item in chosen]
            labels = np.array([task.labels[item] for item in chosen])
            alignment[v, t] = centred_alignment(vectors[rows], labels)
            probe[v, t] = probe_score(vectors[rows], labels)
        if on_variant is not None:
            on_variant(variant.name)
    return GridResult([v.name for v in variants], [t.name for t in tasks], alignment, probe)
