"""V-SKNN gives the scores worked out by hand on a constructed stream, through the harness too."""

from __future__ import annotations

import math

import numpy as np
import pytest

from onevec.models.evaluation.harness import run_prequential
from onevec.models.evaluation.neighbours import VSKNN, SessionKNN
from tests.models.baseline_streams import query, sessions

# Three past sessions in time order; the current one has clicked a, then b.
HISTORY = sessions(("u", ["a", "x"]), ("v", ["b", "y"]), ("w", ["a", "b", "z"]))
ITEMS = ["a", "x", "b", "y", "z"]


def hand_scores(neighbours: dict[str, float], idf_weight: float) -> list[float]:
    """Scores per ITEMS from each neighbour's similarity / step, worked out by hand below."""
    holding = {"a": 2, "x": 1, "b": 2, "y": 1, "z": 1}
    members = {"s0": {"a", "x"}, "s1": {"b", "y"}, "s2": {"a", "b", "z"}}
    return [
        (1 + idf_weight * math.log(3 / holding[item]))
        * sum(weight for session, weight in neighbours.items() if item in members[session])
        for item in ITEMS
    ]


def test_vsknn_scores_by_hand() -> None:
    # Current session (a, b): a weighs 1/2 (position 1 of 2), b weighs 2/2.
    # Similarity = summed weight of shared items: s0 {a} 0.5, s1 {b} 1.0, s2 {a, b} 1.5.
    # Step back to the newest shared click: s0 shares a (2 clicks back), s1 and s2 share b (1).
    # So each neighbour adds similarity / step: s0 0.25, s1 1.0, s2 1.5.
    model = VSKNN(k=3, sample=10, idf_weight=1.0)
    model.fit_history(HISTORY)
    scores = model.score([query(("a", "b"))], ITEMS)[0]
    assert scores == pytest.approx(hand_scores({"s0": 0.25, "s1": 1.0, "s2": 1.5}, idf_weight=1.0))
    # k = 2 keeps the two most similar (s2, s1): x, held only by s0, scores nothing.
    model.k = 2
    assert model.score([query(("a", "b"))], ITEMS)[0] == pytest.approx(
        hand_scores({"s1": 1.0, "s2": 1.5}, idf_weight=1.0)
    )
    # sample = 1 looks only at the most recent session sharing an item (s2), however similar
    # the older ones are; idf_weight 0 leaves the plain sums.
    model.k, model.sample, model.idf_weight = 3, 1, 0.0
    assert model.score([query(("a", "b"))], ITEMS)[0] == pytest.approx(hand_scores({"s2": 1.5}, 0.0))


def test_vsknn_weighs_the_newest_click_most() -> None:
    # p only co-occurs with x (the older click), q only with a (the newer one); SKNN cannot tell.
    history = sessions(("u", ["x", "p"]), ("v", ["a", "q"]))
    vsknn, sknn = VSKNN(idf_weight=0.0), SessionKNN()
    for model in (vsknn, sknn):
        model.fit_history(history)
    assert np.diff(vsknn.score([query(("x", "a"))], ["p", "q"])[0])[0] > 0
    assert np.diff(sknn.score([query(("x", "a"))], ["p", "q"])[0])[0] == 0


def test_vsknn_known_ranks_through_the_harness() -> None:
    # The scored session a, b, z arrives in one batch: both of its examples are ranked before it
    # is learned. After (a): s0 and s2 add 1 each: x and z score 1 + log 3, b scores
    # 1 + log 1.5: b ranks 3rd. After (a, b): z scores 1.5 (1 + log 3), y 1.0 (1 + log 3),
    # x 0.25 (1 + log 3) (a and b excluded): z ranks 1st.
    records = HISTORY + sessions(("u", ["a", "b", "z"]), start=100.0, prefix="t")
    result = run_prequential([VSKNN(k=3, sample=10, idf_weight=1.0)], records, history=len(HISTORY), k=5)
    assert result.ranks["V-SKNN"].tolist() == [3, 1]


def test_the_current_session_is_never_its_own_neighbour() -> None:
    model = VSKNN(idf_weight=0.0)
    model.fit_history(sessions(("u", ["a", "b"])))  # session s0, still going on
    assert model.score([query(("a", "b"), session="s0")], ["a", "b"]).tolist() == [[0.0, 0.0]]
