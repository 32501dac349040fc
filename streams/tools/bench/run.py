"""``run_bench``: the chosen sections in one run, one table printed, the report written."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from onevec.streams.settings import Settings
from onevec.streams.tools.bench.context import BenchContext, BenchSizes
from onevec.streams.tools.bench.report import BenchRow, render_table, write_reports

__all__ = ["OPT_IN_SECTIONS", "SECTIONS", "run_bench", "unknown_sections"]

SECTIONS = ("pipeline", "learner", "sink", "freshness", "memory")  # a run's default
# Run only when named: scale takes hours at full size, distributed a few minutes.
OPT_IN_SECTIONS = ("scale", "distributed")


def unknown_sections(sections: Sequence[str]) -> list[str]:
    """The names in ``sections`` that are not a section, sorted."""
    return sorted(set(sections) - {*SECTIONS, *OPT_IN_SECTIONS})


def run_bench(
    settings: Settings,
    *,
    quick: bool = False,
    sections: Sequence[str] = SECTIONS,
    output: Path | None = Path("reports/bench"),
    console: Console | None = None,
    memory_items: Sequence[int] = (),
    scale_stream: str = "",
) -> list[BenchRow]:
    """Run the chosen sections, print one table, write ``output``.md / .json; return the rows.
    ``scale_stream``: the scale section's stream name (e.g.
    ``synthetic-scale:items=100000,events=200000``) instead of the sizes'."""
    console = console or Console()
    if unknown := unknown_sections(sections):
        raise ValueError(f"unknown sections {unknown}; choose from {SECTIONS + OPT_IN_SECTIONS}")
    sizes = BenchSizes.quick() if quick else BenchSizes()
    if memory_items:
        sizes = dataclasses.replace(sizes, memory_items=tuple(memory_items))
    if scale_stream:
        sizes = dataclasses.replace(sizes, scale_stream=scale_stream)
    ctx = BenchContext(settings, sizes, console)
    load = os.getloadavg()
    started = time.time()
    # Each section's module is imported when it runs: the child processes import this package
    # too, and the memory child's base RSS must not include the other sections' imports.
    if "learner" in sections:
        from onevec.streams.tools.bench.learner import bench_learner

        bench_learner(ctx)
    if "sink" in sections:
        from onevec.streams.tools.bench.sink import bench_sink

        bench_sink(ctx)
    if "pipeline" in sections or "freshness" in sections:
        from onevec.streams.tools.bench.stream import bench_stream

        bench_stream(ctx, pipeline="pipeline" in sections, freshness="freshness" in sections)
    if "memory" in sections:
        from onevec.streams.tools.bench.memory import bench_memory

        bench_memory(ctx)
    if "scale" in sections:
        from onevec.streams.tools.bench.scale import bench_scale

        bench_scale(ctx)
    if "distributed" in sections:
        from onevec.streams.tools.bench.distributed import bench_distributed

        for row in bench_distributed(
            events=sizes.distributed_events,
            seeds=sizes.distributed_seeds,
            batch_sizes=sizes.distributed_batch_sizes,
            union_rows=sizes.distributed_union_rows,
            report=console.log,
        ):
            ctx.add(row)
    load_after = os.getloadavg()
    title = (
        f"onevec bench ({'quick' if quick else 'full'}; {os.cpu_count()} cores; load average "
        f"{load[0]:.2f} before, {load_after[0]:.2f} after; {time.time() - started:.0f} s)"
    )
    console.print(render_table(ctx.rows, title))
    if output is not None:
        write_reports(ctx.rows, title, output)
        console.print(f"written: {output}.md, {output}.json")
    return ctx.rows
