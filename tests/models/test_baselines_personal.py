"""P-Pop and TIFU-KNN: known answers on constructed streams, and no baseline reads a user's
future (a check that a clairvoyant P-Pop fails)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from onevec.models.clickstream.examples import ExampleRecord
from onevec.models.evaluation.baselines import ItemTransitions, RecentPopularity
from onevec.models.evaluation.gru4rec import GRU4Rec
from onevec.models.evaluation.harness import Recommender, run_prequential
from onevec.models.evaluation.neighbours import VSKNN, SessionKNN
from onevec.models.evaluation.personal import TIFUKNN, PersonalPopularity, repeat_mask, repeat_share
from tests.models.baseline_streams import query, sessions


def test_personal_popularity_counts_decay_per_session() -> None:
    model = PersonalPopularity(decay=0.5)
    model.fit_history(sessions(("u", ["x", "y"]), ("u", ["x"]), ("u", ["y"]), *[("v", ["z"])] * 9))
    # The next session of u is its 4th: x had 3 and 2 sessions ago, y 3 and 1 ago.
    scores = model.score([query(("q",), user="u")], ["x", "y", "z"])[0]
    assert scores[:2] == pytest.approx([0.5**3 + 0.5**2, 0.5**3 + 0.5], abs=1e-9)
    # z (9 clicks, none of u's) only breaks ties: below the least personal evidence that counts
    assert 0 < scores[2] < 0.5**40


def test_personal_popularity_counts_the_current_session_undecayed() -> None:
    model = PersonalPopularity(decay=0.5)
    model.fit_history(sessions(("u", ["x"]), ("u", ["y"])))  # s1 is going on
    assert model.score([query(("y",), user="u", session="s1")], ["x", "y"])[0] == pytest.approx(
        [0.5, 1.0], abs=1e-9
    )


def test_tifu_knn_user_vector_by_hand() -> None:
    # Baskets {a}, {b}, {c}; groups of 2: ({a}, {b}), ({c}). Within 0.5, across 0.5:
    # group 1 = (0.5 a + 1 b) / 2, group 2 = c; user = (0.5 group 1 + 1 group 2) / 2.
    model = TIFUKNN(group_size=2, within=0.5, across=0.5)
    model.fit_history(sessions(("u", ["a"]), ("u", ["b"]), ("u", ["c"])))
    assert model.user_vector("u") == pytest.approx([0.0625, 0.125, 0.5])


def test_tifu_knn_blends_the_user_with_its_nearest_users() -> None:
    model = TIFUKNN(k=1, alpha=0.5, group_size=1, across=1.0)
    model.fit_history(sessions(("u", ["a", "b"]), ("v", ["a", "b", "c"]), ("w", ["x", "y"])))
    # u = (a + b) / 1; its nearest user is v (a, b, c), not w: 0.5 u + 0.5 v.
    scores = model.score([query(("q",), user="u")], ["a", "b", "c", "x", "y"])[0]
    assert scores == pytest.approx([1.0, 1.0, 0.5, 0.0, 0.0], abs=1e-6)


def test_repeat_share_counts_items_the_user_had_before() -> None:
    records = sessions(("u", ["a", "b"]), ("u", ["c", "a"]), ("u", ["d", "e"]), ("v", ["a", "c"]))
    # Scored (after the first 2 records, non-empty prefix): c->a (had a), d->e (new), a->c (v never had c)
    assert repeat_share(records, 2) == pytest.approx(1 / 3)
    assert repeat_mask(records, 2).tolist() == [True, False, False]  # in the order they are scored


# ---- no future -----------------------------------------------------------------------------

BATCH = 4
HISTORY = 38  # the 13 past sessions
SCORED = 4  # the scored sessions' examples: ranked in batches before any future event is learned
FUTURES = (["c", "c", "c"], ["b", "b", "b"])  # every user comes back for c, or for b


def _world(future: list[str]) -> list[ExampleRecord]:
    past = sessions(
        *[(user, [item, "p", "q"]) for user, item in [("u", "a"), ("v", "b"), ("w", "c")] * 4],
        ("u", ["b", "c"]),
    )
    scored = sessions(("u", ["q", "a", "c"]), ("v", ["p", "c", "b"]), start=100.0, prefix="t")
    later = sessions(*[(user, ["p", *future]) for user in ("u", "v", "w")], start=200.0, prefix="f")
    return past + scored + later


def _scored_ranks(model: Callable[[], Recommender], future: list[str]) -> np.ndarray:
    recommender = model()
    result = run_prequential([recommender], _world(future), HISTORY, batch_size=BATCH, k=10)
    return result.ranks[recommender.name][:SCORED]


class Clairvoyant(PersonalPopularity):
    """P-Pop that was handed every event of the stream up front: it reads the users' future."""

    def __init__(self, everything: list[ExampleRecord]) -> None:
        super().__init__(decay=0.9, name="clairvoyant P-Pop")
        self.everything = everything

    def fit_history(self, records: list[ExampleRecord]) -> None:
        self.learn(self.everything)


@pytest.mark.parametrize(
    "model",
    [
        lambda: PersonalPopularity(decay=0.9),
        lambda: TIFUKNN(k=2, alpha=0.5),
        lambda: VSKNN(),
        lambda: SessionKNN(),
        lambda: ItemTransitions(),
        lambda: RecentPopularity(),
        lambda: GRU4Rec(hidden=8, epochs=2, retrain_at=[150.0, 250.0]),
    ],
    ids=["P-Pop", "TIFU-KNN", "V-SKNN", "SKNN", "transitions", "popularity", "GRU4Rec retrained"],
)
def test_a_users_future_never_changes_a_score(model: Callable[[], Recommender]) -> None:
    # Two worlds alike until the scored sessions were ranked; then every user comes back for c
    # in one and for b in the other. A model that read the future would rank c and b differently.
    first, second = (_scored_ranks(model, future) for future in FUTURES)
    assert len(first) == SCORED and (first == second).all()


def test_the_future_check_catches_a_model_that_reads_it() -> None:
    first, second = (_scored_ranks(lambda f=future: Clairvoyant(_world(f)), future) for future in FUTURES)
    assert (first != second).any()
