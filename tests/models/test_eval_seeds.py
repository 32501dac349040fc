"""The seeds tool (docs/evaluation.md's tables): every recommender of `onevec eval`'s comparison,
the seed-dependent ones once per seed, the others once, on a real slice of MovieLens-100k (the
first 2,000 ratings)."""

from __future__ import annotations

import re

from onevec.streams.tools.evaluate.seeds import measure, table

SEEDED = {
    "onevec live model",
    "session model, frozen",
    "skip-gram, frozen",
    "GRU4Rec, frozen",
    "GRU4Rec, retrained",
    "random",
}


def test_measure_runs_the_seeded_models_per_seed_and_the_rest_once() -> None:
    measured = measure("movielens-100k", [0, 1], limit=2_000, stage=lambda _: None)
    assert measured.events == 2_000 and measured.scored > 1_000 and measured.repeat_share == 0.0
    fixed = {"session-kNN", "V-SKNN", "item-to-item transitions", "recent popularity", "P-Pop", "TIFU-KNN"}
    assert set(measured.scores) == SEEDED | fixed
    for name, runs in measured.scores.items():
        assert len(runs) == (2 if name in SEEDED else 1), name
        assert all(0 <= mrr <= hr <= 1 for hr, mrr in runs)
    assert "validation" in measured.settings["V-SKNN"]
    rendered = table(measured)
    assert re.search(r"^\| onevec live model \| 0\.\d{3} \(0\.\d{3}-0\.\d{3}\) \| ", rendered, re.M)
    assert re.search(r"^\| V-SKNN \| 0\.\d{3} \| 0\.\d{3} \| 1 \| k=", rendered, re.M)
