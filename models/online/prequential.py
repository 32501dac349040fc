"""Ranking one step's scored examples against every item known before the step, a slice of the
catalogue at a time, so a round never ranks more than a bounded number of items.

A :class:`RankingPass` reads the item vectors from an :class:`~onevec.models.online.snapshot.ItemSnapshot`
taken before the step, so however many rounds it spans, each example is ranked by the model as
it was before it learned the example (prequential). Per slice: one product of the examples'
session vectors with the slice's item vectors (float32, no gradients), the repeat gate's term on
the users' own items, and :func:`onevec.models.ranking.count_above` (the one ranking rule of the
learner and the evaluation: higher scores, then ties by item priority) adds how many of the
slice's items rank above each target. The rank is that count plus one; no sort, no top-k.
Along the way the gate's softmax over the same slices accumulates
(:class:`~onevec.models.online.repeat_gate.GateSoftmax`), so the gate learns from what the
ranking saw without a (examples x catalogue) matrix.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from onevec.models.online.repeat_gate import GateSoftmax
from onevec.models.online.snapshot import ItemSnapshot
from onevec.models.online.vocab import Vocabulary
from onevec.models.ranking import TOP_K, count_above, tie_priority

__all__ = ["RankingPass", "TiePriorities"]

SLICE_ITEMS = 16_384  # items scored at once: bounds the (examples x items) score block


class TiePriorities:
    """:func:`~onevec.models.ranking.tie_priority` of every item row, hashed once per row as
    rows are first asked for (a ranking at a million items asks for the tied ones of every
    slice, and hashing their ids again each time was most of its cost)."""

    def __init__(self, vocab: Vocabulary) -> None:
        self.vocab = vocab
        self._values = np.zeros(1024, dtype=np.uint64)
        self._size = 0

    def of(self, start: int, stop: int) -> Callable[[np.ndarray], np.ndarray]:
        """``count_above``'s ``priority_of`` for the rows ``[start, stop)``: columns -> priorities."""
        if stop > self._size:
            if stop > len(self._values):
                grown = np.zeros(max(stop, 2 * len(self._values)), dtype=np.uint64)
                grown[: self._size] = self._values[: self._size]
                self._values = grown
            self._values[self._size : stop] = tie_priority(self.vocab.slice(self._size, stop))
            self._size = stop
        values = self._values[start:stop]
        return values.__getitem__

    def at(self, rows: np.ndarray) -> np.ndarray:
        self.of(0, int(rows.max(initial=-1)) + 1)
        return self._values[rows]


class RankingPass:
    """The ranks of ``n`` examples (session vectors ``sessions``, next items ``targets``, all
    rows of ``snapshot``) among the snapshot's items, built slice by slice by :meth:`advance`.

    ``skip``: (example, item row) pairs never counted above the target (the session's own
    items); ``boost``: (example, item row, amount) triples added to those scores, each pair at
    most once (the repeat gate's term on the user's own items, divided by the gate's scale);
    ``gate``: the gate's softmax (one query per example) to accumulate over the same slices,
    or None."""

    def __init__(
        self,
        snapshot: ItemSnapshot,
        priorities: TiePriorities,
        sessions: np.ndarray,
        targets: np.ndarray,
        skip: tuple[np.ndarray, np.ndarray],
        boost: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
        gate: GateSoftmax | None = None,
        k: int = TOP_K,
    ) -> None:
        self.snapshot = snapshot
        self.priorities = priorities
        self.k = k
        self.sessions = torch.from_numpy(np.ascontiguousarray(sessions, dtype=np.float32))
        self.targets = np.asarray(targets, dtype=np.int64)
        self.token_scores = snapshot.token_scores(self.sessions)
        rows = np.arange(len(self.targets))
        # Never counted as ranking above the target: the target itself, the session's items.
        self.skip = (np.concatenate([rows, skip[0]]), np.concatenate([self.targets, skip[1]]))
        empty = np.zeros(0, dtype=np.int64)
        self.boost = boost if boost is not None else (empty, empty, np.zeros(0))
        # The targets' scores, computed the way every slice's are (ties are exact for items
        # with a zero id vector, see snapshot), plus their own boost.
        own = snapshot.scores_at(self.sessions, self.token_scores, torch.from_numpy(self.targets))
        self.target_scores = own.numpy()[rows, rows].copy()
        mine = self.boost[1] == self.targets[self.boost[0]]  # the target is one of the user's
        self.target_scores[self.boost[0][mine]] += self.boost[2][mine]
        self.target_priority = priorities.at(self.targets)
        self.above = np.zeros(len(self.targets), dtype=np.int64)
        self.gate = gate
        self.cursor = 0

    @property
    def done(self) -> bool:
        return self.cursor >= self.snapshot.items

    def advance(self, items: int) -> int:
        """Rank against the next ``items`` item rows at most; returns how many were read."""
        stop = min(self.snapshot.items, self.cursor + max(0, items))
        read = stop - self.cursor
        for start in range(self.cursor, stop, SLICE_ITEMS):
            self._rank_slice(start, min(stop, start + SLICE_ITEMS))
        self.cursor = self.snapshot.start = stop
        return read

    def ranks(self) -> list[int | None]:
        """1-based rank of each target, None beyond ``k`` (once :attr:`done`)."""
        rank = self.above + 1
        return [int(r) if r <= self.k else None for r in rank]

    def _rank_slice(self, start: int, stop: int) -> None:
        scores = self.snapshot.scores(self.sessions, self.token_scores, start, stop).numpy()
        if self.gate is not None:
            self.gate.add(start, scores)
        rows, columns, amounts = self.boost
        boosted = (columns >= start) & (columns < stop)
        # Fancy-index addition (each pair occurs once), not np.add.at: ~10x slower.
        scores[rows[boosted], columns[boosted] - start] += amounts[boosted]
        inside = (self.skip[1] >= start) & (self.skip[1] < stop)
        skip = (self.skip[0][inside], self.skip[1][inside] - start)
        self.above += count_above(
            scores, self.target_scores, self.target_priority, self.priorities.of(start, stop), skip
        )
