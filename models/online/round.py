"""A learning round: the learner's test-then-train over the examples it took at once.

Every step first *scores* its examples (prequential: the model ranks each example's next item
as it was *before* learning it) and then trains on them, so the running HR@k / MRR@k never
peeks at the future. With the trainer's repeat gate, the ranking is the gated one (the session
encoder's score plus the gate's term on the user's own earlier items, read from the user
history as it was before the step); after the step the gate learns from how the step was
ranked, and only then does the history take in the step's clicks.

The worker's learner runs rounds on its own thread and turns the outcome into metrics, drift
observations and Qdrant points; this module holds only the computation.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from onevec.models.clickstream.examples import ExampleRecord
from onevec.models.online.repeat_gate import HistoryFeatures
from onevec.models.online.trainer import LearnedStep, OnlineTrainer
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
    # Scored examples per step the repeat gate learns from (a sample when more were scored):
    # its softmax reads every known item's score, and four weights need few examples.
    gate_examples: int = 64


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
        history = self._history_features([fresh[i] for i in scored]) if matrix is not None else None
        step = self.trainer.learn_with_sessions(list(examples))
        prefixes = [fresh[i]["prefix"] for i in scored]
        exclude = self.trainer.prefix_pairs(step, scored, prefixes)
        boost = None
        if history is not None and self.trainer.repeat_gate is not None:
            gate = self.trainer.repeat_gate
            # scale * s + bonus ranks as s + bonus / scale does (scale > 0).
            boost = (history.rows, history.columns, gate.bonus(history) / gate.scale)
        ranks = target_ranks(
            self.trainer,
            prefixes,
            [fresh[i]["item_id"] for i in scored],
            sessions=step.sessions[scored],
            matrix=matrix,
            exclude=exclude,
            boost=boost,
        )
        if history is not None and matrix is not None:
            self._learn_gate(step, scored, [fresh[i]["item_id"] for i in scored], matrix, history, exclude)
        self.trainer.user_history.observe_records(fresh)
        for rank in ranks:
            self.score.add(rank)
        return StepOutcome(loss=step.loss, examples=len(examples), hits=[rank is not None for rank in ranks])

    def _history_features(self, records: Sequence[ExampleRecord]) -> HistoryFeatures | None:
        """The gate's features of the scored records' users' own items, from the history as
        it is before the step (so never a click of the step itself, nor a later one)."""
        if self.trainer.repeat_gate is None:
            return None
        history = self.trainer.user_history
        recalled = [history.recall_arrays(str(r["user_id"]), str(r["session_id"])) for r in records]
        return HistoryFeatures.of(recalled, self.trainer.item_encoder.item_vocab.get)

    def _learn_gate(
        self,
        step: LearnedStep,
        scored: list[int],
        targets: list[str],
        matrix: np.ndarray,
        history: HistoryFeatures,
        exclude: tuple[np.ndarray, np.ndarray],
    ) -> None:
        """One gate step on the session scores the step was ranked with (items the step added
        are not candidates), on at most ``gate_examples`` of the scored examples."""
        assert self.trainer.repeat_gate is not None
        known = len(matrix)
        chosen = np.arange(len(scored))
        if len(chosen) > self.config.gate_examples:
            sample = self._rng.sample(range(len(scored)), self.config.gate_examples)
            chosen = np.sort(np.asarray(sample, dtype=np.int64))
        vocab = self.trainer.item_encoder.item_vocab
        columns = [vocab.get(targets[i]) for i in chosen.tolist()]
        target_columns = np.array([-1 if c is None or c >= known else c for c in columns], dtype=np.int64)
        which = np.full(len(scored), -1, dtype=np.int64)
        which[chosen] = np.arange(len(chosen))
        mine = which[history.rows] >= 0
        features = HistoryFeatures(which[history.rows[mine]], history.columns[mine], history.values[mine])
        own = (which[exclude[0]] >= 0) & (exclude[1] < known)
        excluded = (which[exclude[0][own]], exclude[1][own])
        sessions = step.sessions[np.asarray(scored, dtype=np.int64)[chosen]]
        self.trainer.repeat_gate.learn(sessions @ matrix.T, target_columns, features, excluded)
