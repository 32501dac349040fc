"""Every baseline (and the live model) beats random under the prequential protocol on real
MovieLens-100k events (a slice: the first 20,000 ratings in time, derived sessions)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from onevec.models.catalog import attribute_tokens, load_attributes
from onevec.models.datasets import load_events
from onevec.models.evaluation.baselines import (
    FrozenSkipGram,
    ItemTransitions,
    LiveModel,
    RandomScores,
    RecentPopularity,
)
from onevec.models.evaluation.gru4rec import GRU4Rec
from onevec.models.evaluation.harness import PrequentialResult, run_prequential
from onevec.models.evaluation.neighbours import VSKNN, SessionKNN
from onevec.models.evaluation.personal import TIFUKNN, PersonalPopularity
from onevec.models.online.config import ModelConfig
from onevec.models.pretrain import session_examples

EVENTS = 20_000


@pytest.fixture(scope="module")
def result() -> Iterator[PrequentialResult]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as `onevec eval` does: small steps, shared cores
    records = session_examples(load_events("movielens-100k").head(EVENTS))
    tokens = {item: attribute_tokens(a) for item, a in load_attributes("movielens-100k").items()}
    config = ModelConfig(seed=0)
    recommenders = [
        LiveModel(config, tokens, history_epochs=1),
        FrozenSkipGram(config, epochs=2),
        SessionKNN(),
        VSKNN(),
        ItemTransitions(),
        RecentPopularity(),
        PersonalPopularity(),
        TIFUKNN(),
        GRU4Rec(epochs=3, lr=0.002),
        RandomScores(seed=0),
    ]
    try:
        yield run_prequential(recommenders, records, history=int(0.3 * len(records)))
    finally:
        torch.set_num_threads(threads)


def test_every_baseline_beats_random(result: PrequentialResult) -> None:
    chance_hr, chance_mrr = result.hr("random"), result.mrr("random")
    print()
    for name in result.ranks:
        print(f"{name:28s} HR@20 {result.hr(name):.4f}  MRR@20 {result.mrr(name):.4f}")
    assert len(result.timestamps) > 10_000
    for name in result.ranks:
        if name != "random":
            # Well clear of chance, not by a hair: at least twice its hit rate.
            assert result.hr(name) > 2 * chance_hr, name
            assert result.mrr(name) > 2 * chance_mrr, name


def test_windows_partition_the_scored_examples(result: PrequentialResult) -> None:
    windows = result.by_window(6)
    assert sum(w["examples"] for w in windows) == len(result.timestamps)
    assert all(a["end"] == b["start"] for a, b in zip(windows, windows[1:], strict=False))
