"""Prequential scoring on a constructed stream where the right answer is obvious."""

from __future__ import annotations

from onevec.models.ranking import PrequentialScore, prequential_popularity


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
