"""The built-in ml-latest-small and Instacart sample: events as DATA.md describes them, and
ml-latest-small's catalogue (title, year, genres) read as attributes."""

from __future__ import annotations

import numpy as np

from onevec.models.catalog import load_attributes
from onevec.models.datasets import BUILTIN_DATASETS, load_catalog, load_events
from onevec.models.evaluation.data import load_eval_data
from onevec.models.evaluation.personal import repeat_share
from onevec.models.pretrain import session_examples


def test_ml_latest_small_events_and_catalogue() -> None:
    events = load_events("ml-latest-small")
    assert len(events) == 100_004
    assert events["user_id"].nunique() == 671 and events["item_id"].nunique() == 9_066
    sizes = events.groupby("session_id").size()
    assert len(sizes) == 6_511 and int((sizes >= 2).sum()) == 3_420  # 30-minute gaps, DATA.md
    assert events["timestamp"].is_monotonic_increasing
    assert events["timestamp"].min() >= 788_918_400  # 1995-01-01

    catalog = load_catalog("ml-latest-small").set_index("item_id")
    assert len(catalog) == 9_066 and set(events["item_id"]) == set(catalog.index)
    toy_story = catalog.loc["1"]
    assert toy_story["title"] == "Toy Story" and toy_story["year"] == 1995
    genres = [c for c in catalog.columns if c not in ("title", "year")]
    assert {"Adventure", "Animation", "Children", "Comedy", "Fantasy"} == {
        g for g in genres if toy_story[g] == 1
    }
    assert "(no genres listed)" not in genres

    attributes = load_attributes("ml-latest-small")
    assert attributes["1"]["genre"] == ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]
    assert attributes["1"]["decade"] == "1990s" and attributes["1"]["title"] == "Toy Story"


def test_ml_latest_small_for_eval_has_rating_outcomes() -> None:
    data = load_eval_data("ml-latest-small", "ml-latest-small")
    assert data.outcome_source == "ratings (proxy)" and data.derived_sessions
    assert 0 < data.positive.mean() < 1


def test_instacart_sample_orders_are_sessions_with_constructed_times() -> None:
    events = load_events("instacart-sample")
    assert len(events) == 150_000
    assert events["user_id"].nunique() == 593 and events["item_id"].nunique() == 14_190
    assert events["session_id"].nunique() == 15_183  # one session per order
    assert set(events["event_type"]) == {"purchase"}
    # Constructed time: each user's first order is on 2017-01-01, at its hour of day; an order's
    # lines follow in cart order one second apart.
    first = events.groupby("user_id")["timestamp"].min() - 1_483_228_800
    assert ((first >= 0) & (first < 86_400)).all()
    for _, order in list(events.groupby("session_id"))[:50]:
        assert np.all(np.diff(order["timestamp"].to_numpy()) == 1.0)
    # A repeat-purchase stream: most next items the user had before.
    records = session_examples(events)
    assert repeat_share(records, int(0.3 * len(records))) > 0.6
    assert load_catalog("instacart-sample")["item_id"].nunique() == 14_190


def test_every_builtin_dataset_has_events_and_a_catalogue_of_its_items() -> None:
    for name in BUILTIN_DATASETS:
        items = set(load_events(name)["item_id"])
        assert items <= set(load_catalog(name)["item_id"]), name
