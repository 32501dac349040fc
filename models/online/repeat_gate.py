"""Repeat gate: how much a user's own history counts next to the session encoder, learned
online per stream (a RepeatNet-style repeat/explore mixture in log-linear form).

The score of candidate item ``i`` for a session of user ``u`` is

    z(i) = scale * s(i) + weights . f(u, i)

with ``s(i)`` the session encoder's score (session vector . item vector) and ``f(u, i)`` the
features of ``u``'s own history of ``i`` (:class:`~onevec.models.online.user_history.Had`),
zero for an item ``u`` never had: ``had`` (1), ``log_count`` (log1p of the decayed count) and
``recency`` (0.5 ** sessions since ``u`` last had it). ``scale`` starts at 1 and ``weights`` at
0, so a fresh gate ranks exactly as the session encoder does; both are fitted prequentially:
after a batch was scored, one Adagrad step on the softmax cross-entropy of its next items over
the candidates it was ranked against (the session's own items excluded, as in ranking). Where
people buy again (groceries) the weights grow positive and ``scale`` shrinks; where nobody
repeats (MovieLens: nobody rates a film twice) ``had`` goes negative and the user's own items
drop down the ranking.

API (stable; the learner's prequential scoring and the serving side both use it)::

    gate = RepeatGate(lr=2.0)
    gate.weights -> np.ndarray (3,), in the order of FEATURES; gate.scale -> float
    gate.combine(session_scores, candidates, history.recall(user_id, session_id)) -> scores
        # one query: (n,) session scores of the candidate item ids -> (n,) gated scores
    gate.combine_batch(session_scores, features) -> scores     # (q, n); features: HistoryFeatures.of(
                                                               #   [history.recall(...) per query], column_of)
    gate.learn(session_scores, targets, features, excluded)    # after the batch was scored
    gate.state_dict() / gate.load_state_dict(state)

Serving: the history term is non-zero only on the user's own items, so a gated ranking is the
Qdrant dot-product top-k merged with the user's history items, re-ranked with ``combine``;
``mode=again`` keeps only the user's items, ``mode=discover`` only the others (there the gate
changes nothing: every score is ``scale * s``). The vectors stay plain inner-product vectors.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from onevec.models.online.user_history import Had, Recalled

__all__ = ["FEATURES", "HistoryFeatures", "RepeatGate"]

FEATURES = ("had", "log_count", "recency")
_MIN_SCALE = 1e-3  # the session score never switches off entirely, nor changes sign


@dataclass(frozen=True, slots=True)
class HistoryFeatures:
    """The history features of a batch of queries, as (query row, candidate column, features)
    triples: only the users' own items that are candidates appear, each once per query."""

    rows: np.ndarray  # (m,) int64 query index
    columns: np.ndarray  # (m,) int64 candidate column
    values: np.ndarray  # (m, len(FEATURES)) float64

    @classmethod
    def of(
        cls, histories: Sequence[Mapping[str, Had] | Recalled], column: Callable[[str], int | None]
    ) -> HistoryFeatures:
        """Features of each query's history (``UserHistory.recall`` or ``recall_arrays``) over
        the candidates: ``column(item_id)`` is the item's candidate column, None when it is not
        a candidate (``dict.get`` of an id -> column map, or a vocabulary's ``get``)."""
        recalled = [h if isinstance(h, Recalled) else Recalled.of(h) for h in histories]
        sizes = [len(r.items) for r in recalled]
        found = np.array(
            [
                -1 if c is None else c
                for c in map(column, itertools.chain.from_iterable(r.items for r in recalled))
            ],
            dtype=np.int64,
        )
        keep = found >= 0
        rows = np.repeat(np.arange(len(recalled), dtype=np.int64), sizes)[keep]
        counts = np.concatenate([np.zeros(0), *(r.counts for r in recalled)])[keep]
        ago = np.concatenate([np.zeros(0), *(r.ago for r in recalled)])[keep]
        values = np.stack([np.ones(len(rows)), np.log1p(counts), 0.5**ago], axis=1)
        return cls(rows=rows, columns=found[keep], values=values)


