"""The synthetic scale stream (synthetic items and clicks; session shapes from MovieLens-100k):
its popularity follows the Zipf exponent asked for, its sessions, in-session gaps and idle gaps
come from the real stream's values, it is lazy, time-ordered and the same for the same seed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from onevec.models.datasets import BUILTIN_DATASETS, iter_events, load_catalog, load_events, session_shapes
from onevec.models.synthetic_scale import CHUNK_EVENTS, ScaleSpec, scale_event_chunks


def stream(name: str) -> pd.DataFrame:
    return pd.concat(iter_events(name), ignore_index=True)


def close_to_any(values: np.ndarray, support: np.ndarray, tolerance: float = 1e-3) -> np.ndarray:
    """Per value: whether one of ``support`` is within ``tolerance`` (timestamps near 1.6e9 s
    carry float rounding of ~1e-7 s)."""
    support = np.unique(support)
    at = np.clip(np.searchsorted(support, values), 1, len(support) - 1)
    nearest = np.minimum(np.abs(values - support[at - 1]), np.abs(values - support[at]))
    return nearest <= tolerance


@pytest.mark.parametrize("exponent", [0.8, 1.2])
def test_item_popularity_fits_the_zipf_exponent(exponent: float) -> None:
    events = stream(f"synthetic-scale:items=5000,events=300000,zipf={exponent},seed=3")
    counts = np.sort(events["item_id"].value_counts().to_numpy())[::-1]
    ranks = np.arange(1, 101)  # the head, where every rank has hundreds of clicks
    slope = np.polyfit(np.log(ranks), np.log(counts[:100]), 1)[0]
    assert abs(-slope - exponent) < 0.1, slope
    assert events["item_id"].nunique() > 1000  # the tail is drawn too


def test_sessions_and_gaps_are_drawn_from_the_real_stream() -> None:
    shapes = session_shapes()
    events = stream("synthetic-scale:items=2000,events=200000,seed=1")
    assert events["timestamp"].is_monotonic_increasing
    # A session can be cut short only by the end of the stream, and only if it was still
    # running: its events are at most one in-session gap apart.
    last = events.groupby("session_id")["timestamp"].max()
    done = last.index[last < events["timestamp"].iloc[-1] - shapes.in_session_gaps.max()]
    complete = events[events["session_id"].isin(done)]
    lengths = complete.groupby("session_id").size().to_numpy()
    assert len(lengths) > 0.9 * events["session_id"].nunique()
    assert np.isin(lengths, shapes.lengths).all()
    ordered = complete.sort_values(["session_id", "timestamp"], kind="stable")
    same = ordered["session_id"].to_numpy()[1:] == ordered["session_id"].to_numpy()[:-1]
    gaps = np.diff(ordered["timestamp"].to_numpy())[same]
    assert close_to_any(gaps, shapes.in_session_gaps).all()
    spans = complete.groupby("session_id").agg(user=("user_id", "first"), start=("timestamp", "min"))
    spans["end"] = last[spans.index]
    spans = spans.sort_values(["user", "start"])
    next_same = spans["user"].to_numpy()[1:] == spans["user"].to_numpy()[:-1]
    idle = (spans["start"].to_numpy()[1:] - spans["end"].to_numpy()[:-1])[next_same]
    assert len(idle) > 100 and close_to_any(idle, shapes.between_sessions).all()
    # Over many sessions the lengths follow the real distribution (its mean within 15%).
    assert abs(lengths.mean() / shapes.lengths.mean() - 1) < 0.15


def test_the_same_seed_gives_the_same_events_and_a_longer_stream_extends_it() -> None:
    first = stream("synthetic-scale:items=1000,events=40000,seed=7")
    again = stream("synthetic-scale:items=1000,events=40000,seed=7")
    # The same users (by default their number follows the events'): the first events are the same.
    users = ScaleSpec(events=40000).users_for(session_shapes())
    longer = stream(f"synthetic-scale:items=1000,events=90000,users={users},seed=7")
    other = stream("synthetic-scale:items=1000,events=40000,seed=8")
    pd.testing.assert_frame_equal(first, again)
    pd.testing.assert_frame_equal(first, longer.head(len(first)))
    assert len(first) == 40000 and len(longer) == 90000
    assert not first["item_id"].equals(other["item_id"])


def test_ten_million_events_come_frame_by_frame() -> None:
    """The default size (1M items, 10M events) starts at once, a frame of about CHUNK_EVENTS."""
    frames = iter_events("synthetic-scale")
    first, second = next(frames), next(frames)
    assert 0 < len(first) < 2 * CHUNK_EVENTS and 0 < len(second) < 2 * CHUNK_EVENTS
    assert first["timestamp"].iloc[-1] <= second["timestamp"].iloc[0]
    assert first["item_id"].str.startswith("item-").all()


def test_it_is_a_data_set_name_with_a_catalogue_of_its_items() -> None:
    name = "synthetic-scale:items=3000,events=20000,users=50"
    assert name in BUILTIN_DATASETS and "synthetic-scale" in BUILTIN_DATASETS
    assert "synthetic-scale" not in list(BUILTIN_DATASETS)  # listed: the real data sets only
    events = load_events(name)
    catalog = load_catalog(name)
    assert len(events) == 20000 and events["user_id"].nunique() <= 50
    assert len(catalog) == 3000 and set(events["item_id"]) <= set(catalog["item_id"])
    assert {"category", "brand"} <= set(catalog.columns)
    with pytest.raises(ValueError, match="items="):
        load_events("synthetic-scale:itms=10")
    assert ScaleSpec.parse("movielens-100k") is None
    assert ScaleSpec.parse(ScaleSpec(items=5, events=7, seed=2).name) == ScaleSpec(items=5, events=7, seed=2)


def test_the_frames_of_one_stream_do_not_depend_on_how_they_are_read() -> None:
    spec = ScaleSpec(items=500, events=5000, seed=4)
    whole = pd.concat(scale_event_chunks(spec, session_shapes()), ignore_index=True)
    assert whole.equals(load_events(spec.name)[whole.columns])
