"""Paper 1's session and outcome tasks, and paper 3's downstream-head comparison.

All of them read item vectors *frozen at the end of the history* (the model that stopped
learning after pre-training) and are scored on the stream after it, so no vector has seen
the events it is scored on.

* :func:`purchase_similarity`: within one session, is a purchased (or highly rated) item
  closer to the rest of the session than the session's non-purchased items are? AUC over
  (purchased, non-purchased) pairs of the same session, per source.
* :func:`compare_heads`: one pairwise task decoded by different heads over the same frozen
  vectors: the inner product the vectors were trained with (paper 3's homogeneous
  configuration), a linear model over the concatenation, a small MLP over the
  concatenation. Used for
* :func:`return_pairs` (will this user return / rate this item low? a proxy on MovieLens),
  and :func:`cooccurrence_pairs` (does item b follow item a in a session, or is b random?).
  Both split in time (oldest 70% train, newest 30% test).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from onevec.models.clickstream.examples import ExampleRecord
from onevec.models.fusion import normalise

__all__ = [
    "PurchaseResult",
    "ReturnPairs",
    "compare_heads",
    "cooccurrence_pairs",
    "purchase_similarity",
    "return_pairs",
]

TRAIN_SHARE = 0.7


@dataclass(frozen=True)
class PurchaseResult:
    aucs: dict[str, float]  # source -> within-session AUC (0.5 = no signal)
    purchased: int  # purchased items scored
    sessions: int  # sessions with both a purchased and a non-purchased item
    pairs: int  # (purchased, non-purchased) pairs compared


def purchase_similarity(
    events: pd.DataFrame,
    positive: np.ndarray,
    scored: np.ndarray,
    items: Sequence[str],
    sources: Mapping[str, np.ndarray],
) -> PurchaseResult:
    """Within-session AUC per source that a purchased item is closer to its session than a
    non-purchased item of the *same* session is.

    Only sessions wholly in the scored stream (``scored``: per event, after the history)
    count. An item's score is its mean cosine to the session's other items (purchased or
    not, itself left out), the same rule for both classes. The AUC pools the comparisons of
    every (purchased, non-purchased) pair within each session, so sessions that are merely
    tighter than others add nothing.
    """
    position = {item: i for i, item in enumerate(items)}
    sessions = events["session_id"].to_numpy()
    in_history = set(sessions[~scored])
    frame = events.assign(positive=positive)[scored & ~np.isin(sessions, list(in_history))]
    frame = frame[frame["item_id"].isin(position)]
    groups: list[tuple[np.ndarray, np.ndarray]] = []  # (item rows, purchased?) per session
    for _, session in frame.groupby("session_id", sort=False):
        bought = session.groupby("item_id", sort=False)["positive"].any()
        if bought.all() or not bought.any():
            continue
        groups.append((np.array([position[i] for i in bought.index]), bought.to_numpy()))
    if not groups:
        return PurchaseResult({}, 0, 0, 0)
    aucs = {}
    for name, matrix in sources.items():
        unit = normalise(matrix)
        concordant = total = 0.0
        for rows, bought in groups:
            vectors = unit[rows]
            similarity = vectors @ vectors.T
            score = (similarity.sum(1) - np.diag(similarity)) / (len(rows) - 1)
            pairs = int(bought.sum() * (~bought).sum())
            concordant += roc_auc_score(bought, score) * pairs
            total += pairs
        aucs[name] = float(concordant / total)
    purchased = sum(int(b.sum()) for _, b in groups)
    pairs = sum(int(b.sum() * (~b).sum()) for _, b in groups)
    return PurchaseResult(aucs, purchased, len(groups), pairs)


def compare_heads(
    left: np.ndarray, right: np.ndarray, labels: np.ndarray, train: np.ndarray, seed: int = 0
) -> dict[str, float]:
    """Held-out AUC of each head on pairs (left[i], right[i]) -> labels[i]; ``train`` masks the
    rows to fit on, the others are scored."""
    test = ~train
    features = {
        "inner product (homogeneous)": (left * right).sum(1, keepdims=True),
        "concatenation, linear": np.hstack([left, right]),
        "concatenation, MLP": np.hstack([left, right]),
    }
    result = {}
    for name, x in features.items():
        if name.endswith("MLP"):
            head = MLPClassifier((64,), early_stopping=True, max_iter=40, random_state=seed)
        else:
            head = LogisticRegression(max_iter=2000, random_state=seed)
        model = make_pipeline(StandardScaler(), head)
        model.fit(x[train], labels[train])
        result[name] = float(roc_auc_score(labels[test], model.predict_proba(x[test])[:, 1]))
    return result


@dataclass(frozen=True)
class ReturnPairs:
    users: np.ndarray  # user vector from the user's items strictly before the row
    items: np.ndarray  # the row's item vector
    labels: np.ndarray
    train: np.ndarray  # oldest TRAIN_SHARE of the rows
    no_history: int  # rows skipped: the user had no earlier item


def past_user_vectors(
    events: pd.DataFrame, item_rows: np.ndarray, vectors: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per event: (mean vector of the user's items with an *earlier* timestamp, their count).

    Running sums per user in time order; events sharing a timestamp do not see each other
    (MovieLens rates many movies in the same second). ``item_rows`` is each event's row of
    ``vectors``, -1 for an item without one (not counted).
    """
    known = item_rows >= 0
    contribution = np.where(known[:, None], vectors[np.maximum(item_rows, 0)], 0.0)
    by_user = pd.DataFrame({"user": events["user_id"].to_numpy(), "t": events["timestamp"].to_numpy()})
    order = by_user.sort_values(["user", "t"], kind="stable").index.to_numpy()
    users = events["user_id"].to_numpy()[order]
    stamps = events["timestamp"].to_numpy()[order]
    # Inclusive running sums per user, then "before this timestamp" = the running sum just
    # before the first event of this (user, timestamp) group.
    sums = pd.DataFrame(contribution[order]).groupby(users).cumsum().to_numpy()
    counts = pd.Series(known[order].astype(int)).groupby(users).cumsum().to_numpy()
    new_group = np.r_[True, (users[1:] != users[:-1]) | (stamps[1:] != stamps[:-1])]
    new_user = np.r_[True, users[1:] != users[:-1]]
    first = np.maximum.accumulate(np.where(new_group, np.arange(len(order)), 0))
    before_sum = np.where(new_user[first][:, None], 0.0, sums[np.maximum(first - 1, 0)])
    before_n = np.where(new_user[first], 0, counts[np.maximum(first - 1, 0)])
    out_sum = np.empty_like(before_sum)
    out_n = np.empty_like(before_n)
    out_sum[order] = before_sum
    out_n[order] = before_n
    return out_sum / np.maximum(out_n, 1)[:, None], out_n


