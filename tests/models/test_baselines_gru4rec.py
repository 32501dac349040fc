"""GRU4Rec learns an order that co-occurrence cannot tell, frozen and retrained as scheduled."""

from __future__ import annotations

import pytest

from onevec.models.evaluation.baselines import ItemTransitions
from onevec.models.evaluation.gru4rec import GRU4Rec
from onevec.models.evaluation.harness import run_prequential
from tests.models.baseline_streams import query, sessions

# a b c and d b e: after (a, b) comes c, after (d, b) comes e. The last click alone (b) is
# followed by c and by e equally often: only the session's first click tells which.
FORWARD, BACKWARD = ["a", "b", "c"], ["d", "b", "e"]


@pytest.mark.parametrize(
    "negatives",
    [
        pytest.param(2048, id="full softmax"),
        pytest.param(4, id="sampled negatives"),  # 25 items > 4 drawn + a batch of 8
    ],
)
def test_gru4rec_ranks_the_learned_order_first(negatives: int) -> None:
    filler = [(f"f{n}", [f"x{n % 10}", f"x{n % 10 + 10}"]) for n in range(20)]  # 20 more items
    history = sessions(*[("u", FORWARD), ("v", BACKWARD)] * 40, *filler)
    stream = sessions(*[("u", FORWARD), ("v", BACKWARD)] * 3, start=1e4, prefix="t")
    model = GRU4Rec(hidden=16, epochs=30, lr=0.01, batch_size=8, dropout=0.0, negatives=negatives)
    result = run_prequential([model, ItemTransitions()], history + stream, history=len(history), k=1)
    assert result.hr("GRU4Rec, frozen") == 1.0  # every next item ranked first
    # transitions from the last click get one of c and e wrong after b: 3 of 4 examples right
    assert result.hr("item-to-item transitions") == 0.75


def test_gru4rec_scores_unknown_items_and_prefixes_lowest() -> None:
    model = GRU4Rec(hidden=8, epochs=2)
    model.fit_history(sessions(*[("u", ["a", "b"])] * 5))
    scores = model.score([query(("a",)), query(("never seen",))], ["b", "new"])
    assert scores[0, 0] > scores[0, 1]  # an item it never learned scores below every known one
    assert scores[1, 0] == scores[1, 1]  # nothing known in the prefix: no item preferred


def test_gru4rec_retrains_from_scratch_at_the_given_times() -> None:
    model = GRU4Rec(hidden=8, epochs=1, retrain_at=[1000.0, 2000.0])
    model.fit_history(sessions(*[("u", ["a", "b"])] * 5))
    assert model.name == "GRU4Rec, retrained" and model.retrains == 0
    model.learn(sessions(("u", ["e", "f"]), start=1500.0, prefix="t"))  # passes 1000
    assert model.retrains == 1 and "e" in model.items.column
    model.learn(sessions(("u", ["g", "h"]), start=1600.0, prefix="r"))  # 2000 not reached
    assert model.retrains == 1 and "g" not in model.items.column
    frozen = GRU4Rec(hidden=8, epochs=1)
    frozen.fit_history(sessions(("u", ["a", "b"])))
    frozen.learn(sessions(("u", ["e", "f"]), start=1500.0, prefix="t"))
    assert frozen.retrains == 0 and "e" not in frozen.items.column
