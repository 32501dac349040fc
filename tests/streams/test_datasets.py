"""Users' own events files in every documented format, and the built-in MovieLens-100k."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from onevec.models.datasets import load_catalog, load_events

ROWS = pd.DataFrame(
    {
        "user_id": [1, 1, 1, 2, 2],
        "item_id": ["a", "b", "c", "a", "d"],
        "timestamp": [1000.0, 1100.0, 9000.0, 1050.0, 1060.0],
        "event_type": ["view", "click", "purchase", "click", "click"],
    }
)


def write(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_json(path, orient="records", lines=True)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_events_file_is_sorted_and_sessions_are_derived(tmp_path: Path, suffix: str) -> None:
    events = load_events(write(ROWS, tmp_path / f"events{suffix}"), gap_seconds=1800)
    assert events["timestamp"].tolist() == sorted(ROWS["timestamp"])
    sessions = events.groupby("session_id")["item_id"].apply(list).to_dict()
    assert sessions == {"user:1@1000": ["a", "b"], "user:1@9000": ["c"], "user:2@1050": ["a", "d"]}
    assert set(events["event_type"]) == {"view", "click", "purchase"}


def test_given_session_ids_and_datetime_strings_are_kept(tmp_path: Path) -> None:
    frame = ROWS.assign(
        session_id=["s1", "s1", "s2", "s3", "s3"],
        timestamp=pd.to_datetime(ROWS["timestamp"], unit="s", utc=True).astype(str),
    ).drop(columns="event_type")
    events = load_events(write(frame, tmp_path / "events.csv"))
    assert events["session_id"].tolist() == ["s1", "s3", "s3", "s1", "s2"]
    assert events["timestamp"].tolist() == [1000.0, 1050.0, 1060.0, 1100.0, 9000.0]
    assert set(events["event_type"]) == {"click"}


def test_missing_required_column_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="item_id"):
        load_events(write(ROWS.drop(columns="item_id"), tmp_path / "events.csv"))


def test_movielens_100k_builtin() -> None:
    events = load_events("movielens-100k")
    assert len(events) == 100_000
    assert events["user_id"].nunique() == 943 and events["item_id"].nunique() == 1682
    sizes = events.groupby("session_id").size()
    assert len(sizes) == 2793 and int((sizes >= 2).sum()) == 2283  # DATA.md: ~2.8k / ~2.3k
    catalog = load_catalog("movielens-100k")
    assert len(catalog) == 1682 and "Comedy" in catalog.columns