def return_pairs(
    events: pd.DataFrame,
    rows: np.ndarray,
    negative: np.ndarray,
    items: Sequence[str],
    vectors: np.ndarray,
    max_rows: int = 20_000,
    seed: int = 0,
) -> ReturnPairs:
    """The return task's rows (``rows``: a mask over events, e.g. the scored stream's purchases).

    A row's user vector is the mean of the vectors of that user's items with a timestamp
    strictly before the row's (never its own item, never a later one); rows whose user has no
    earlier item are skipped and counted. The oldest 70% of the rows in time train the head,
    the newest 30% test it.
    """
    position = {item: i for i, item in enumerate(items)}
    item_rows = events["item_id"].map(position).fillna(-1).to_numpy(dtype=int)
    user_vectors, history = past_user_vectors(events, item_rows, vectors)
    candidates = rows & (item_rows >= 0)
    chosen = np.flatnonzero(candidates & (history > 0))
    no_history = int((candidates & (history == 0)).sum())
    if len(chosen) > max_rows:
        chosen = np.sort(np.random.default_rng(seed).choice(chosen, max_rows, replace=False))
    train = np.arange(len(chosen)) < int(TRAIN_SHARE * len(chosen))  # events are in time order
    return ReturnPairs(
        users=user_vectors[chosen],
        items=vectors[item_rows[chosen]],
        labels=negative[chosen].astype(int),
        train=train,
        no_history=no_history,
    )


def cooccurrence_pairs(
    records: Sequence[ExampleRecord],
    items: Sequence[str],
    vectors: np.ndarray,
    max_pairs: int = 10_000,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(a vectors, b vectors, labels, train mask): b followed a in a session (1) or b is a
    random item (0).

    ``records`` are in time order; each positive gets its negative at the same place in time.
    The oldest 70% of the pairs train and the newest 30% test, and a test pair whose
    unordered {a, b} also occurs in training is dropped, so a head cannot score by
    remembering pairs.
    """
    rng = np.random.default_rng(seed)
    position = {item: i for i, item in enumerate(items)}
    pairs = [
        (position[r["prefix"][-1]], position[r["item_id"]])
        for r in records
        if r.get("prefix") and r["prefix"][-1] in position and r["item_id"] in position
    ]
    if len(pairs) > max_pairs:
        pairs = [pairs[i] for i in np.sort(rng.choice(len(pairs), max_pairs, replace=False))]
    rows: list[tuple[int, int, int]] = []  # (a, b, label), time order
    for a, b in pairs:
        other = int(rng.integers(len(items)))
        while other in (a, b) and len(items) > 2:
            other = int(rng.integers(len(items)))
        rows += [(a, b, 1), (a, other, 0)]
    cut = int(TRAIN_SHARE * len(pairs)) * 2  # a positive and its negative stay together
    seen = {frozenset((a, b)) for a, b, _ in rows[:cut]}
    kept = rows[:cut] + [row for row in rows[cut:] if frozenset(row[:2]) not in seen]
    a_rows = np.array([r[0] for r in kept], dtype=int)
    b_rows = np.array([r[1] for r in kept], dtype=int)
    labels = np.array([r[2] for r in kept], dtype=int)
    train = np.arange(len(kept)) < cut
    return vectors[a_rows], vectors[b_rows], labels, train
