"""Similar items measured against the future: do an item's nearest neighbours at time t turn
up with it in the sessions after t?

Two items *co-occur* when they are clicked at most ``window`` clicks apart in one session
(5, the live model's context window). Whole sessions would not do: MovieLens' derived
sessions run to hundreds of ratings, and there 65% of all item pairs share a later session,
so any list, random or not, would score high.

The split is in time. At the cut t (the end of the history), each method lists an item's
``k`` most similar items among the candidates (the given items clicked before t, the item
itself excluded):

* each vector source (the unified vector, the behavioural id vector, ...): cosine nearest
  neighbours of vectors learned before t (the model frozen at the end of the history);
* ``co-occurrence counts``: the items it co-occurred with most often before t, ties (and
  items it never co-occurred with) broken by clicks before t;
* ``popularity``: the most clicked items before t, the same list for every item.

The truth for an item is the set of candidates it co-occurs with *after* t. Scored items
("enough clicks"): clicked at least ``min_clicks`` times before t and co-occurring with at
least one candidate after t. Per method: precision@k (the share of the ``k`` neighbours in
the truth, averaged over scored items), next to its chance level (a random list of ``k``
other candidates), and the neighbours' mean popularity percentile (100 = the most clicked
candidate before t, 0 the least): how far a method leans to popular items.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.stats import rankdata

from onevec.models.fusion import normalise

__all__ = ["COOCCURRENCE", "POPULARITY", "RANDOM", "SimilarItems", "SimilarItemsRow", "measure_similar_items"]

COOCCURRENCE = "co-occurrence counts"
POPULARITY = "popularity"
RANDOM = "random (expected)"


@dataclass(frozen=True)
class SimilarItemsRow:
    method: str
    precision: float  # mean precision@k over the scored items
    popularity_percentile: float  # neighbours' mean popularity percentile (0-100)


@dataclass(frozen=True)
class SimilarItems:
    k: int
    min_clicks: int
    window: int
    cut: float  # t: the timestamp of the last event before the cut
    candidates: int
    scored: int  # items with enough clicks before t and a later co-occurring candidate
    rows: list[SimilarItemsRow]

    def row(self, method: str) -> SimilarItemsRow:
        return next(r for r in self.rows if r.method == method)


def _cooccurrence(
    events: pd.DataFrame, column: Mapping[str, int], width: int, window: int
) -> sparse.csr_matrix:
    """Candidate x candidate: how often the two were clicked at most ``window`` clicks apart
    in one session of ``events`` (in time order); the diagonal zero."""
    ordered = events.sort_values("session_id", kind="stable")  # time order kept within a session
    sessions = ordered["session_id"].to_numpy()
    cols = ordered["item_id"].map(column).fillna(-1).to_numpy(dtype=np.int64)
    left, right = [], []
    for offset in range(1, window + 1):
        pair = (sessions[:-offset] == sessions[offset:]) & (cols[:-offset] >= 0) & (cols[offset:] >= 0)
        left.append(cols[:-offset][pair])
        right.append(cols[offset:][pair])
    a, b = np.concatenate([*left, *right]), np.concatenate([*right, *left])
    counts = sparse.csr_matrix((np.ones(len(a), dtype=np.float32), (a, b)), shape=(width, width))
    counts.setdiag(0)
    counts.eliminate_zeros()
    return counts


def _cosines(unit: np.ndarray, part: np.ndarray) -> np.ndarray:
    return unit[part] @ unit.T


def _codes(rows: np.ndarray, columns: np.ndarray, width: int) -> np.ndarray:
    return np.asarray(rows, dtype=np.int64) * width + np.asarray(columns, dtype=np.int64)


def _top_k(scores: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Per row of ``scores``, the columns of its ``k`` highest scores (``rows``: each row's own
    column, never chosen), best first."""
    scores = scores.copy()
    scores[np.arange(len(rows)), rows] = -np.inf
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
    return np.take_along_axis(top, order, axis=1)


def measure_similar_items(
    events: pd.DataFrame,
    history: int,
    items: Sequence[str],
    sources: Mapping[str, np.ndarray],
    k: int = 10,
    min_clicks: int = 5,
    window: int = 5,
    chunk: int = 512,
) -> SimilarItems:
    """Precision@k and popularity bias of each source's nearest neighbours and of the two
    references (see the module docstring).

    ``events``: normalised, in time order; the first ``history`` of them are before the cut.
    ``sources``: source name -> vectors, one row per item of ``items``, learned from the
    events before the cut only.
    """
    before, after = events.iloc[:history], events.iloc[history:]
    clicks = before["item_id"].value_counts()
    chosen = [i for i, item in enumerate(items) if item in clicks.index]
    candidates = [items[i] for i in chosen]
    column = {item: c for c, item in enumerate(candidates)}
    n = len(candidates)
    popularity = clicks.reindex(candidates).to_numpy(dtype=np.float64)
    percentile = (rankdata(popularity) - 1) / max(n - 1, 1) * 100.0
    prior = _cooccurrence(before, column, n, window)
    truth = _cooccurrence(after, column, n, window)
    scored = np.flatnonzero((popularity >= min_clicks) & (truth.getnnz(axis=1) > 0))
    cut = float(before["timestamp"].iloc[-1]) if history else float("nan")
    if len(scored) == 0 or n <= k:
        return SimilarItems(k, min_clicks, window, cut, n, 0, [])
    truth_rows = truth[scored]
    truth_row, truth_column = truth_rows.nonzero()
    truth_codes = _codes(truth_row, truth_column, n)

    def row(method: str, neighbours: np.ndarray) -> SimilarItemsRow:
        hits = np.isin(_codes(np.arange(len(scored))[:, None], neighbours, n), truth_codes).sum()
        return SimilarItemsRow(method, float(hits / neighbours.size), float(percentile[neighbours].mean()))

    def chunked(scores: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        parts = [scored[s : s + chunk] for s in range(0, len(scored), chunk)]
        return np.vstack([_top_k(scores(part), part, k) for part in parts])

    rows = []
    for name, matrix in sources.items():
        unit = normalise(matrix[chosen])
        rows.append(row(name, chunked(partial(_cosines, unit))))
    # Popularity breaks co-occurrence ties: it adds less than one count.
    tie_break = rankdata(popularity) / (n + 1)
    rows.append(row(COOCCURRENCE, chunked(lambda part: prior[part].toarray() + tie_break)))
    most_clicked = np.argsort(-popularity, kind="stable")[: k + 1]
    rows.append(row(POPULARITY, np.array([[c for c in most_clicked if c != i][:k] for i in scored])))
    # A random list of k other candidates: expected precision |truth| / (n - 1), popularity
    # percentile the mean over the other candidates.
    chance = float(np.mean(truth_rows.getnnz(axis=1) / (n - 1)))
    others = (percentile.sum() - percentile[scored]) / (n - 1)
    rows.append(SimilarItemsRow(RANDOM, chance, float(others.mean())))
    return SimilarItems(k, min_clicks, window, cut, n, len(scored), rows)
