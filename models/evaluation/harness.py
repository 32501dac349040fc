"""Prequential (test-then-train) next-item evaluation of several recommenders on one stream.

The stream is the list of example records the session window emits (``session_examples``),
in stream order. Its first part is history: every recommender fits it in its own way
(:meth:`Recommender.fit_history`) and nothing there is scored. The rest is walked in
micro-batches; for each batch every recommender first *ranks* the next item of each example
from a :class:`Query` that carries no target (so it cannot peek), and only then *learns*
the batch. A :class:`PrequentialLedger` checks that order and raises :class:`PeekingError`
if an example would be learned before it was scored.

One protocol for all: the candidates are the items seen in the stream so far (history
included), the session's own previous items are excluded, a target never seen before is a
miss, and ties are broken by the live learner's rule (:func:`onevec.models.ranking.count_above`:
a fixed pseudo-random priority per item id, so a count-based baseline that scores most items
0 does not get the target's rank for free).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from onevec.models.clickstream.examples import ExampleRecord
from onevec.models.ranking import TOP_K, count_above, tie_priority

__all__ = [
    "PeekingError",
    "PrequentialLedger",
    "PrequentialResult",
    "Query",
    "Recommender",
    "rank_targets",
    "run_prequential",
    "window_edges",
]


@dataclass(frozen=True, slots=True)
class Query:
    """What a recommender may see when it ranks: the example without its next item."""

    session_id: str
    user_id: str
    prefix: tuple[str, ...]
    timestamp: float


class Recommender(Protocol):
    """A next-item model under prequential evaluation."""

    name: str

    def fit_history(self, records: list[ExampleRecord]) -> None:
        """Learn the history (pre-training period) before scoring starts."""

    def score(self, queries: Sequence[Query], candidates: Sequence[str]) -> np.ndarray:
        """(len(queries), len(candidates)) scores; higher ranks first."""

    def learn(self, records: list[ExampleRecord]) -> None:
        """Learn one micro-batch of example records (already scored)."""


class PeekingError(RuntimeError):
    """An example would be learned before it was scored (or scored after it was learned)."""


class PrequentialLedger:
    """Positions scored and learned, checked on every call: test strictly before train."""

    def __init__(self) -> None:
        self.scored: set[int] = set()
        self.learned: set[int] = set()

    def score(self, positions: Sequence[int]) -> None:
        late = self.learned.intersection(positions)
        if late:
            raise PeekingError(f"scoring example(s) already learned: {sorted(late)[:5]}")
        self.scored.update(positions)

    def learn(self, positions: Sequence[int], scorable: Sequence[int]) -> None:
        """``scorable`` are the positions among ``positions`` that must have been scored."""
        unscored = set(scorable) - self.scored
        if unscored:
            raise PeekingError(f"learning example(s) never scored: {sorted(unscored)[:5]}")
        self.learned.update(positions)


@dataclass
class PrequentialResult:
    """Per scored example: its timestamp and, per recommender, its 1-based rank (0 = miss)."""

    k: int
    timestamps: np.ndarray
    ranks: dict[str, np.ndarray]
    history_examples: int
    stream_examples: int

    def hr(self, name: str, mask: np.ndarray | None = None) -> float:
        ranks = self.ranks[name] if mask is None else self.ranks[name][mask]
        return float((ranks > 0).mean()) if ranks.size else 0.0

    def mrr(self, name: str, mask: np.ndarray | None = None) -> float:
        ranks = self.ranks[name] if mask is None else self.ranks[name][mask]
        return float(np.where(ranks > 0, 1.0 / np.maximum(ranks, 1), 0.0).mean()) if ranks.size else 0.0

    def window_edges(self, windows: int) -> np.ndarray:
        return window_edges(self.timestamps, windows)

    def by_window(self, windows: int) -> list[dict[str, Any]]:
        """Per window of time: start, end, examples, and HR/MRR of each recommender."""
        edges = self.window_edges(windows)
        which = np.clip(np.searchsorted(edges, self.timestamps, side="right") - 1, 0, windows - 1)
        rows = []
        for w in range(windows):
            mask = which == w
            row: dict[str, Any] = {"start": edges[w], "end": edges[w + 1], "examples": int(mask.sum())}
            for name in self.ranks:
                row[name] = (self.hr(name, mask), self.mrr(name, mask))
            rows.append(row)
        return rows


def window_edges(timestamps: np.ndarray, windows: int) -> np.ndarray:
    """``windows + 1`` edges splitting the span of ``timestamps`` into equal spans of time."""
    return np.linspace(timestamps.min(), timestamps.max(), windows + 1)


def is_scorable(record: ExampleRecord) -> bool:
    """Scored like the live learner: a non-empty prefix, not a redelivered duplicate."""
    return bool(record.get("prefix")) and not record.get("duplicate", False)


def query_of(record: ExampleRecord) -> Query:
    return Query(
        session_id=str(record["session_id"]),
        user_id=str(record["user_id"]),
        prefix=tuple(str(item) for item in record["prefix"]),
        timestamp=float(record["timestamp"]),
    )


class _Candidates:
    """Items seen so far, in first-seen order, each with its tie priority."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.column: dict[str, int] = {}
        self.priority = np.zeros(0, dtype=np.uint64)

    def add(self, items: Sequence[str]) -> None:
        new = [item for item in dict.fromkeys(items) if item not in self.column]
        for item in new:
            self.column[item] = len(self.ids)
            self.ids.append(item)
        if new:
            self.priority = np.concatenate([self.priority, tie_priority(new)])


