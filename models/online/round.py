"""A learning round: the learner's test-then-train over the examples it took at once.

Every step first *scores* its examples (prequential: the model ranks each example's next item
among every item it knew, as it was *before* learning the example) and then trains on them, so
the running HR@k / MRR@k never peeks at the future. With the trainer's repeat gate, the ranking
is the gated one (the session encoder's score plus the gate's term on the user's own earlier
items, read from the user history as it was before the step); the gate learns from how the
examples were ranked, and the history takes in the step's clicks after the step.

Cost and sampling. Ranking an example reads every known item; a step ranks at most
``item_budget`` item rows. A catalogue up to that size is ranked whole in each step, every
example of every step scored. A larger one is ranked by a ranking pass
(:class:`~onevec.models.online.prequential.RankingPass`) that spans the next steps,
``item_budget`` rows a step, over a snapshot of the model taken before its own step (so every
rank is still the model's before it learned the example). While a pass runs no other step is
scored, and a pass ranks at most ``pass_examples`` of its step's examples (drawn with the
round's seeded generator). Above the budget the score is therefore measured on a
deterministic sample, about ``pass_examples`` examples per ``known / item_budget + 1`` steps,
each an exact rank, so HR@k / MRR@k keep their meaning. A pass's ranks and hits arrive in the step
in which it completes. A pass reads on a thread of its own beside the training
(``background_ranking``), from the moment its step has worked out the session vectors: the
snapshot keeps what it reads as it was, whichever thread gets there first, so the ranks are
those read inline.

The worker's learner runs rounds on its own thread and turns the outcome into metrics, drift
observations and Qdrant points; this module holds only the computation.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from onevec.models.clickstream.examples import ExampleRecord
from onevec.models.online.prequential import RankingPass, TiePriorities
from onevec.models.online.repeat_gate import GateSoftmax, HistoryFeatures
from onevec.models.online.snapshot import ItemSnapshot
from onevec.models.online.trainer import LearnedStep, OnlineTrainer
from onevec.models.ranking import PrequentialScore

__all__ = ["LearningRound", "RoundConfig", "StepOutcome", "step_bounds", "steps_for"]

log = logging.getLogger(__name__)


def steps_for(examples: int, batch_size: int) -> int:
    """How many equal steps a round of ``examples`` takes: as many as full batches would make,
    at least one (see :meth:`LearningRound.learn`)."""
    return max(1, round(examples / batch_size))


def step_bounds(examples: int, steps: int) -> list[int]:
    """Where ``steps`` equal steps over ``examples`` start and end (``steps + 1`` bounds)."""
    return np.linspace(0, examples, steps + 1).round().astype(int).tolist()


@dataclass(frozen=True, slots=True)
class RoundConfig:
    batch_size: int = 256  # examples per step (a round is cut into equal steps of about this)
    sample_rate: float = 1.0  # share of examples scored
    # Item rows a step ranks its scored examples against, at most: a catalogue up to this size
    # is ranked whole in every step; a larger one over the following steps (see the module).
    item_budget: int = 50_000
    # Examples a step ranked over several steps scores at most (a seeded sample of its own).
    # An exact rank reads every item (~10 ms per example at 1M items on one core); 32 examples
    # x 50,000 rows a step is less work than a whole step of 256 examples at 10,000 items.
    pass_examples: int = 32
    seed: int = 0  # which examples and steps scoring samples
    # Scored examples per step the repeat gate learns from (a sample when more were scored):
    # its softmax reads every known item's score, and four weights need few examples.
    gate_examples: int = 64
    # A ranking reads its items on a thread of its own while its step trains (torch and numpy
    # release the GIL): on two cores a round then costs about its training, not its training
    # plus the rows read (up to item_budget). Off: the same ranks, read inline.
    background_ranking: bool = True


@dataclass(frozen=True, slots=True)
class StepOutcome:
    loss: float
    examples: int  # records of the step, duplicates included
    # Per example whose ranking completed in this step (its own, or an earlier step's that was
    # ranked over several): its next item was in the top k before that step.
    hits: list[bool]


@dataclass(slots=True)
class _Pending:
    """A step's scored examples while their ranking runs: ``ranked`` are the positions (among
    ``scored`` of them) whose next item was known, the others are misses."""

    scored: int
    ranked: np.ndarray
    snapshot: ItemSnapshot
    ranking: RankingPass


class LearningRound:
    """Test-then-train steps of one trainer; ``score`` is the running prequential score."""

    def __init__(self, trainer: OnlineTrainer, config: RoundConfig) -> None:
        self.trainer = trainer
        self.config = config
        self.score = PrequentialScore()
        self._rng = random.Random(config.seed)
        self._priorities = TiePriorities(trainer.item_encoder.item_vocab)
        self._pending: _Pending | None = None
        self._ranker: ThreadPoolExecutor | None = None  # the ranking thread, once needed
        self.passes_dropped = 0  # ranking passes that failed: their examples went unscored

    @property
    def sampling(self) -> bool:
        """Whether the score is now taken on a sample of the examples (a sample rate below 1,
        or more known items than the item budget) rather than on every one."""
        known = len(self.trainer.item_encoder.item_vocab)
        return self.config.sample_rate < 1 or known > self.config.item_budget

    def learn(self, examples: Sequence[ExampleRecord]) -> list[StepOutcome]:
        """Score and learn ``examples`` in equal steps.

        A round is whole records (their offsets are what a checkpoint covers), so it is rarely
        a multiple of the batch size. It takes as many equal steps as full batches would make:
        a small remainder step would move the model as far as a full one (the loss is a mean),
        and such extra steps made a stationary replay look like drift."""
        bounds = step_bounds(len(examples), steps_for(len(examples), self.config.batch_size))
        return [self.step(examples[start:end]) for start, end in itertools.pairwise(bounds)]

    def step(self, examples: Sequence[ExampleRecord]) -> StepOutcome:
        """One step: go on with a ranking under way, or score this step's examples with the
        model as it is before the step; then train. The ranking reads beside the training (on
        the ranking thread, when ``background_ranking``), from the moment the step has its
        session vectors."""
        hits: list[bool] = []
        pending = self._pending
        if pending is not None and not pending.snapshot.valid:  # a state was loaded meanwhile
            self._pending = pending = None
        fresh = [e for e in examples if not e.get("duplicate")]  # the rows of the step's vectors
        scored = self._choose(fresh) if pending is None else []
        encoder = self.trainer.item_encoder
        # Taken before the step moves any row; the step's own training pass computes the
        # session vectors before it updates, and the ranking reuses those.
        snapshot = encoder.snapshot() if scored and len(encoder.item_vocab) else None
        history = self._history_features([fresh[i] for i in scored]) if snapshot is not None else None
        reading: list[Future[int]] = []

        def rank(step: LearnedStep) -> None:  # called mid-step, before any row moves
            assert snapshot is not None
            self._pending = self._start(step, fresh, scored, snapshot, history)
            reading.append(self._read(self._pending.ranking))

        if pending is not None:
            reading.append(self._read(pending.ranking))

        def untaken() -> bool:  # no pass took the snapshot: released here, or it would grow
            return self._pending is None or self._pending.snapshot is not snapshot

        try:
            step = self.trainer.learn_with_sessions(list(examples), rank if snapshot is not None else None)
        except BaseException:
            self._wait(reading)
            if snapshot is not None and untaken():
                snapshot.release()  # the step failed before a pass took it
            raise
        if not self._wait(reading):
            scored = []  # its pass was dropped, unscored
        elif snapshot is not None and untaken():
            snapshot.release()  # the trainer had nothing to learn, so nothing to rank with
            self._record([None] * len(scored), hits)
        elif snapshot is None and scored:  # a model that has seen nothing ranks nothing
            self._record([None] * len(scored), hits)
        if self._pending is not None:
            self._finish(hits)
        self.trainer.observe(fresh)
        return StepOutcome(loss=step.loss, examples=len(examples), hits=hits)

    def _read(self, ranking: RankingPass) -> Future[int]:
        """Read the next ``item_budget`` rows of ``ranking``: on the ranking thread, or now."""
        if self.config.background_ranking:
            return self._ranking_thread().submit(ranking.advance, self.config.item_budget)
        done: Future[int] = Future()
        try:
            done.set_result(ranking.advance(self.config.item_budget))
        except Exception as error:  # noqa: BLE001 - handled as the thread's are, in _wait
            done.set_exception(error)
        return done

    def _wait(self, reading: list[Future[int]]) -> bool:
        """Wait for the ranking's reads (it never reads on while the model goes on). A read
        that failed drops its pass, which has counted part of its rows: its examples go
        unscored, with the error logged; learning goes on. False then."""
        failed = [error for error in (future.exception() for future in reading) if error is not None]
        if not failed:
            return True
        log.error("a prequential ranking pass failed, its examples go unscored", exc_info=failed[0])
        self.passes_dropped += 1
        if self._pending is not None:
            self._pending.snapshot.release()
            self._pending = None
        return False

    def _ranking_thread(self) -> ThreadPoolExecutor:
        if self._ranker is None:
            self._ranker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onevec-ranking")
        return self._ranker

    def _choose(self, fresh: Sequence[ExampleRecord]) -> list[int]:
        """The positions of the examples to score (those with a prefix, ``sample_rate`` of
        them); above the item budget at most ``pass_examples``."""
        rate = self.config.sample_rate
        scored = [
            i for i, e in enumerate(fresh) if e.get("prefix") and (rate >= 1 or self._rng.random() < rate)
        ]
        known = len(self.trainer.item_encoder.item_vocab)
        if known > self.config.item_budget and len(scored) > self.config.pass_examples:
            scored = sorted(self._rng.sample(scored, self.config.pass_examples))
        return scored

    def _start(
        self,
        step: LearnedStep,
        fresh: Sequence[ExampleRecord],
        scored: list[int],
        snapshot: ItemSnapshot,
        history: HistoryFeatures | None,
    ) -> _Pending:
        """The ranking of the scored examples against the snapshot's items."""
        vocab, known = self.trainer.item_encoder.item_vocab, snapshot.items
        columns = [vocab.get(fresh[i]["item_id"]) for i in scored]
        # A next item the step itself added (or never seen) is unseen: a miss.
        targets = np.array([-1 if c is None or c >= known else c for c in columns], dtype=np.int64)
        ranked = np.flatnonzero(targets >= 0)
        which = np.full(len(scored), -1, dtype=np.int64)  # position among scored -> among ranked
        which[ranked] = np.arange(len(ranked))
        position, rows = self.trainer.prefix_pairs(step, scored, [fresh[i]["prefix"] for i in scored])
        mine = (which[position] >= 0) & (rows < known)  # items the step added are not ranked
        skip = (which[position[mine]], rows[mine])
        boost, softmax = None, None
        gate = self.trainer.repeat_gate
        if history is not None and gate is not None:
            own = (which[history.rows] >= 0) & (history.columns < known)
            features = HistoryFeatures(which[history.rows[own]], history.columns[own], history.values[own])
            # scale * s + bonus ranks as s + bonus / scale does (scale > 0).
            boost = (features.rows, features.columns, gate.bonus(features) / gate.scale)
            softmax = GateSoftmax(gate, self._gate_targets(targets, ranked), features, skip)
        sessions = step.sessions[np.asarray(scored, dtype=np.int64)[ranked]]
        ranking = RankingPass(snapshot, self._priorities, sessions, targets[ranked], skip, boost, softmax)
        return _Pending(len(scored), ranked, snapshot, ranking)

    def _gate_targets(self, targets: np.ndarray, ranked: np.ndarray) -> np.ndarray:
        """Per ranked example, its next item's row for the ones the gate learns from (at most
        ``gate_examples`` of the scored), -1 for the others."""
        chosen = np.arange(len(targets))
        if len(chosen) > self.config.gate_examples:
            sample = self._rng.sample(range(len(targets)), self.config.gate_examples)
            chosen = np.sort(np.asarray(sample, dtype=np.int64))
        learned = np.full(len(targets), -1, dtype=np.int64)
        learned[chosen] = targets[chosen]
        return learned[ranked]

    def _finish(self, hits: list[bool]) -> None:
        """When the ranking under way has read every item, record its ranks and let the gate
        learn."""
        pending = self._pending
        assert pending is not None
        if pending.ranking.done:
            ranks: list[int | None] = [None] * pending.scored
            for position, rank in zip(pending.ranked.tolist(), pending.ranking.ranks(), strict=True):
                ranks[position] = rank
            gate, softmax = self.trainer.repeat_gate, pending.ranking.gate
            if gate is not None and softmax is not None:
                gate.learn_softmax(softmax)
            pending.snapshot.release()
            self._pending = None
            self._record(ranks, hits)

    def _record(self, ranks: list[int | None], hits: list[bool]) -> None:
        for rank in ranks:
            self.score.add(rank)
            hits.append(rank is not None)

    def _history_features(self, records: Sequence[ExampleRecord]) -> HistoryFeatures | None:
        """The gate's features of the scored records' users' own items, from the history as
        it is before the step (so never a click of the step itself, nor a later one)."""
        if self.trainer.repeat_gate is None:
            return None
        return self.trainer.gate_features(
            [(str(r["user_id"]), str(r["session_id"]), [str(p) for p in r["prefix"]]) for r in records],
            self.trainer.item_encoder.item_vocab,
        )
