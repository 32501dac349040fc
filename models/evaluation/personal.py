"""Baselines from the user's own history: people come back, and in repeat-purchase commerce most
of what they buy they bought before.

* :class:`PersonalPopularity` (P-Pop): the user's earlier items, counts decayed per session;
  the personal-frequency baseline of next-basket studies (Li, Jannach et al., "A next basket
  recommendation reality check", TOIS 2023).
* :class:`TIFUKNN`: TIFU-KNN (Hu, He, Zhang, Yang & Yin, "Modeling personalized item
  frequency information for next-basket recommendation", SIGIR 2020): the user's
  time-decayed history vector blended with its nearest users'.
* :func:`repeat_share`: the share of scored next items the user had before, the ceiling of
  what re-recommending a user's own items can hit (on MovieLens nobody rates a film twice);
  :func:`repeat_mask` marks those examples, so a report can score each side apart.

A session is a basket. Both models hold only what they learned, so under the harness, which
hands them a batch only after scoring it, they cannot read a user's future.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from onevec.models.clickstream.examples import ExampleRecord
from onevec.models.evaluation.harness import Query, is_scorable
from onevec.models.evaluation.item_columns import ItemColumns, Popularity, learnable

__all__ = ["PersonalPopularity", "TIFUKNN", "UserBaskets", "repeat_mask", "repeat_share"]


@dataclass
class _Baskets:
    sessions: dict[str, int] = field(default_factory=dict)  # session id -> ordinal (0 = first)
    items: list[str] = field(default_factory=list)  # every learned event's item
    ordinals: list[int] = field(default_factory=list)  # ... and its session's ordinal


class UserBaskets:
    """Every learned event per user, with the ordinal of its session among the user's sessions."""

    def __init__(self) -> None:
        self.users: dict[str, _Baskets] = {}

    def learn(self, records: Sequence[ExampleRecord]) -> None:
        for record in learnable(records):
            user = self.users.setdefault(str(record["user_id"]), _Baskets())
            user.items.append(str(record["item_id"]))
            user.ordinals.append(user.sessions.setdefault(str(record["session_id"]), len(user.sessions)))

    def now(self, query: Query) -> int:
        """The ordinal of the query's session: its own if the user's earlier events are in it,
        else the next one."""
        user = self.users.get(query.user_id)
        if user is None:
            return 0
        return user.sessions.get(query.session_id, len(user.sessions))

    def decayed(self, query: Query, decay: float) -> dict[str, float]:
        """Item -> sum over the user's events of it of ``decay ** (sessions before the query's)``."""
        user = self.users.get(query.user_id)
        if user is None:
            return {}
        now = self.now(query)
        counts: dict[str, float] = {}
        for item, ordinal in zip(user.items, user.ordinals, strict=True):
            counts[item] = counts.get(item, 0.0) + decay ** (now - ordinal)
        return counts


def repeat_mask(records: Sequence[ExampleRecord], history: int) -> np.ndarray:
    """Per scored example (after the first ``history`` records, in the order
    :func:`~onevec.models.evaluation.harness.run_prequential` scores them): whether the same
    user had its next item in an earlier event."""
    had: dict[str, set[str]] = {}
    repeats: list[bool] = []
    for position, record in enumerate(records):
        if record.get("duplicate"):
            continue
        user, item = str(record["user_id"]), str(record["item_id"])
        if position >= history and is_scorable(record):
            repeats.append(item in had.get(user, ()))
        had.setdefault(user, set()).add(item)
    return np.asarray(repeats, dtype=bool)


def repeat_share(records: Sequence[ExampleRecord], history: int) -> float:
    """Share of the scored examples whose next item the same user had in an earlier event."""
    mask = repeat_mask(records, history)
    return float(mask.mean()) if len(mask) else 0.0


class PersonalPopularity:
    """P-Pop: ``score(i) = sum over the user's earlier events of i of decay ** (sessions ago)``
    (an event of the current session counts 1). All-time popularity only breaks ties: it is
    scaled below ``decay ** 40``, the least personal evidence that still counts."""

    def __init__(self, decay: float = 0.8, name: str = "P-Pop") -> None:
        self.decay, self.name = decay, name
        self.baskets = UserBaskets()
        self.popularity = Popularity()

    def fit_history(self, records: list[ExampleRecord]) -> None:
        self.learn(records)

    def learn(self, records: list[ExampleRecord]) -> None:
        self.baskets.learn(records)
        self.popularity.learn(records)

    def score(self, queries: Sequence[Query], candidates: Sequence[str]) -> np.ndarray:
        column = {item: j for j, item in enumerate(candidates)}
        floor = max(self.decay**40, 1e-12)
        scores = np.tile(self.popularity.row(candidates) * floor, (len(queries), 1))
        for i, query in enumerate(queries):
            for item, count in self.baskets.decayed(query, self.decay).items():
                if (j := column.get(item)) is not None:
                    scores[i, j] += count
        return scores