class RepeatGate:
    """A learned log-linear mixture of the session score and the user's own history."""

    def __init__(self, lr: float = 2.0) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        self.lr = lr
        self.weights = np.zeros(len(FEATURES))
        self.scale = 1.0
        self._squared = np.full(len(FEATURES) + 1, 1e-8)  # Adagrad sums of (weights..., scale)
        self.steps = 0

    def combine(
        self, session_scores: np.ndarray, candidates: Sequence[str], history: Mapping[str, Had]
    ) -> np.ndarray:
        """Gated scores of one query's ``candidates`` (item ids) from their session scores."""
        features = HistoryFeatures.of([history], {item: j for j, item in enumerate(candidates)}.get)
        return self.combine_batch(np.asarray(session_scores)[None, :], features)[0]

    def combine_batch(self, session_scores: np.ndarray, features: HistoryFeatures) -> np.ndarray:
        """Gated (q, n) scores from (q, n) session scores and the batch's history features."""
        out = self.scale * np.asarray(session_scores, dtype=np.float64)
        out[features.rows, features.columns] += self.bonus(features)  # each pair once
        return out

    def bonus(self, features: HistoryFeatures) -> np.ndarray:
        """The history term ``weights . f`` of each (row, column) of ``features``."""
        return features.values @ self.weights

    def learn(
        self,
        session_scores: np.ndarray,
        targets: np.ndarray,
        features: HistoryFeatures,
        excluded: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        """One Adagrad step on the batch's softmax cross-entropy, after it was scored.

        ``session_scores`` (q, n) are the session encoder's scores the batch was ranked with,
        ``targets`` (q,) the column of each next item (-1 when it is not a candidate: skipped),
        ``excluded`` (row, column) pairs of the sessions' own items, which ranking excluded.
        """
        known = np.flatnonzero(np.asarray(targets) >= 0)
        if not len(known):
            return
        scores = np.asarray(session_scores, dtype=np.float64)[known]
        target = np.asarray(targets, dtype=np.int64)[known]
        remap = np.full(len(targets), -1, dtype=np.int64)
        remap[known] = np.arange(len(known))
        mine = remap[features.rows] >= 0
        rows, columns, values = remap[features.rows[mine]], features.columns[mine], features.values[mine]
        logits = self.scale * scores
        logits[rows, columns] += values @ self.weights  # each pair once
        if excluded is not None:
            keep = remap[excluded[0]] >= 0
            ex_rows, ex_columns = remap[excluded[0][keep]], excluded[1][keep]
            not_target = ex_columns != target[ex_rows]
            logits[ex_rows[not_target], ex_columns[not_target]] = -np.inf
        logits -= logits.max(axis=1, keepdims=True)
        probability = np.exp(logits)
        probability /= probability.sum(axis=1, keepdims=True)
        # d(-log p_target)/dw = E_p[f] - f(target); d/d scale = E_p[s] - s(target).
        gradient = np.zeros(len(FEATURES) + 1)
        gradient[:-1] = (probability[rows, columns][:, None] * values).sum(0)
        is_target = columns == target[rows]
        gradient[:-1] -= values[is_target].sum(0)
        finite = np.where(probability > 0, scores, 0.0)
        gradient[-1] = (probability * finite).sum() - scores[np.arange(len(target)), target].sum()
        gradient /= len(known)
        self._squared += gradient**2
        step = self.lr * gradient / np.sqrt(self._squared)
        self.weights = self.weights - step[:-1]
        self.scale = max(_MIN_SCALE, self.scale - float(step[-1]))
        self.steps += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "weights": torch.from_numpy(self.weights.copy()),
            "scale": self.scale,
            "squared": torch.from_numpy(self._squared.copy()),
            "steps": self.steps,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        weights = state["weights"].numpy().astype(np.float64)
        if weights.shape != (len(FEATURES),):
            raise ValueError(f"gate state has {weights.shape} weights, expected {len(FEATURES)}")
        self.weights = weights.copy()
        self.scale = float(state["scale"])
        self._squared = state["squared"].numpy().astype(np.float64).copy()
        self.steps = int(state["steps"])
