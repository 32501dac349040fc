"""Session-based nearest neighbours: score an item by the past sessions most like the current one.

* :class:`SessionKNN`: SKNN (Jannach & Ludewig, RecSys 2017): cosine of item sets.
* :class:`VSKNN`: V-SKNN (Ludewig & Jannach, "Evaluation of session-based recommendation
  algorithms", UMUAI 2018; ``vsknn`` in their session-rec framework): the current session's
  recent clicks weigh more, a neighbour counts more when it shares a recent click, and rare
  items are boosted by their IDF.

Both seek neighbours among the ``sample`` most recent past sessions that share an item with the
current one (the published methods' recency sampling), and the current session itself (its
earlier events were learned) is never its own neighbour.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import sparse

from onevec.models.clickstream.examples import ExampleRecord
from onevec.models.evaluation.harness import Query
from onevec.models.evaluation.item_columns import ItemColumns, learnable

__all__ = ["SessionIndex", "SessionKNN", "VSKNN"]


class SessionIndex:
    """Past sessions as rows of a binary session x item matrix, with each one's newest timestamp
    and, per item, the number of sessions holding it."""

    def __init__(self) -> None:
        self.items = ItemColumns()
        self.session_row: dict[str, int] = {}
        self.session_items: list[set[int]] = []
        self.last_seen: list[float] = []
        self.holding: list[int] = []  # per item column: sessions holding it
        self._pairs: tuple[list[int], list[int]] = ([], [])
        self._matrix: sparse.csr_matrix | None = None

    def __len__(self) -> int:
        return len(self.session_items)

    def learn(self, records: Sequence[ExampleRecord]) -> None:
        for record in learnable(records):
            row = self.session_row.setdefault(str(record["session_id"]), len(self.session_row))
            if row == len(self.session_items):
                self.session_items.append(set())
                self.last_seen.append(float(record["timestamp"]))
            col = self.items.add(str(record["item_id"]))
            if col == len(self.holding):
                self.holding.append(0)
            if col not in self.session_items[row]:
                self.session_items[row].add(col)
                self.holding[col] += 1
                self._pairs[0].append(row)
                self._pairs[1].append(col)
            self.last_seen[row] = max(self.last_seen[row], float(record["timestamp"]))
        self._matrix = None

    def matrix(self) -> sparse.csr_matrix:
        if self._matrix is None:
            rows, cols = self._pairs
            self._matrix = sparse.csr_matrix(
                (np.ones(len(rows)), (rows, cols)), shape=(len(self.session_items), len(self.items))
            )
        return self._matrix

    def nearest(
        self, similarity: np.ndarray, session_id: str, sample: int, k: int, last_seen: np.ndarray
    ) -> np.ndarray:
        """Rows of the ``k`` most similar among the ``sample`` most recent sessions sharing an
        item (similarity > 0), never the query's own session; ``last_seen`` is
        ``np.asarray(self.last_seen)``, built once per batch."""
        sharing = np.flatnonzero(similarity > 0)
        own = self.session_row.get(session_id)
        if own is not None:
            sharing = sharing[sharing != own]
        if len(sharing) > sample:
            sharing = sharing[np.argsort(-last_seen[sharing], kind="stable")[:sample]]
        return sharing[np.argsort(-similarity[sharing], kind="stable")[:k]]


class _SessionNeighbours:
    """What SKNN and V-SKNN share: the sessions they learn, their item scores on the candidates."""

    def __init__(self) -> None:
        self.index = SessionIndex()

    def fit_history(self, records: list[ExampleRecord]) -> None:
        self.learn(records)

    def learn(self, records: list[ExampleRecord]) -> None:
        self.index.learn(records)

    def score(self, queries: Sequence[Query], candidates: Sequence[str]) -> np.ndarray:
        if not len(self.index):
            return np.zeros((len(queries), len(candidates)))
        return self.index.items.on_candidates(self.item_scores(queries), candidates)

    def item_scores(self, queries: Sequence[Query]) -> np.ndarray:
        """(queries, the index's item columns) scores; called with at least one past session."""
        raise NotImplementedError


class SessionKNN(_SessionNeighbours):
    """SKNN: score(i) = sum of cosine(current, n) over the ``k`` nearest past sessions n holding i."""

    def __init__(self, k: int = 100, sample: int = 500, name: str = "session-kNN") -> None:
        super().__init__()
        self.k, self.sample, self.name = k, sample, name

    def item_scores(self, queries: Sequence[Query]) -> np.ndarray:
        index = self.index
        sessions = index.matrix()
        columns = index.items.column
        rows: list[int] = []
        cols: list[int] = []
        for i, query in enumerate(queries):
            known = {columns[item] for item in query.prefix if item in columns}
            rows.extend([i] * len(known))
            cols.extend(known)
        current = sparse.csr_matrix(
            (np.ones(len(rows)), (rows, cols)), shape=(len(queries), sessions.shape[1])
        )
        overlap = (current @ sessions.T).toarray()
        sizes = np.sqrt(np.asarray(current.sum(1)).ravel()[:, None] * np.asarray(sessions.sum(1)).ravel())
        similarity = np.divide(overlap, sizes, out=np.zeros_like(overlap), where=sizes > 0)
        last_seen = np.asarray(index.last_seen)
        weights = np.zeros_like(similarity)
        for i, query in enumerate(queries):
            nearest = index.nearest(similarity[i], query.session_id, self.sample, self.k, last_seen)
            weights[i, nearest] = similarity[i, nearest]
        return np.asarray(sessions.T @ weights.T).T


class VSKNN(_SessionNeighbours):
    """V-SKNN. For a current session of L clicks, the click at position p (1 = oldest) weighs
    ``p / L`` (an item clicked twice takes its newest position). A past session n's similarity
    is the summed weight of the items it shares; the ``k`` most similar are kept and

    ``score(i) = (1 + idf_weight * idf(i)) * sum over neighbours n holding i of sim(n) / step(n)``

    with ``idf(i) = log(sessions / sessions holding i)`` and ``step(n)`` how many clicks back
    (1 = the newest) the newest item n shares with the current session sits.
    """

    def __init__(
        self, k: int = 100, sample: int = 500, idf_weight: float = 1.0, name: str = "V-SKNN"
    ) -> None:
        super().__init__()
        self.k, self.sample, self.idf_weight, self.name = k, sample, idf_weight, name

    def item_scores(self, queries: Sequence[Query]) -> np.ndarray:
        index = self.index
        sessions = index.matrix()
        by_item = sessions.tocsc()
        columns = index.items.column
        holding = np.asarray(index.holding, dtype=np.float64)
        boost = 1.0 + self.idf_weight * np.log(len(index) / holding)
        last_seen = np.asarray(index.last_seen)
        item_scores = np.zeros((len(queries), len(columns)))
        for i, query in enumerate(queries):
            length = len(query.prefix)
            position = {columns[item]: p for p, item in enumerate(query.prefix, 1) if item in columns}
            if not position:
                continue
            cols = np.fromiter(position, dtype=np.int64, count=len(position))
            positions = np.fromiter(position.values(), dtype=np.float64, count=len(position))
            shared = by_item[:, cols]  # sessions x the current session's items
            similarity = np.asarray(shared @ (positions / length)).ravel()
            nearest = index.nearest(similarity, query.session_id, self.sample, self.k, last_seen)
            if not len(nearest):
                continue
            steps = length - positions + 1
            newest = np.where(shared[nearest].toarray() > 0, steps[None, :], np.inf).min(1)
            item_scores[i] = np.asarray(sessions[nearest].T @ (similarity[nearest] / newest)).ravel()
        return item_scores * boost[None, :]
