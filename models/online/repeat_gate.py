"""Repeat gate: how much a user's own history, and what followed the session's items on the
stream, count next to the session encoder, learned online per stream (a RepeatNet-style
repeat/explore mixture in log-linear form).

The score of candidate item ``i`` for a session of user ``u`` is

    z(i) = scale * s(i) + weights . f(u, i)

with ``s(i)`` the session encoder's score (session vector . item vector) and ``f(u, i)``:

* the features of ``u``'s own history of ``i`` (:class:`~onevec.models.online.user_history.Had`),
  zero for an item ``u`` never had: ``had`` (1), ``log_count`` (log1p of the decayed count) and
  ``recency`` (0.5 ** sessions since ``u`` last had it);
* the features of ``i`` following the session's items
  (:class:`~onevec.models.online.item_follows.ItemFollows`), zero for an item that never
  followed them: ``follows_last`` and ``follows_session``, each in [0, 1]. A neighbour signal
  uses an item after one occurrence, where a trained vector needs several.

``scale`` starts at 1 and ``weights`` at 0, so a fresh gate ranks exactly as the session
encoder does; both are fitted prequentially: after a batch was scored, one Adagrad step on the
softmax cross-entropy of its next items over the candidates it was ranked against (the
session's own items excluded, as in ranking). Where people buy again (groceries) the history
weights grow positive and ``scale`` shrinks; where nobody repeats (MovieLens: nobody rates a
film twice) ``had`` goes negative and the user's own items drop down the ranking.

API (stable; the learner's prequential scoring and the serving side both use it)::

    gate = RepeatGate(lr=2.0)
    gate.weights -> np.ndarray (5,), in the order of FEATURES; gate.scale -> float
    gate.combine(session_scores, candidates, history.recall(user_id, session_id),
                 follows.followed(prefix)) -> scores
        # one query: (n,) session scores of the candidate item ids -> (n,) gated scores
    gate.combine_batch(session_scores, features) -> scores     # (q, n); features: HistoryFeatures.of(
        # [history.recall(...) per query], column_of, [follows.followed(prefix) per query])
    gate.learn(session_scores, targets, features, excluded)    # after the batch was scored
    gate.state_dict() / gate.load_state_dict(state)

Serving: the gate's term is non-zero only on the user's own items and the session's items'
followers, so a gated ranking is the Qdrant dot-product top-k merged with those items, re-ranked
with ``combine``; ``mode=again`` keeps only the user's items, ``mode=discover`` only the
others. The vectors stay plain inner-product vectors.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from onevec.models.online.item_follows import Followed
from onevec.models.online.user_history import Had, Recalled

__all__ = ["FEATURES", "GateSoftmax", "HistoryFeatures", "RepeatGate"]

FEATURES = ("had", "log_count", "recency", "follows_last", "follows_session")
_OWN = 3  # the first three read the user's own history, the rest the session's followers
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
        cls,
        histories: Sequence[Mapping[str, Had] | Recalled],
        column: Callable[[str], int | None],
        followed: Sequence[Followed] | None = None,
    ) -> HistoryFeatures:
        """Features of each query's history (``UserHistory.recall`` or ``recall_arrays``) and,
        when given, of the items that followed its session's items (``ItemFollows.followed``)
        over the candidates: ``column(item_id)`` is the item's candidate column, None when it is
        not a candidate (``dict.get`` of an id -> column map, or a vocabulary's ``lookup``)."""
        recalled = [h if isinstance(h, Recalled) else Recalled.of(h) for h in histories]
        rows, columns = cls._located(column, [r.items for r in recalled])
        counts = np.concatenate([np.zeros(0), *(r.counts for r in recalled)])[rows[1]]
        ago = np.concatenate([np.zeros(0), *(r.ago for r in recalled)])[rows[1]]
        values = np.zeros((len(columns), len(FEATURES)))
        values[:, :_OWN] = np.stack([np.ones(len(columns)), np.log1p(counts), 0.5**ago], axis=1)
        own = cls(rows=rows[0], columns=columns, values=values)
        if not followed:
            return own
        (queries, kept), columns = cls._located(column, [f.items for f in followed])
        values = np.concatenate([np.zeros((0, 2)), *(f.values for f in followed)])[kept]
        return own.merged(cls.following(queries, columns, values))

    @classmethod
    def following(cls, rows: np.ndarray, columns: np.ndarray, values: np.ndarray) -> HistoryFeatures:
        """The follows features (``values`` (m, 2)) of (query row, candidate column) pairs; a
        column of -1 (not a candidate) is left out."""
        keep = columns >= 0
        placed = np.zeros((int(keep.sum()), len(FEATURES)))
        placed[:, _OWN:] = values[keep]
        return cls(rows=rows[keep], columns=columns[keep], values=placed)

    @staticmethod
    def _located(
        column: Callable[[str], int | None], items: Sequence[list[str]]
    ) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
        """((query row, index into the concatenated items), candidate column) of the items that
        are candidates."""
        found = np.array(
            [-1 if c is None else c for c in map(column, itertools.chain.from_iterable(items))],
            dtype=np.int64,
        )
        keep = np.flatnonzero(found >= 0)
        rows = np.repeat(np.arange(len(items), dtype=np.int64), [len(i) for i in items])[keep]
        return (rows, keep), found[keep]

    def merged(self, other: HistoryFeatures) -> HistoryFeatures:
        """One triple per (row, column): the two sets' features summed (they fill different
        columns of ``values``)."""
        rows = np.concatenate([self.rows, other.rows])
        columns = np.concatenate([self.columns, other.columns])
        width = int(columns.max(initial=0)) + 1
        keys, first, inverse = np.unique(rows * width + columns, return_index=True, return_inverse=True)
        stacked = np.concatenate([self.values, other.values])
        # A bincount per feature: np.add.at over the pairs was a tenth of a scored step.
        values = np.stack(
            [np.bincount(inverse.ravel(), stacked[:, j], minlength=len(keys)) for j in range(len(FEATURES))],
            axis=1,
        )
        return HistoryFeatures(rows=rows[first], columns=columns[first], values=values)


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
        self,
        session_scores: np.ndarray,
        candidates: Sequence[str],
        history: Mapping[str, Had],
        followed: Followed | None = None,
    ) -> np.ndarray:
        """Gated scores of one query's ``candidates`` (item ids) from their session scores."""
        column = {item: j for j, item in enumerate(candidates)}.get
        features = HistoryFeatures.of([history], column, None if followed is None else [followed])
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
        softmax = GateSoftmax(self, targets, features, excluded)
        softmax.add(0, np.asarray(session_scores))
        self.learn_softmax(softmax)

    def learn_softmax(self, softmax: GateSoftmax) -> None:
        """One Adagrad step from a batch's softmax accumulated over every candidate (with this
        gate's weights and scale: the gate must not have changed since ``softmax`` began)."""
        if not softmax.queries:
            return
        # d(-log p_target)/dw = E_p[f] - f(target); d/d scale = E_p[s] - s(target).
        gradient = np.zeros(len(FEATURES) + 1)
        gradient[:-1] = (softmax.own_probabilities()[:, None] * softmax.values).sum(0)
        gradient[:-1] -= softmax.values[softmax.own_is_target].sum(0)
        gradient[-1] = (softmax.weighted / softmax.total).sum() - softmax.target_scores.sum()
        gradient /= softmax.queries
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
        if weights.shape not in ((_OWN,), (len(FEATURES),)):
            raise ValueError(f"gate state has {weights.shape} weights, expected {len(FEATURES)}")
        # A gate saved before the followers' features starts them at 0, as a fresh gate does.
        self.weights = np.zeros(len(FEATURES))
        self.weights[: len(weights)] = weights
        self.scale = float(state["scale"])
        squared = state["squared"].numpy().astype(np.float64)
        self._squared = np.full(len(FEATURES) + 1, 1e-8)
        self._squared[: len(weights)] = squared[:-1]
        self._squared[-1] = squared[-1]
        self.steps = int(state["steps"])


