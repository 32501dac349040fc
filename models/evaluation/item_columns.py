"""What the count and neighbour baselines share: the records they learn, their own item columns
mapped onto the harness's candidates, and all-time popularity as a tie-break."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np

from onevec.models.clickstream.examples import ExampleRecord

__all__ = ["ItemColumns", "Popularity", "learnable"]


def learnable(records: Sequence[ExampleRecord]) -> list[ExampleRecord]:
    """The records a model learns: a redelivered duplicate is not a second event."""
    return [r for r in records if not r.get("duplicate")]


class ItemColumns:
    """Item id -> column of a model's own item matrix, in first-learned order."""

    def __init__(self) -> None:
        self.column: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.column)

    def add(self, item: str) -> int:
        return self.column.setdefault(item, len(self.column))

    def on_candidates(
        self, item_scores: np.ndarray, candidates: Sequence[str], fill: float = 0.0
    ) -> np.ndarray:
        """``item_scores`` (rows x this model's columns) as rows x ``candidates``; a candidate the
        model never learned scores ``fill``."""
        out = np.full((item_scores.shape[0], len(candidates)), fill, dtype=np.float64)
        pairs = [(j, c) for j, item in enumerate(candidates) if (c := self.column.get(item)) is not None]
        if pairs:
            targets, sources = np.array(pairs, dtype=np.int64).T
            out[:, targets] = item_scores[:, sources]
        return out


class Popularity:
    """All-time clicks per item, scaled below one: it only orders items a model scores alike."""

    def __init__(self) -> None:
        self.clicks: Counter[str] = Counter()

    def learn(self, records: Sequence[ExampleRecord]) -> None:
        self.clicks.update(str(r["item_id"]) for r in learnable(records))

    def row(self, candidates: Sequence[str]) -> np.ndarray:
        """Per candidate, its clicks / (most clicks + 1): in [0, 1)."""
        counts = np.array([self.clicks.get(item, 0) for item in candidates], dtype=np.float64)
        return counts / (counts.max(initial=0) + 1)
