"""What every section is handed: the settings, the sizes of this run, the console, and the rows
measured so far."""

from __future__ import annotations

from dataclasses import dataclass, field

from rich.console import Console

from onevec.streams.settings import Settings
from onevec.streams.tools.bench.report import BenchRow, format_value

__all__ = ["DATASET", "WARMUP_BATCHES", "BenchContext", "BenchSizes"]

DATASET = "movielens-100k"
WARMUP_BATCHES = 2  # torch's first calls allocate and dispatch lazily: not timed


@dataclass(frozen=True)
class BenchSizes:
    pipeline_events: int = 40_000  # the no-op ceiling drains 10k in <1 s: too short to time well
    ceiling_passes: int = 2  # each ceiling, in one order then the reverse
    learner_examples: int = 30_000  # several rounds of learner_round_batches (16) x 256
    sink_points: int = 20_000
    sink_disk_points: int = 2_000
    freshness_rates: tuple[int, ...] = (200, 1_000, 2_000, 5_000)
    freshness_seconds: float = 15.0
    memory_items: tuple[int, ...] = (1_000, 10_000, 100_000, 1_000_000)
    memory_events: int = 16_384  # steady state: long enough for a few drift windows and rotations
    # The opt-in scale section's stream (models/synthetic_scale.py): hours at this size.
    scale_stream: str = "synthetic-scale:items=1000000,events=10000000"
    # The opt-in distributed section (issue 22): 1 vs 2 ranks on gloo over loopback.
    distributed_events: int = 20_000
    distributed_seeds: tuple[int, ...] = (0, 1, 2)
    distributed_batch_sizes: tuple[int, ...] = (256, 1_024, 4_096)
    distributed_union_rows: tuple[int, ...] = (256, 1_024, 4_096, 16_384, 65_536)

    @classmethod
    def quick(cls) -> BenchSizes:
        return cls(
            pipeline_events=1_500,
            ceiling_passes=1,
            learner_examples=2_048,
            sink_points=1_000,
            sink_disk_points=300,
            freshness_rates=(200,),
            freshness_seconds=5.0,
            memory_items=(1_000, 10_000),
            memory_events=1_024,
            scale_stream="synthetic-scale:items=2000,events=4000",
            distributed_events=1_500,
            distributed_seeds=(0,),
            distributed_batch_sizes=(256,),
            distributed_union_rows=(256, 4_096),
        )


@dataclass
class BenchContext:
    settings: Settings
    sizes: BenchSizes
    console: Console
    rows: list[BenchRow] = field(default_factory=list)

    def add(self, row: BenchRow) -> None:
        self.rows.append(row)
        ceiling = "" if row.ceiling is None else f" (ceiling {format_value(row.ceiling)})"
        self.console.log(f"{row.section}: {row.measure} = {format_value(row.value)} {row.unit}{ceiling}")
