"""The prequential harness and the frozen-vector tasks: known answers on constructed streams,
no peeking, and no leaks (a task cannot score by reading the future or by remembering pairs)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from onevec.models.clickstream.examples import ExampleRecord
from onevec.models.evaluation.baselines import ItemTransitions, RandomScores, RecentPopularity
from onevec.models.evaluation.harness import (
    PeekingError,
    PrequentialLedger,
    Query,
    rank_targets,
    run_prequential,
)
from onevec.models.evaluation.neighbours import SessionKNN
from onevec.models.evaluation.tasks import (
    compare_heads,
    cooccurrence_pairs,
    past_user_vectors,
    purchase_similarity,
    return_pairs,
)
from onevec.models.ranking import tie_priority
from tests.models.baseline_streams import sessions as user_sessions


def stream(sessions: list[list[str]]) -> list[ExampleRecord]:
    """Example records for whole sessions, one after the other in time, each of its own user."""
    return user_sessions(*[(f"u{number}", items) for number, items in enumerate(sessions)])


def test_known_ranks_on_a_constructed_stream() -> None:
    # History: "a" is always followed by "b". The stream then shows a new pattern c -> d twice.
    records = stream([["a", "b"]] * 10 + [["a", "b"], ["c", "d"], ["c", "d"], ["a", "b"]])
    result = run_prequential(
        [ItemTransitions(), RecentPopularity(window=1000), SessionKNN(), RandomScores()],
        records,
        history=20,
        batch_size=2,  # one session per batch: each is learned before the next is scored
        k=3,
    )
    # a -> b is known; d cannot be ranked before it was ever seen (a miss for every model);
    # the second time, transitions know c -> d (rank 1), while popularity ranks d behind
    # a and b (11 clicks each vs 1), the session's own c being excluded: rank 3.
    assert result.ranks["item-to-item transitions"].tolist() == [1, 0, 1, 1]
    assert result.ranks["recent popularity"].tolist() == [1, 0, 3, 1]
    # SKNN: the earlier c-d session is the only neighbour of the second one.
    assert result.ranks["session-kNN"].tolist() == [1, 0, 1, 1]
    assert result.hr("item-to-item transitions") == 0.75
    assert result.mrr("recent popularity") == pytest.approx((1 + 1 / 3 + 1) / 4)
    assert result.ranks["random"][1] == 0  # the unseen target is a miss for everyone


def test_ties_do_not_give_the_target_a_free_rank() -> None:
    # Every candidate scores the same: the rank comes from the item's fixed priority (a hash of
    # its id; tests/models/test_prequential.py pins the rule on a table of tied scores).
    candidates = [f"i{n}" for n in range(100)]
    column = {item: n for n, item in enumerate(candidates)}
    priority = tie_priority(candidates)
    queries = [Query("s", "u", ("i0",), 0.0)] * 99
    ranks = rank_targets(np.zeros((99, 100)), queries, candidates[1:], column, priority, k=1000)
    expected = [1 + int((priority[1:] > priority[c]).sum()) for c in range(1, 100)]
    assert ranks.tolist() == expected
    assert sorted(ranks.tolist()) == list(range(1, 100))  # a permutation: the mean rank is the middle


class Spy:
    """Records every score and learn call by example identity (session, position)."""

    name = "spy"

    def __init__(self) -> None:
        self.log: list[tuple[str, tuple[str, int]]] = []
        self.learned: set[tuple[str, int]] = set()

    def fit_history(self, records: list[dict[str, Any]]) -> None:
        self.learned.update((r["session_id"], len(r["prefix"])) for r in records)

    def score(self, queries: Sequence[Query], candidates: Sequence[str]) -> np.ndarray:
        for query in queries:
            key = (query.session_id, len(query.prefix))
            assert key not in self.learned, f"{key} is scored after it was learned"
            self.log.append(("score", key))
        return np.zeros((len(queries), len(candidates)))

    def learn(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            key = (record["session_id"], len(record["prefix"]))
            self.learned.add(key)
            self.log.append(("learn", key))


def test_every_example_is_scored_before_it_is_learned() -> None:
    records = stream([["a", "b", "c", "d"], ["b", "c"], ["a", "c", "e"]] * 5)
    spy = Spy()
    result = run_prequential([spy, ItemTransitions()], records, history=6, batch_size=4)
    scored = [key for verb, key in spy.log if verb == "score"]
    learned = [key for verb, key in spy.log if verb == "learn"]
    assert len(scored) == len(result.timestamps) == sum(bool(r["prefix"]) for r in records[6:])
    assert len(learned) == len(records) - 6
    first_learned = {key: spy.log.index(("learn", key)) for key in learned}
    assert all(spy.log.index(("score", key)) < first_learned[key] for key in scored)


def test_the_ledger_refuses_training_before_scoring() -> None:
    ledger = PrequentialLedger()
    ledger.score([0, 1])
    ledger.learn([0, 1, 2], scorable=[0, 1])  # 2 has an empty prefix: nothing to score
    with pytest.raises(PeekingError):
        ledger.learn([3, 4], scorable=[3, 4])  # never scored
    with pytest.raises(PeekingError):
        ledger.score([1])  # already learned: scoring it now would peek


def unit_rows(rng: np.random.Generator, n: int, dim: int = 16) -> np.ndarray:
    rows = rng.normal(size=(n, dim))
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_purchase_auc_compares_items_of_the_same_session() -> None:
    # 60 sessions of 8 items; each session's items lie around its own direction, and which of
    # them are "purchased" has nothing to do with the vectors. Against a random catalogue
    # item (the leaky comparison) every purchased item looks close to its session; against
    # the session's own other items it cannot.
    rng = np.random.default_rng(0)
    sessions, size, dim = 60, 8, 16
    centres = unit_rows(rng, sessions, dim)
    vectors = np.repeat(centres, size, axis=0) + 0.3 * rng.normal(size=(sessions * size, dim))
    items = [f"i{n}" for n in range(sessions * size)]
    events = pd.DataFrame(
        {
            "session_id": np.repeat([f"s{n}" for n in range(sessions)], size),
            "item_id": items,
            "timestamp": np.arange(sessions * size, dtype=float),
        }
    )
    positive = rng.random(len(events)) < 0.5
    scored = np.ones(len(events), dtype=bool)
    result = purchase_similarity(events, positive, scored, items, {"v": vectors})
    assert abs(result.aucs["v"] - 0.5) < 0.1

    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    session_of = np.repeat(np.arange(sessions), size)
    centre = np.stack([unit[session_of == s].mean(0) for s in range(sessions)])[session_of]
    outside = unit[(np.arange(len(items)) + 3 * size) % len(items)]  # an item of another session
    leaky = np.r_[(unit * centre).sum(1)[positive], (outside * centre).sum(1)[positive]]
    assert roc_auc_score(np.r_[np.ones(positive.sum()), np.zeros(positive.sum())], leaky) > 0.95

    # Now the purchased items of a session share a direction and the others do not: found.
    # Sessions in the history (even partly) are left out: there the pattern is inverted.
    vectors = unit_rows(rng, len(items), dim)
    vectors[positive] = centres[session_of[positive]] + 0.3 * rng.normal(size=(positive.sum(), dim))
    inverted = (session_of < 10) & ~positive
    vectors[inverted] = centres[session_of[inverted]]
    scored = np.arange(len(events)) >= 9 * size + 3  # the cut falls inside session 9
    result = purchase_similarity(events, positive, scored, items, {"v": vectors})
    assert result.sessions == sessions - 10
    assert result.purchased == positive[session_of >= 10].sum()
    # (A session with a single purchased item carries no signal: its rest is all random.)
    assert result.aucs["v"] > 0.8


def test_head_pairs_split_in_time_and_share_no_pair() -> None:
    # Item pairs with random vectors, each seen many times: only remembering a pair could tell
    # its following item from a random one. The newest 30% of the stream repeats old pairs
    # and brings new ones.
    rng = np.random.default_rng(1)
    items = [f"i{n}" for n in range(300)]
    vectors = unit_rows(rng, len(items))
    pairs = [(items[a], items[b]) for a, b in rng.choice(len(items), size=(400, 2)) if a != b]
    drawn = np.r_[rng.integers(len(pairs) // 2, size=2100), rng.integers(len(pairs), size=900)]
    records = [{"prefix": [pairs[i][0]], "item_id": pairs[i][1]} for i in drawn]
    a, b, labels, train = cooccurrence_pairs(records, items, vectors, max_pairs=3000, seed=0)
    key = [frozenset((x.tobytes(), y.tobytes())) for x, y in zip(a, b, strict=True)]
    train_keys = {k for k, t in zip(key, train, strict=True) if t}
    assert not train_keys & {k for k, t in zip(key, train, strict=True) if not t}
    assert train[: train.sum()].all() and not train[train.sum() :].any()  # oldest rows train
    assert train.sum() == 2 * int(0.7 * 3000)
    assert 0 < labels[~train].sum() < 900  # repeated pairs left out of the test, new ones kept
    # Held-out pairs are new pairs: nothing to remember, so no head beats chance by much.
    for head, auc in compare_heads(a, b, labels, train).items():
        assert auc < 0.6, head
    # The leaky protocol (every pair kept, a random 70/30 split) lets the MLP remember pairs.
    column = {item: n for n, item in enumerate(items)}
    left = np.array([column[r["prefix"][0]] for r in records] * 2)
    right = np.r_[[column[r["item_id"]] for r in records], rng.integers(len(items), size=len(records))]
    leaky_labels = np.r_[np.ones(len(records)), np.zeros(len(records))].astype(int)
    leaky = compare_heads(vectors[left], vectors[right], leaky_labels, rng.random(len(left)) < 0.7)
    assert leaky["concatenation, MLP"] > 0.75


def test_return_user_vector_only_reads_the_past() -> None:
    # One user: a at t=1, b and c together at t=2, d at t=3.
    events = pd.DataFrame(
        {
            "user_id": ["u", "v", "u", "u", "u"],
            "item_id": ["a", "a", "b", "c", "d"],
            "timestamp": [1, 1, 2, 2, 3],
        }
    )
    vectors = np.eye(4)
    users, counts = past_user_vectors(events, np.array([0, 0, 1, 2, 3]), vectors)
    assert counts.tolist() == [0, 0, 1, 1, 3]
    assert users[2].tolist() == users[3].tolist() == [1, 0, 0, 0]  # a only: not c (same second)
    assert np.allclose(users[4], [1 / 3, 1 / 3, 1 / 3, 0])  # never d itself

    # Each user's last item "gives the outcome away": its vector holds the label of the
    # user's earlier row. A user vector over all the user's items reads it; one over the
    # past only cannot.
    rng = np.random.default_rng(2)
    n_users, dim = 600, 8
    labels = rng.random(n_users) < 0.5
    catalogue = unit_rows(rng, 2 * n_users, dim)
    catalogue[n_users:, 0] = np.where(labels, 5.0, -5.0)  # the "future" items
    rows = []
    for u in range(n_users):
        rows += [
            (f"u{u}", f"i{rng.integers(n_users)}", 10 * u, False),
            (f"u{u}", f"i{u}", 10 * u + 1, labels[u]),
        ]
        rows += [(f"u{u}", f"i{n_users + u}", 10 * u + 2, False)]
    events = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "negative"])
    items = [f"i{n}" for n in range(2 * n_users)]
    pairs = return_pairs(
        events, np.ones(len(events), dtype=bool), events["negative"].to_numpy(), items, catalogue
    )
    assert pairs.no_history == n_users  # every user's first row
    assert len(pairs.labels) == 2 * n_users
    for head, auc in compare_heads(pairs.users, pairs.items, pairs.labels, pairs.train).items():
        assert auc < 0.62, head
    # The leaky user vector (the mean of the user's other items, later ones included) reads it.
    own = catalogue[events["item_id"].str[1:].astype(int)]
    totals = pd.DataFrame(own).groupby(events["user_id"]).transform("sum").to_numpy()
    leaky_users = (totals - own) / 2
    keep = np.arange(len(events)) % 3 != 0  # the same rows as above
    leaky = compare_heads(leaky_users[keep], own[keep], pairs.labels, pairs.train)
    assert leaky["concatenation, linear"] > 0.9
