"""Prequential (test-then-train) next-item scoring: each example is ranked by the model as it
was *before* learning from it, so the score never peeks at the future.

One ranking rule for the live learner, pre-training's evaluation and ``onevec eval``
(:func:`count_above`): an item ranks above the target when it scores higher, or scores the
same and has a higher :func:`tie_priority`, a fixed pseudo-random number derived from its id.
So a model that scores many items alike (a count model's zeros, items with equal vectors) gets
no free ranks, and every process ranks the same scores the same way.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from onevec.models.online.trainer import OnlineTrainer
    from onevec.models.online.vocab import Vocabulary

__all__ = [
    "TOP_K",
    "PrequentialScore",
    "count_above",
    "prequential_popularity",
    "target_ranks",
    "tie_priority",
]

TOP_K = 20


@dataclass
class PrequentialScore:
    """Running HR@k and MRR@k."""

    scored: int = 0
    hits: int = 0
    reciprocal_rank: float = 0.0

    def add(self, rank: int | None) -> None:
        """Record one scored example; ``rank`` is 1-based, None when outside the top k."""
        self.scored += 1
        if rank is not None:
            self.hits += 1
            self.reciprocal_rank += 1.0 / rank

    @property
    def hr(self) -> float:
        return self.hits / self.scored if self.scored else 0.0

    @property
    def mrr(self) -> float:
        return self.reciprocal_rank / self.scored if self.scored else 0.0


def prequential_popularity(
    examples: Iterable[tuple[list[str], str]], k: int = TOP_K, score_from: int = 0
) -> PrequentialScore:
    """The most-clicked items so far (excluding the session's own items) as the baseline,
    scored on the same examples and protocol as the live model: (prefix, next item) pairs in
    stream order, first events of a session (empty prefix) not scored, nor the examples
    before ``score_from`` (they only count clicks: a held-out tail)."""
    counts: Counter[str] = Counter()
    score = PrequentialScore()
    for position, (prefix, target) in enumerate(examples):
        if prefix and position >= score_from:
            seen = set(prefix)
            top = [item for item, _ in counts.most_common(k + len(seen)) if item not in seen][:k]
            score.add(top.index(target) + 1 if target in top else None)
        counts[target] += 1
    return score


def tie_priority(items: Sequence[str]) -> np.ndarray:
    """A fixed pseudo-random uint64 per item id, the same in every process and after restarts
    (pandas' keyed SipHash of the id's UTF-8 bytes): the order in which tied items rank."""
    return pd.util.hash_array(np.asarray(items, dtype=object), categorize=False)


TIE_TOLERANCE = 1e-6  # relative: float32 rounding of a dot product is a few ulp of its terms


def count_above(
    block: np.ndarray,
    target_scores: np.ndarray,
    target_priority: np.ndarray,
    priority_of: Callable[[np.ndarray], np.ndarray],
    skip: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """Per row of ``block`` (one row per example, one column per candidate item), how many
    candidates rank above the example's target: those scoring higher than ``target_scores``,
    and those scoring the same (within :data:`TIE_TOLERANCE`) whose priority is higher than
    ``target_priority``. The (row, column) pairs of ``skip`` never count: the target's own
    column and the session's own items. ``priority_of(columns)`` gives the tie priorities of
    candidate columns; only the tied ones are asked for while ties are few (a priority is a
    hash of an item id, which the live learner looks up per row)."""
    threshold = target_scores[:, None]
    # Equal vectors must tie however a product rounds them: BLAS kernels round a column by its
    # position (AVX-512 tails), which split ties of equal vectors by a few ulp. Scores within
    # TIE_TOLERANCE of the target's, relative to it, are ties, broken by priority as exact ones
    # are (relative only: a baseline's small exact scores, e.g. decayed counts, stay apart).
    tolerance = TIE_TOLERANCE * np.abs(threshold)
    # Two comparisons against per-row bounds: no block-sized difference on this hot path.
    higher = block > threshold + tolerance
    tied = (block >= threshold - tolerance) & ~higher
    higher[skip] = False
    tied[skip] = False
    above = np.count_nonzero(higher, axis=1)
    ties = np.count_nonzero(tied)
    if not ties:
        return above
    if ties > tied.shape[1]:  # many items scored alike: compare whole rows
        wins = tied & (priority_of(np.arange(tied.shape[1])) > target_priority[:, None])
        return above + np.count_nonzero(wins, axis=1)
    rows, columns = np.nonzero(tied)
    unique, inverse = np.unique(columns, return_inverse=True)
    wins = priority_of(unique)[inverse] > target_priority[rows]
    return above + np.bincount(rows[wins], minlength=len(block))


def target_ranks(
    trainer: OnlineTrainer,
    prefixes: Sequence[Sequence[str]],
    targets: Sequence[str],
    k: int = TOP_K,
    chunk_items: int = 65_536,
    sessions: np.ndarray | None = None,
    matrix: np.ndarray | None = None,
    exclude: tuple[np.ndarray, np.ndarray] | None = None,
    boost: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> list[int | None]:
    """Rank (1-based, None beyond ``k``) of each target among all known items, scored by the
    inner product with its session vector, the prefix's own items excluded, ties broken by
    :func:`count_above`'s rule. One matrix product per ``chunk_items`` items for the whole
    batch instead of one ranking per example; the chunks bound the score matrix (batch x 1M
    items would be a GB per step).

    ``sessions`` (one row per prefix) and ``matrix`` (the item vectors, in vocabulary row
    order) default to the trainer's current ones; the learner passes the ones its training
    step computed *before* updating, so the model is scored as it was before it learned. Items
    beyond ``matrix``'s rows (added by that step) count as unseen. ``exclude`` gives each
    prefix's item rows when the caller has them already (the step mapped them), instead of
    looking every prefix item up again: (prefix position, item row) pairs. ``boost`` adds to
    the scores of some items for some prefixes, (prefix position, item row, amount) triples,
    each pair at most once:
    the repeat gate's term on a user's own items (:mod:`onevec.models.online.repeat_gate`)."""
    if not prefixes:
        return []
    vocab = trainer.item_encoder.item_vocab  # rows of the item matrix
    if matrix is None:
        matrix = trainer.item_encoder.item_matrix().numpy() if len(vocab) else np.zeros((0, 1))
    known = len(matrix)
    if not known:  # a model that has seen nothing ranks nothing
        return [None] * len(targets)
    columns = [
        column if (column := vocab.get(target)) is not None and column < known else None for target in targets
    ]
    scored = [i for i, column in enumerate(columns) if column is not None]  # unseen: a miss
    ranks: list[int | None] = [None] * len(targets)
    if not scored:
        return ranks
    if sessions is None:
        # All rows, like the unchunked product: the same shapes give the same rounding.
        sessions = trainer.encode_sessions(prefixes)
    rows = np.array(scored, dtype=np.int64)
    own = np.array([columns[i] for i in scored], dtype=np.int64)
    starts = range(0, len(matrix), chunk_items)
    position = np.full(len(prefixes), -1, dtype=np.int64)  # prefix -> its row among the scored
    position[rows] = np.arange(len(scored))
    if boost is not None:
        boosted = (position[boost[0]] >= 0) & (boost[1] < known)
        boost = (position[boost[0][boosted]], boost[1][boosted], boost[2][boosted])

    def scores_of(start: int) -> np.ndarray:
        """The scored prefixes' scores of the chunk of items from ``start``."""
        # All rows, then the scored ones, like the unchunked product: the same shapes give the
        # same rounding.
        block = sessions @ matrix[start : start + chunk_items].T
        if len(rows) != len(block):
            block = block[rows]
        if boost is not None:
            inside = (boost[1] >= start) & (boost[1] < start + block.shape[1])
            # Fancy-index addition (not np.add.at, ~10x slower): each (prefix, item) pair occurs once.
            block[boost[0][inside], boost[1][inside] - start] += boost[2][inside]
        return block

    # The target's score must come from the very product its rivals' scores come from (same
    # rounding), or an item tied with it (same attributes, no clicks) would not count as tied.
    target_scores = np.empty(len(scored), dtype=matrix.dtype)
    kept: dict[int, np.ndarray] = {}  # with a single chunk, its product is reused below
    for start in starts:
        inside = (own >= start) & (own < start + chunk_items)
        if inside.any():
            block = scores_of(start)
            target_scores[inside] = block[np.flatnonzero(inside), own[inside] - start]
            if len(starts) == 1:
                kept[start] = block
    # Never counted as ranking above the target: the target itself and the prefix's items.
    # They are cleared in the "above the target" masks; the score block is not copied.
    if exclude is None:
        excluded = [
            np.array([row for row in map(vocab.get, prefixes[i]) if row is not None], dtype=np.int64)
            for i in scored
        ]
        which = np.repeat(rows, [len(rows_of) for rows_of in excluded])
        excluded_rows = np.concatenate([np.zeros(0, dtype=np.int64), *excluded])
    else:
        which, excluded_rows = (np.asarray(a, dtype=np.int64) for a in exclude)
    mine = (position[which] >= 0) & (excluded_rows < known)  # items the step added are not ranked
    skip_row = np.concatenate([np.arange(len(scored)), position[which[mine]]])
    skip_column = np.concatenate([own, excluded_rows[mine]])
    target_priority = tie_priority([vocab.key(column) for column in own.tolist()])
    above = np.zeros(len(scored), dtype=np.int64)
    for start in starts:
        # With several chunks, rounding may still split a tie of equal vectors differently.
        full = kept.pop(start, None)
        block = scores_of(start) if full is None else full
        inside = (skip_column >= start) & (skip_column < start + block.shape[1])
        skip = (skip_row[inside], skip_column[inside] - start)
        above += count_above(block, target_scores, target_priority, _row_priority(vocab, start), skip)
    for row, i in enumerate(scored):
        rank = int(above[row]) + 1
        ranks[i] = rank if rank <= k else None
    return ranks


def _row_priority(vocab: Vocabulary, start: int) -> Callable[[np.ndarray], np.ndarray]:
    """Tie priorities of the item rows ``start + columns``."""
    return lambda columns: tie_priority([vocab.key(start + column) for column in columns.tolist()])
