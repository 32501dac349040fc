"""Prequential scoring on a constructed stream where the right answer is obvious, and the one
ranking rule the live learner and the evaluation share (a table of tied scores)."""

from __future__ import annotations

import numpy as np

from onevec.models.evaluation.harness import Query, rank_targets
from onevec.models.online.config import ModelConfig
from onevec.models.online.trainer import OnlineTrainer
from onevec.models.ranking import PrequentialScore, prequential_popularity, target_ranks, tie_priority


def test_popularity_known_answer() -> None:
    # "a" is clicked three times first, so it must top the ranking for the later examples.
    stream = [([], "a"), ([], "a"), ([], "a"), (["x"], "a"), (["x"], "b"), (["a"], "b")]
    score = prequential_popularity(stream, k=1)
    # (["x"], "a"): top-1 is "a" -> hit at rank 1; (["x"], "b"): top-1 "a" -> miss;
    # (["a"], "b"): "a" excluded as already in the session, next is "x"? no: "x" was never a
    # target, so the ranking is a, b -> "b" at rank 1 -> hit.
    assert (score.scored, score.hits) == (3, 2)
    assert score.mrr == 2 / 3


def test_no_peeking_an_event_is_scored_before_it_counts() -> None:
    # A single repeated item: its first scored occurrence must miss, because it was not
    # counted yet when scored; had it trained first, it would hit.
    score = prequential_popularity([(["p"], "z"), (["p"], "z")], k=5)
    assert (score.scored, score.hits) == (2, 1)


def test_score_from_counts_but_does_not_score_the_head() -> None:
    stream = [(["p"], "a")] * 5 + [(["p"], "a")]
    score = prequential_popularity(stream, score_from=5)
    assert (score.scored, score.hits) == (1, 1)


def test_running_rates() -> None:
    score = PrequentialScore()
    for rank in (1, None, 4, None):
        score.add(rank)
    assert (score.hr, score.mrr) == (0.5, (1 + 0.25) / 4)


# ---- one ranking rule: ties ranked by a fixed priority per item id -------------------------

ITEMS = ["a", "b", "c", "d", "e", "f"]
# tie_priority orders them a > b > c > e > d > f: a hash of the id, the same in every process.
PRIORITY_ORDER = ["a", "b", "c", "e", "d", "f"]
UNIFORM = [0.0] * 6  # a count model that knows nothing
GRADED = [0.0, 1.0, 1.0, 1.0, 2.0, 0.0]  # e first, then b, c and d tied
TIED = [
    # scores of a..f, session prefix, target, expected rank
    (UNIFORM, [], "a", 1),
    (UNIFORM, [], "d", 5),  # a, b, c, e precede it: no free rank from the tie
    (UNIFORM, [], "f", 6),
    (UNIFORM, ["a"], "d", 4),  # the session's own items never rank above the target
    (GRADED, [], "b", 2),  # e scores higher
    (GRADED, [], "c", 3),  # e, then b (tied, higher priority)
    (GRADED, [], "d", 4),
    (GRADED, ["e"], "d", 3),
    (GRADED, ["b"], "c", 2),
    (GRADED, ["c"], "c", 3),  # a re-click: the target is not above itself
]


def test_tie_priority_is_a_fixed_order_of_item_ids() -> None:
    priority = dict(zip(ITEMS, tie_priority(ITEMS).tolist(), strict=True))
    assert sorted(ITEMS, key=priority.__getitem__, reverse=True) == PRIORITY_ORDER
    assert tie_priority(["d"]).tolist() == [priority["d"]]  # whatever else is ranked


def test_the_live_ranker_breaks_ties_by_item_priority() -> None:
    trainer = OnlineTrainer(ModelConfig(dim=4))
    trainer.item_encoder.item_vocab.index_many(ITEMS)
    for scores, prefix, target, rank in TIED:
        matrix = np.array(scores, dtype=np.float32)[:, None]
        for chunk_items in (6, 4, 1):  # one block, or several: the same rule
            ranks = target_ranks(
                trainer,
                [prefix],
                [target],
                sessions=np.ones((1, 1), np.float32),
                matrix=matrix,
                chunk_items=chunk_items,
            )
            assert ranks == [rank], (scores, prefix, target, chunk_items)
    assert target_ranks(
        trainer, [["a"]], ["d"], k=3, sessions=np.ones((1, 1), np.float32), matrix=np.zeros((6, 1))
    ) == [None]


def test_the_evaluation_ranks_by_the_same_rule() -> None:
    column = {item: n for n, item in enumerate(ITEMS)}
    priority = tie_priority(ITEMS)
    for scores, prefix, target, rank in TIED:
        query = Query("s", "u", tuple(prefix), 0.0)
        assert rank_targets(np.array([scores]), [query], [target], column, priority).tolist() == [rank]
