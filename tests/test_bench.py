"""`onevec bench --quick` end to end: a real Tansu broker, real worker processes in each layout
(one process, ingest + learn workers, the supervised default), the pipeline's ceilings (raw
aiokafka, the Quix Streams peer where .peer-venv exists, a real no-op Faust agent), Qdrant local
mode, memory child processes. No timing assertions: the figures only have to exist, be finite
and be positive, and every section must print its rows. Without .peer-venv the peer's row must
say so instead of giving a number (tests/test_bench_ceilings.py tests both)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from rich.console import Console

from onevec.streams.settings import Settings
from onevec.streams.tools.bench import SECTIONS, run_bench
from onevec.streams.tools.bench.ceilings import NOT_INSTALLED, PEER_PYTHON

PEER_ROW = "Quix Streams peer: per-session state (RocksDB + changelog)"
SUPERVISED = ", supervised default (ingest + learn children)"  # the default layout's rows


def test_quick_bench_prints_every_row(settings: Settings, tmp_path: Path) -> None:
    console = Console(record=True, width=200)
    output = tmp_path / "bench"
    rows = run_bench(settings, quick=True, output=output, console=console)

    measures = {(row.section, row.measure) for row in rows}
    expected = {
        ("pipeline", "raw aiokafka getmany (physical ceiling)"),
        ("pipeline", "raw aiokafka + json.loads + per-session dict"),
        ("pipeline", PEER_ROW),
        ("pipeline", "no-op Faust agent (reference)"),
        ("pipeline", "sessionized (ingest -> sessions)"),
        ("pipeline", "end to end (-> learner -> Qdrant)"),
        # The same pipeline split over an ingest and a learn worker (Settings.role).
        ("pipeline", "sessionized (ingest -> sessions), ingest + learn workers"),
        ("pipeline", "end to end (-> learner -> Qdrant), ingest + learn workers"),
        # The same split as the default layout runs it: two children of a supervisor, measured
        # through its one port (metrics merged, lookups passed on to the learn child).
        ("pipeline", f"sessionized (ingest -> sessions){SUPERVISED}"),
        ("pipeline", f"end to end (-> learner -> Qdrant){SUPERVISED}"),
        # The producer packing records, in every layout.
        ("pipeline", "sessionized (ingest -> sessions), packed records"),
        ("pipeline", "end to end (-> learner -> Qdrant), packed records"),
        ("pipeline", "sessionized (ingest -> sessions), packed records, ingest + learn workers"),
        ("pipeline", "end to end (-> learner -> Qdrant), packed records, ingest + learn workers"),
        ("pipeline", f"sessionized (ingest -> sessions), packed records{SUPERVISED}"),
        ("pipeline", f"end to end (-> learner -> Qdrant), packed records{SUPERVISED}"),
        # The sessionize stage alone, measured as the peer is.
        ("pipeline", "sessionize stage alone, one event per record (ingest worker)"),
        ("pipeline", "sessionize stage alone, packed records (ingest worker)"),
        ("freshness", "p99 at 200 ev/s, ingest + learn workers"),
        ("freshness", f"p50 at 200 ev/s{SUPERVISED}"),
        ("freshness", f"p99 at 200 ev/s{SUPERVISED}"),
        ("learner", "trainer.learn only"),
        ("learner", "learner round of 1 micro-batch (score+train+select+points)"),
        ("learner", f"learner under backlog: rounds of {settings.learner_round_batches} micro-batches"),
        ("learner", "learner + Qdrant sink (memory)"),
        ("sink", "UpsertBuffer, local :memory:"),
        ("sink", "UpsertBuffer, local path (disk)"),
        ("sink", "UpsertBuffer, qdrant-edge (child process, disk)"),
        ("freshness", "p50 at 200 ev/s"),
        ("freshness", "p99 at 200 ev/s"),
        ("memory", "1,000 items: peak RSS per item above base"),
        ("memory", "10,000 items: learner steady state"),
        ("memory", "10,000 items: learner steady state, prequential scoring off"),
        ("memory", "10,000 items: first round"),
        ("memory", "10,000 items: longest round after the first"),
    }
    assert expected <= measures
    assert {row.section for row in rows} == set(SECTIONS)
    for row in rows:
        if row.measure == PEER_ROW and not PEER_PYTHON.exists():
            assert row.unavailable == NOT_INSTALLED and math.isnan(row.value), row
            continue
        assert math.isfinite(row.value) and row.value > 0, row
        if row.ceiling is not None:
            assert math.isfinite(row.ceiling) and row.ceiling > 0, row
    # Peak memory above the base must not shrink as the catalogue grows tenfold.
    per_item = {
        row.measure: row.value for row in rows if row.measure.endswith("peak RSS per item above base")
    }
    assert (
        per_item["10,000 items: peak RSS per item above base"] * 10
        >= per_item["1,000 items: peak RSS per item above base"] * 0.9
    )

    printed = console.export_text()
    for _, measure in expected:
        assert measure in printed
    report = json.loads(output.with_suffix(".json").read_text())
    assert len(report["rows"]) == len(rows)
    markdown = output.with_suffix(".md").read_text()
    assert markdown.count("\n| ") == len(rows) + 1  # header + one line per row
