"""Hyper-parameters are chosen on the validation slice of the history: the scored stream is never
seen, and the same history gives the same choices whatever stream follows it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from onevec.models.clickstream.examples import ExampleRecord
from onevec.models.evaluation.harness import Query
from onevec.models.evaluation.lineup import baselines, retrain_affordable, retrain_times
from onevec.models.evaluation.tuning import grid, label, tune
from tests.models.baseline_streams import sessions


class Spy:
    """Remembers the newest timestamp of anything it was handed or asked about; ranks by ``bias``."""

    newest = 0.0

    def __init__(self, bias: float, name: str) -> None:
        self.bias, self.name = bias, name

    def _saw(self, timestamps: Sequence[float]) -> None:
        Spy.newest = max(Spy.newest, *timestamps)

    def fit_history(self, records: list[ExampleRecord]) -> None:
        self._saw([r["timestamp"] for r in records])

    def learn(self, records: list[ExampleRecord]) -> None:
        self._saw([r["timestamp"] for r in records])

    def score(self, queries: Sequence[Query], candidates: Sequence[str]) -> np.ndarray:
        self._saw([q.timestamp for q in queries])
        # bias 1 ranks items by name, backwards for -1: only one finds the "b after a" pattern
        return np.tile(self.bias * -np.arange(len(candidates), dtype=np.float64), (len(queries), 1))


def stream(scored: list[str]) -> tuple[list[ExampleRecord], int]:
    history = sessions(*[("u", ["a", "b", "c"])] * 10)
    return history + sessions(*[("v", scored)] * 5, start=1000.0, prefix="t"), len(history)


def test_tune_scores_the_last_part_of_the_history_only() -> None:
    records, history = stream(["c", "b", "a"])
    Spy.newest = 0.0
    tuned = tune(Spy, grid(bias=[-1.0, 1.0]), records[:history])
    assert Spy.newest <= records[history - 1]["timestamp"]
    # fit 80% of the history (24 records), score the rest: 4 examples with a prefix
    assert tuned.examples == 4 and set(tuned.scores) == {"bias=-1.0", "bias=1.0"}
    best = max(tuned.scores.values())
    assert tuned.scores[label(tuned.chosen)] == best


def test_baselines_choose_the_same_whatever_the_scored_stream() -> None:
    choices = []
    for scored in (["a", "b", "c"], ["c", "x", "y", "b"]):
        records, history = stream(scored)
        lineup = baselines(records, history, windows=4, quick=True, retrain=False)
        choices.append({name: (t.chosen, t.scores) for name, t in lineup.tuned.items()})
    assert choices[0] == choices[1]


def test_retrain_schedule_and_budget() -> None:
    records = sessions(*[("u", ["a", "b"])] * 50)  # timestamps 1..100
    history = 20
    # scorable timestamps after the history: the even ones from 22 to 100; 4 windows
    assert retrain_times(records, history, windows=4) == [41.5, 61.0, 80.5]
    # events before each boundary: 41 + 60 + 80 = 181, times 10 epochs
    assert retrain_affordable(records, history, 4, epochs=10, budget=1810)
    assert not retrain_affordable(records, history, 4, epochs=10, budget=1809)
