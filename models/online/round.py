"""A learning round: the learner's test-then-train over the examples it took at once.

Every step first *scores* its examples (prequential: the model ranks each example's next item
as it was *before* learning it) and then trains on them, so the running HR@k / MRR@k never
peeks at the future. The worker's learner runs rounds on its own thread and turns the outcome
into metrics, drift observations and Qdrant points; this module holds only the computation.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from onevec.models.clickstream.examples import ExampleRecord
from onevec.models.online.trainer import OnlineTrainer
from onevec.models.ranking import PrequentialScore, target_ranks

__all__ = ["LearningRound", "RoundConfig", "StepOutcome"]


@dataclass(frozen=True, slots=True)
class RoundConfig:
    batch_size: int = 256  # examples per step (a round is cut into equal steps of about this)
    sample_rate: float = 1.0  # share of examples scored
    # Catalogue size up to which every step is scored; above it a whole step is scored with
    # probability budget / known items (every example alike, so HR/MRR stay unbiased): a
    # step's ranking and item matrix grow with the catalogue.
    item_budget: int = 50_000
    seed: int = 0  # which examples and steps scoring samples


@dataclass(frozen=True, slots=True)
class StepOutcome:
    loss: float
    examples: int  # records of the step, duplicates included
    hits: list[bool]  # per scored example: its next item was in the top k before the step


class LearningRound:
    """Test-then-train steps of one trainer; ``score`` is the running prequential score."""

    def __init__(self, trainer: OnlineTrainer, config: RoundConfig) -> None:
        self.trainer = trainer
        self.config = config
        self.score = PrequentialScore()
        self._rng = random.Random(config.seed)

    def learn(self, examples: Sequence[ExampleRecord]) -> list[StepOutcome]:
        """Score and learn ``examples`` in equal steps.

        A round is whole records (their offsets are what a checkpoint covers), so it is rarely
        a multiple of the batch size. It takes as many equal steps as full batches would make:
        a small remainder step would move the model as far as a full one (the loss is a mean),
        and such extra steps made a stationary replay look like drift."""
        steps = max(1, round(len(examples) / self.config.batch_size))
        bounds = np.linspace(0, len(examples), steps + 1).round().astype(int).tolist()
        return [self.step(examples[start:end]) for start, end in itertools.pairwise(bounds)]

    def step(self, examples: Sequence[ExampleRecord]) -> StepOutcome:
        """One step: score with the model as it was before it, then train."""
        # The training forward pass computes every prefix's session vector with the model as
        # it was before the step: scoring reuses those and the item vectors taken before it.
        fresh = [e for e in examples if not e.get("duplicate")]  # the rows of those vectors
        known_before = len(self.trainer.item_encoder.item_vocab)
        rate, budget = self.config.sample_rate, self.config.item_budget
        # Whole steps are sampled above the budget: an unscored step needs no item matrix.
        scored: list[int] = []
        if known_before <= budget or self._rng.random() < budget / known_before:
            scored = [
                i for i, e in enumerate(fresh) if e.get("prefix") and (rate >= 1 or self._rng.random() < rate)
            ]
        matrix = self.trainer.item_encoder.item_matrix().numpy() if scored and known_before else None
        step = self.trainer.learn_with_sessions(list(examples))
        prefixes = [fresh[i]["prefix"] for i in scored]
        ranks = target_ranks(
            self.trainer,
            prefixes,
            [fresh[i]["item_id"] for i in scored],
            sessions=step.sessions[scored],
            matrix=matrix,
            exclude=self.trainer.prefix_pairs(step, scored, prefixes),
        )
        for rank in ranks:
            self.score.add(rank)
        return StepOutcome(loss=step.loss, examples=len(examples), hits=[rank is not None for rank in ranks])