class GateSoftmax:
    """The softmax of a batch's gated scores ``z = scale * s + weights . f`` over candidates
    that arrive in blocks of columns (each column once), reduced to what the gate's gradient
    reads: per query the running maximum of ``z``, the sums of ``exp(z - max)`` and of
    ``exp(z - max) * s``, and the session scores of the user's own items and of the next item.
    The learner ranks a catalogue slice by slice over several rounds; the gate learns from the
    same slices instead of a (queries x catalogue) matrix.

    Queries whose next item is not a candidate (target -1) are left out; the ``excluded``
    (query, column) pairs (the session's own items, as ranking excludes them) never count,
    unless the pair is the next item itself."""

    def __init__(
        self,
        gate: RepeatGate,
        targets: np.ndarray,
        features: HistoryFeatures,
        excluded: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> None:
        targets = np.asarray(targets, dtype=np.int64)
        self.rows = np.flatnonzero(targets >= 0)  # the queries learned from
        self.queries = len(self.rows)
        self.scale = gate.scale
        self.targets = targets[self.rows]
        remap = np.full(len(targets), -1, dtype=np.int64)
        remap[self.rows] = np.arange(self.queries)
        mine = remap[features.rows] >= 0
        self.own_rows, self.own_columns = remap[features.rows[mine]], features.columns[mine]
        self.values = features.values[mine]
        self.bonus = self.values @ gate.weights
        self.own_is_target = self.own_columns == self.targets[self.own_rows]
        excluded_rows, excluded_columns = (np.zeros(0, dtype=np.int64),) * 2
        if excluded is not None:
            keep = remap[excluded[0]] >= 0
            excluded_rows, excluded_columns = remap[excluded[0][keep]], excluded[1][keep]
            not_target = excluded_columns != self.targets[excluded_rows]
            excluded_rows, excluded_columns = excluded_rows[not_target], excluded_columns[not_target]
        self.excluded_rows, self.excluded_columns = excluded_rows, excluded_columns
        width = 1 + int(max(self.own_columns.max(initial=0), excluded_columns.max(initial=0)))
        self.own_excluded = np.isin(
            self.own_rows * width + self.own_columns, excluded_rows * width + excluded_columns
        )
        self.maximum = np.full(self.queries, -np.inf)
        self.total = np.zeros(self.queries)
        self.weighted = np.zeros(self.queries)
        self.own_scores = np.zeros(len(self.own_rows))
        self.target_scores = np.zeros(self.queries)

    def add(self, start: int, session_scores: np.ndarray) -> None:
        """The session scores (rows: every query the softmax was made with; columns:
        candidates ``start`` onwards) of the next block of candidates."""
        scores = np.asarray(session_scores, dtype=np.float32)[self.rows]
        stop = start + scores.shape[1]
        logits = self.scale * scores
        own = (self.own_columns >= start) & (self.own_columns < stop)
        rows, columns = self.own_rows[own], self.own_columns[own] - start
        self.own_scores[own] = scores[rows, columns]
        logits[rows, columns] += self.bonus[own]  # each pair once
        gone = (self.excluded_columns >= start) & (self.excluded_columns < stop)
        logits[self.excluded_rows[gone], self.excluded_columns[gone] - start] = -np.inf
        inside = np.flatnonzero((self.targets >= start) & (self.targets < stop))
        self.target_scores[inside] = scores[inside, self.targets[inside] - start]
        maximum = np.maximum(self.maximum, logits.max(axis=1, initial=-np.inf))
        # Rescale the sums to the new maximum; a row with nothing finite yet keeps zeros.
        with np.errstate(invalid="ignore"):
            rescale = np.where(np.isfinite(maximum), np.exp(self.maximum - maximum), 0.0)
        shifted = np.exp(logits - np.where(np.isfinite(maximum), maximum, 0.0)[:, None].astype(np.float32))
        self.total = self.total * rescale + shifted.sum(axis=1, dtype=np.float64)
        # exp(-inf) is 0: an excluded candidate adds nothing, whatever its score.
        self.weighted = self.weighted * rescale + (shifted * scores).sum(axis=1, dtype=np.float64)
        self.maximum = maximum

    def own_probabilities(self) -> np.ndarray:
        """The softmax probability of each of the users' own items (0 where excluded)."""
        logits = self.scale * self.own_scores + self.bonus
        rows = self.own_rows
        probability = np.exp(logits - self.maximum[rows]) / self.total[rows]
        return np.where(self.own_excluded, 0.0, probability)