def rank_targets(
    scores: np.ndarray,
    queries: Sequence[Query],
    targets: Sequence[str],
    column: dict[str, int],
    priority: np.ndarray,
    k: int = TOP_K,
) -> np.ndarray:
    """1-based ranks of ``targets`` (0 when beyond ``k`` or never seen), prefix items excluded,
    ties broken by ``priority`` (higher first), as :func:`onevec.models.ranking.count_above`."""
    ranks = np.zeros(len(targets), dtype=np.int64)
    chosen = [row for row, target in enumerate(targets) if target in column]
    if not chosen:
        return ranks
    block = np.asarray(scores)[chosen]
    skipped = [  # the target itself and the session's own items
        (position, column[item])
        for position, row in enumerate(chosen)
        for item in (targets[row], *queries[row].prefix)
        if item in column
    ]
    skip_row, skip_column = np.array(skipped, dtype=np.int64).T
    own = np.array([column[targets[row]] for row in chosen], dtype=np.int64)
    target_scores = block[np.arange(len(chosen)), own]
    above = count_above(block, target_scores, priority[own], priority.__getitem__, (skip_row, skip_column))
    rank = above + 1
    ranks[chosen] = np.where(rank <= k, rank, 0)
    return ranks


def run_prequential(
    recommenders: Sequence[Recommender],
    records: list[ExampleRecord],
    history: int,
    batch_size: int = 256,
    k: int = TOP_K,
    on_batch: Callable[[int, list[ExampleRecord]], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> PrequentialResult:
    """Fit ``records[:history]``, then score-then-learn ``records[history:]`` batch by batch.

    ``on_batch(position, batch)`` runs after each batch was learned by every recommender (a
    hook for snapshots); ``on_progress(n)`` after each batch with its size.
    """
    names = [r.name for r in recommenders]
    if len(set(names)) != len(names):
        raise ValueError(f"recommender names must be unique: {names}")
    candidates = _Candidates()
    head = records[:history]
    for recommender in recommenders:
        recommender.fit_history(head)
    candidates.add([r["item_id"] for r in head if not r.get("duplicate")])

    ledger = PrequentialLedger()
    timestamps: list[float] = []
    ranks: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for start in range(history, len(records), batch_size):
        batch = records[start : start + batch_size]
        positions = list(range(start, start + len(batch)))
        scorable = [p for p, r in zip(positions, batch, strict=True) if is_scorable(r)]
        chosen = [records[p] for p in scorable]
        queries = [query_of(r) for r in chosen]
        targets = [str(r["item_id"]) for r in chosen]
        ledger.score(scorable)
        if queries:
            for recommender in recommenders:
                scores = recommender.score(queries, candidates.ids)
                ranks[recommender.name].append(
                    rank_targets(scores, queries, targets, candidates.column, candidates.priority, k)
                )
            timestamps.extend(q.timestamp for q in queries)
        ledger.learn(positions, scorable)
        for recommender in recommenders:
            recommender.learn(batch)
        candidates.add([r["item_id"] for r in batch if not r.get("duplicate")])
        if on_batch is not None:
            on_batch(start, batch)
        if on_progress is not None:
            on_progress(len(batch))
    return PrequentialResult(
        k=k,
        timestamps=np.asarray(timestamps, dtype=np.float64),
        ranks={n: np.concatenate(r) if r else np.zeros(0, dtype=np.int64) for n, r in ranks.items()},
        history_examples=len(head),
        stream_examples=len(records) - len(head),
    )
