"""Prequential (test-then-train) next-item scoring: each example is ranked by the model as it
was *before* learning from it, so the score never peeks at the future."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from models.trainer import OnlineTrainer

__all__ = ["TOP_K", "PrequentialScore", "prequential_popularity", "target_ranks"]

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


def target_ranks(
    trainer: OnlineTrainer, prefixes: Sequence[Sequence[str]], targets: Sequence[str], k: int = TOP_K
) -> list[int | None]:
    """Rank (1-based, None beyond ``k``) of each target among all known items, scored by the
    inner product with its session vector, the prefix's own items excluded. One matrix
    product for the whole batch instead of one ranking per example."""
    if not prefixes:
        return []
    ids = trainer.item_encoder.item_ids()
    if not ids:  # a model that has seen nothing ranks nothing
        return [None] * len(targets)
    index = {item: row for row, item in enumerate(ids)}
    scores = trainer.encode_sessions(prefixes) @ trainer.item_encoder.item_matrix().numpy().T
    ranks: list[int | None] = []
    for row, (prefix, target) in enumerate(zip(prefixes, targets, strict=True)):
        column = index.get(target)
        if column is None:  # an item never seen before cannot be ranked: a miss
            ranks.append(None)
            continue
        scores[row, [index[item] for item in prefix if item in index and item != target]] = -np.inf
        rank = int((scores[row] > scores[row, column]).sum()) + 1
        ranks.append(rank if rank <= k else None)
    return ranks
