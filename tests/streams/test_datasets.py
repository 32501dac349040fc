"""Users' own events files in every documented format, and the built-in MovieLens-100k."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from onevec.models.clickstream.events import Event, ValidationLimits, parse_event
from onevec.models.datasets import load_catalog, load_events
from onevec.streams.kafka.replay import iter_event_dicts

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


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_epoch_milliseconds_are_read_as_the_stream_reads_them(tmp_path: Path, suffix: str) -> None:
    start = 1_700_000_000  # 2023-11-14, in seconds
    seconds = ROWS.assign(timestamp=(ROWS["timestamp"] + start).astype("int64"))
    millis = seconds.assign(timestamp=seconds["timestamp"] * 1000 + 250)  # integers, as Kafka producers write
    from_seconds = load_events(write(seconds, tmp_path / f"seconds{suffix}"), gap_seconds=1800)
    from_millis = load_events(write(millis, tmp_path / f"millis{suffix}"), gap_seconds=1800)
    assert from_millis["timestamp"].tolist() == [t + 0.25 for t in from_seconds["timestamp"]]

    def sessions(events: pd.DataFrame) -> list[list[str]]:
        return events.groupby("session_id", sort=False)["item_id"].apply(list).tolist()

    assert sessions(from_millis) == sessions(from_seconds)
    assert from_millis["session_id"].nunique() == 3  # cut by the 1,800 s gap, not 1,800 ms
    # Replayed, every event passes the stream's validation with the default unit (seconds).
    parsed = [
        parse_event(event, ValidationLimits(), now=start + 10_000) for event in iter_event_dicts(from_millis)
    ]
    assert all(isinstance(event, Event) for event in parsed), parsed


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