class TIFUKNN:
    """TIFU-KNN. A user's baskets (sessions), oldest first, are cut into groups of
    ``group_size``. A group's vector is the mean of its m baskets' one-hot vectors, the j-th
    (1-based) weighted ``within ** (m - j)``; the user's vector is the mean of its G group
    vectors, the g-th weighted ``across ** (G - g)``. The prediction is ``alpha`` x the user's
    vector + (1 - ``alpha``) x the mean vector of its ``k`` nearest users (cosine of the
    vectors). Popularity breaks the remaining ties."""

    def __init__(
        self,
        k: int = 100,
        group_size: int = 3,
        within: float = 0.9,
        across: float = 0.7,
        alpha: float = 0.7,
        name: str = "TIFU-KNN",
    ) -> None:
        self.k, self.group_size, self.within, self.across, self.alpha = k, group_size, within, across, alpha
        self.name = name
        self.baskets = UserBaskets()
        self.popularity = Popularity()
        self.items = ItemColumns()
        self.user_row: dict[str, int] = {}
        self._vectors = np.zeros((0, 0))
        self._changed: set[str] = set()

    def fit_history(self, records: list[ExampleRecord]) -> None:
        self.learn(records)

    def learn(self, records: list[ExampleRecord]) -> None:
        self.baskets.learn(records)
        self.popularity.learn(records)
        for record in learnable(records):
            self.items.add(str(record["item_id"]))
            user = str(record["user_id"])
            self.user_row.setdefault(user, len(self.user_row))
            self._changed.add(user)

    def user_vector(self, user: str) -> np.ndarray:
        baskets = self.baskets.users[user]
        count = len(baskets.sessions)
        groups = math.ceil(count / self.group_size)
        ordinal = np.asarray(baskets.ordinals)
        group, place = np.divmod(ordinal, self.group_size)
        size = np.minimum(self.group_size, count - group * self.group_size)  # the last group may be short
        weight = self.within ** (size - 1 - place) / size * self.across ** (groups - 1 - group) / groups
        vector = np.zeros(len(self.items))
        np.add.at(vector, [self.items.column[item] for item in baskets.items], weight)
        return vector

    def _refresh(self) -> np.ndarray:
        users, items = len(self.user_row), len(self.items)
        if self._vectors.shape[0] < users or self._vectors.shape[1] < items:
            grown = np.zeros((max(users, 2 * self._vectors.shape[0]), max(items, 2 * self._vectors.shape[1])))
            grown[: self._vectors.shape[0], : self._vectors.shape[1]] = self._vectors
            self._vectors = grown
        for user in self._changed:
            self._vectors[self.user_row[user], :items] = self.user_vector(user)
        self._changed.clear()
        return self._vectors[:users, :items]

    def score(self, queries: Sequence[Query], candidates: Sequence[str]) -> np.ndarray:
        vectors = self._refresh()
        predictions = np.zeros((len(queries), vectors.shape[1]))
        known = [(i, row) for i, q in enumerate(queries) if (row := self.user_row.get(q.user_id)) is not None]
        if known:
            at, own = (np.array(a, dtype=np.int64) for a in zip(*known, strict=True))
            unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1), 1e-12)[:, None]
            similarity = unit[own] @ unit.T
            similarity[np.arange(len(own)), own] = -np.inf  # a user is not its own neighbour
            k = min(self.k, len(vectors) - 1)
            neighbours = np.zeros((len(own), vectors.shape[1]))
            if k > 0:
                nearest = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
                mean = np.zeros_like(similarity)  # a row averages the user's k neighbours
                np.put_along_axis(mean, nearest, 1.0 / k, axis=1)
                neighbours = mean @ vectors
            predictions[at] = self.alpha * vectors[own] + (1 - self.alpha) * neighbours
        scores = self.items.on_candidates(predictions, candidates)
        return scores + 1e-9 * self.popularity.row(candidates)[None, :]
