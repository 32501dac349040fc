"""The baselines ``onevec eval`` runs next to the live model, each with its hyper-parameters
chosen on the validation slice of the history (:mod:`~onevec.models.evaluation.tuning`).

:data:`GRIDS` lists what is searched (``quick`` searches :data:`QUICK_GRIDS`). GRU4Rec's
retrained variant (retrained from scratch at each inner boundary of the report's time windows)
costs many trainings; :func:`retrain_affordable` says where it runs by default.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from onevec.models.clickstream.examples import ExampleRecord
from onevec.models.evaluation.baselines import ItemTransitions, RecentPopularity
from onevec.models.evaluation.gru4rec import GRU4Rec
from onevec.models.evaluation.harness import Recommender, is_scorable, window_edges
from onevec.models.evaluation.neighbours import VSKNN, SessionKNN
from onevec.models.evaluation.personal import TIFUKNN, PersonalPopularity
from onevec.models.evaluation.tuning import Tuned, grid, tune

__all__ = ["GRIDS", "QUICK_GRIDS", "Lineup", "baselines", "retrain_affordable", "retrain_times"]

Factory = Callable[..., Recommender]

GRIDS: dict[str, tuple[Factory, list[dict[str, Any]]]] = {
    "session-kNN": (SessionKNN, grid(k=[50, 100, 200], sample=[500, 1000])),
    "V-SKNN": (VSKNN, grid(k=[50, 100], sample=[500, 2000], idf_weight=[0.0, 1.0, 3.0])),
    "recent popularity": (RecentPopularity, grid(window=[1000, 5000, 20000])),
    "P-Pop": (PersonalPopularity, grid(decay=[0.3, 0.5, 0.7, 0.9, 1.0])),
    "TIFU-KNN": (TIFUKNN, grid(k=[20, 100], alpha=[0.0, 0.5, 0.9], group_size=[3, 7], across=[0.6, 0.9])),
    "GRU4Rec, frozen": (GRU4Rec, grid(lr=[0.001, 0.002], epochs=[5, 10])),
}
QUICK_GRIDS: dict[str, tuple[Factory, list[dict[str, Any]]]] = {
    "session-kNN": (SessionKNN, grid(k=[100], sample=[500])),
    "V-SKNN": (VSKNN, grid(k=[100], sample=[500], idf_weight=[0.0, 1.0])),
    "recent popularity": (RecentPopularity, grid(window=[5000])),
    "P-Pop": (PersonalPopularity, grid(decay=[0.5, 1.0])),
    "TIFU-KNN": (TIFUKNN, grid(k=[100], alpha=[0.0, 0.7])),
    "GRU4Rec, frozen": (GRU4Rec, grid(lr=[0.002], epochs=[3])),
}


@dataclass
class Lineup:
    recommenders: list[Recommender]
    tuned: dict[str, Tuned]  # baseline name -> its validation choice
    retrained: bool  # whether GRU4Rec's retrained variant runs


def retrain_times(records: Sequence[ExampleRecord], history: int, windows: int) -> list[float]:
    """The inner boundaries of the report's ``windows`` time windows of the scored stream: the
    schedule of a retrain (the stream's time span, none of its contents)."""
    stamps = np.array([float(r["timestamp"]) for r in records[history:] if is_scorable(r)])
    if not len(stamps):
        return []
    return window_edges(stamps, windows)[1:-1].tolist()


# Events x epochs the retrained variant may train on in all, by default: about 3 minutes at the
# ~8,000 events/s one core trained here (ml-latest-small's first 20,000 events fit; the 100,000-
# event streams, at about 3-4 million, do not).
RETRAIN_BUDGET = 1_500_000


def retrain_affordable(
    records: Sequence[ExampleRecord], history: int, windows: int, epochs: int, budget: int = RETRAIN_BUDGET
) -> bool:
    """Whether retraining from scratch at every boundary costs at most ``budget`` events x epochs."""
    stamps = np.array([float(r["timestamp"]) for r in records])
    seen = np.searchsorted(stamps, retrain_times(records, history, windows), side="left")
    return int(seen.sum()) * epochs <= budget


def baselines(
    records: Sequence[ExampleRecord],
    history: int,
    windows: int,
    seed: int = 0,
    quick: bool = False,
    retrain: bool | None = None,
    on_tuned: Callable[[str, Tuned], None] | None = None,
) -> Lineup:
    """Every baseline, tuned on ``records[:history]``; ``retrain`` None: where affordable."""
    grids = QUICK_GRIDS if quick else GRIDS
    head = list(records[:history])
    recommenders: list[Recommender] = [ItemTransitions()]
    tuned: dict[str, Tuned] = {}
    for name, (factory, settings) in grids.items():
        seeded = partial(factory, seed=seed) if factory is GRU4Rec else factory
        tuned[name] = tune(seeded, settings, head)
        if on_tuned is not None:
            on_tuned(name, tuned[name])
        recommenders.append(seeded(**tuned[name].chosen, name=name))
    gru = tuned["GRU4Rec, frozen"].chosen
    retrained = retrain_affordable(records, history, windows, gru["epochs"]) if retrain is None else retrain
    if retrained:
        schedule = retrain_times(records, history, windows)
        recommenders.append(GRU4Rec(**gru, seed=seed, retrain_at=schedule, name="GRU4Rec, retrained"))
        tuned["GRU4Rec, retrained"] = tuned["GRU4Rec, frozen"]  # the same model, retrained
    return Lineup(recommenders, tuned, retrained)
