"""`onevec bench --sections scale` at a tiny size of the synthetic scale stream: a real Tansu
broker, real ingest and learn worker processes, qdrant-edge on disk. No timing assertions: every
row must be there, finite and positive."""

from __future__ import annotations

import math
from pathlib import Path

from rich.console import Console

from onevec.streams.settings import Settings
from onevec.streams.tools.bench import SECTIONS, run_bench

STREAM = "synthetic-scale:items=3000,events=5000,seed=2"


def test_the_scale_section_reports_end_to_end_freshness_and_rss(settings: Settings, tmp_path: Path) -> None:
    rows = run_bench(
        settings,
        quick=True,
        sections=["scale"],
        output=tmp_path / "bench",
        console=Console(record=True, width=200),
        scale_stream=STREAM,
    )
    measures = {row.measure: row for row in rows}
    expected = [
        "learn worker serving after start, 3,000 items",
        "end to end (-> learner -> Qdrant), 3,000 items, 5,000 events",
        "peak RSS, ingest worker and its child processes, 3,000 items",
        "peak RSS, learn worker and its child processes, 3,000 items",
        "freshness p50 at 200 ev/s, 3,000 items",
        "freshness p99 at 200 ev/s, 3,000 items",
    ]
    assert set(expected) <= set(measures), sorted(measures)
    assert {row.section for row in rows} == {"scale"} and "scale" not in SECTIONS  # opt-in only
    for row in rows:
        assert math.isfinite(row.value) and row.value > 0, row
    assert "synthetic" in measures[expected[1]].note
    # The learn worker holds the catalogue and the engine: more than the ingest worker.
    assert measures[expected[3]].value > measures[expected[2]].value
