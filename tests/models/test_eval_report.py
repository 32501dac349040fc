"""`onevec eval` on a user's own files in the documented format produces the report.

The files are written here from a real slice of MovieLens-100k (the first 5,000 ratings in
time), reshaped the way a user would: an events CSV with ISO timestamps and a rating, no
session ids (so sessions are derived), and a catalogue CSV with a title and one category.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
from PIL import Image
from typer.testing import CliRunner

from onevec.models.datasets import load_catalog, movielens_ratings
from onevec.models.evaluation.data import load_eval_data
from onevec.streams.cli import app

EVENTS = 5_000


def write_user_files(directory: Path) -> tuple[Path, Path]:
    ratings = movielens_ratings().sort_values("timestamp", kind="stable").head(EVENTS)
    events = pd.DataFrame(
        {
            "user_id": "user-" + ratings["user_id"].astype(str),
            "item_id": "movie-" + ratings["item_id"].astype(str),
            "timestamp": pd.to_datetime(ratings["timestamp"], unit="s", utc=True).map(pd.Timestamp.isoformat),
            "rating": ratings["rating"],
        }
    )
    movies = load_catalog("movielens-100k")
    genres = movies.columns[movies.columns.get_loc("unknown") :]
    catalogue = pd.DataFrame(
        {
            "item_id": "movie-" + movies["item_id"],
            "title": movies["movie_title"],
            "category": movies[genres].idxmax(axis=1),  # the first listed genre: one category each
        }
    )
    events_path, catalogue_path = directory / "events.csv", directory / "catalogue.csv"
    events.to_csv(events_path, index=False)
    catalogue.to_csv(catalogue_path, index=False)
    return events_path, catalogue_path


def test_report_from_user_files(tmp_path: Path) -> None:
    events, catalogue = write_user_files(tmp_path)
    out = tmp_path / "report"
    answer = CliRunner().invoke(
        app, ["eval", "--events", str(events), "--catalog", str(catalogue), "--out", str(out), "--quick"]
    )
    assert answer.exit_code == 0, answer.output
    report = (out / "report.md").read_text()
    assert f"{EVENTS:,} events" in report
    assert "sessions are derived" in report and "proxies" in report
    recommenders = [
        "onevec live model",
        "session model, frozen",
        "skip-gram, frozen",
        "item-to-item transitions",
        "session-kNN",
        "V-SKNN",
        "recent popularity",
        "P-Pop",
        "TIFU-KNN",
        "GRU4Rec, frozen",
        "GRU4Rec, retrained",  # 5,000 events: within the default retraining budget
        "random",
    ]
    for name in recommenders:
        # HR, MRR, HR on repeats / on new items ("-" where the stream has none), the setting.
        split = r"(?:\d\.\d{3}|-) / (?:\d\.\d{3}|-)"
        row = re.search(
            rf"^\| {re.escape(name)} \| (0\.\d{{4}}) \| (0\.\d{{4}}) \| ({split}) \| ([^|]*) \|$",
            report,
            re.M,
        )
        assert row, f"no results row for {name}"
        assert name in answer.output  # and the same table was printed
        tuned = name not in ("onevec live model", "session model, frozen", "skip-gram, frozen", "random")
        assert ("validation" in row.group(4)) == (tuned and name != "item-to-item transitions")
    assert re.search(r"^Repeat share: \d+\.\d% of the scored next items", report, re.M)
    # The catalogue's own category column became a probe task, next to the title text source.
    sources = ["behaviour", "text", "attributes", "unified, equal weights", "unified"]
    header = "| task | items | chance | " + " | ".join(sources) + " | unified >= best single |"
    assert re.search(rf"^{re.escape(header)}$", report, re.M)
    score = r" \| (0\.\d{3}|1\.000)"
    row = rf"^\| category \| [\d,]+ \| 0\.\d\d{score * len(sources)} \| (yes|\*\*no\*\*) \|$"
    assert re.search(row, report, re.M), "no probe row with a score per source for category"
    for image in ("metrics_over_time.png", "item_map.png", "drift.png", "alignment_grid.png"):
        with Image.open(out / image) as png:
            assert png.format == "PNG" and png.size[0] > 300
        assert f"]({image})" in report


def test_outcomes_from_event_types(tmp_path: Path) -> None:
    # A hand-written JSON-lines file with explicit sessions: u1 buys b and returns it later.
    rows = [
        {"user_id": "u1", "session_id": "s1", "item_id": "a", "event_type": "view", "timestamp": 1000},
        {"user_id": "u1", "session_id": "s1", "item_id": "b", "event_type": "purchase", "timestamp": 1010},
        {"user_id": "u2", "session_id": "s2", "item_id": "c", "event_type": "purchase", "timestamp": 1020},
        {"user_id": "u1", "session_id": "s3", "item_id": "b", "event_type": "return", "timestamp": 9000},
    ]
    events = tmp_path / "events.jsonl"
    events.write_text("".join(json.dumps(row) + "\n" for row in rows))
    catalogue = tmp_path / "catalogue.csv"
    pd.DataFrame({"item_id": ["a", "b", "c"], "category": ["x", "y", "y"]}).to_csv(catalogue, index=False)
    data = load_eval_data(events, catalogue)
    assert data.outcome_source == "event types" and not data.derived_sessions
    assert data.positive.tolist() == [False, True, True, False]  # the purchases
    assert data.negative.tolist() == [False, True, False, False]  # the purchase later returned
    assert data.attributes["b"] == {"category": "y"}
