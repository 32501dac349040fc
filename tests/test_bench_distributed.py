"""`onevec bench --sections distributed` at its quick size: two real ranks on gloo over
127.0.0.1 (torch.multiprocessing spawn), against one rank, on the first MovieLens-100k events.
No timing assertions: every row must be there and finite, rates and costs positive, the
quality figures shares."""

from __future__ import annotations

import math
from pathlib import Path

from rich.console import Console

from onevec.streams.settings import Settings
from onevec.streams.tools.bench import SECTIONS, run_bench

LAYOUTS = ("1 rank", "2 ranks, the step split", "2 ranks, each the whole step")


def test_the_distributed_section_compares_one_and_two_ranks(settings: Settings, tmp_path: Path) -> None:
    rows = run_bench(
        settings,
        quick=True,
        sections=["distributed"],
        output=tmp_path / "bench",
        console=Console(record=True, width=200),
    )
    measures = {row.measure: row for row in rows}
    expected = [
        f"exchange, 256 union rows x {settings.model_dim}",
        "step, batch 256/rank: exchange",
        "step, batch 256/rank: whole step",
    ] + [
        f"stream, {layout}: {measure}"
        for layout in LAYOUTS
        for measure in ("examples/s", "examples per CPU second of the busiest rank", "HR@20", "MRR@20")
    ]
    assert set(expected) <= set(measures), sorted(measures)
    assert {row.section for row in rows} == {"distributed"} and "distributed" not in SECTIONS  # opt-in
    for row in rows:
        assert math.isfinite(row.value), row
        if "HR@20" in row.measure or "MRR@20" in row.measure:
            assert 0.0 <= row.value <= 1.0, row
        else:
            assert row.value > 0, row
    # The quick size learns 1,500 events: some of the next items are found.
    assert measures["stream, 1 rank: HR@20"].value > 0
