"""Section **memory**: peak RSS and learner throughput with 1k..1M *synthetic* item ids
(synthetic catalogue, synthetic Zipf clicks), one child process per size
(``python -m onevec.streams.tools.bench memory ITEMS EVENTS``, which prints its result as one
JSON line). RSS is also sampled halfway through the events, so growth with events (there
should be none) shows next to growth with items."""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from onevec.models.clickstream.examples import ExampleRecord
from onevec.streams.learner.learner import Learner
from onevec.streams.qdrant import QdrantStore
from onevec.streams.settings import Settings
from onevec.streams.tools.bench.context import BenchContext
from onevec.streams.tools.bench.learner import learn_round, mark_catalogue_published
from onevec.streams.tools.bench.report import BenchRow

__all__ = ["MemoryResult", "bench_memory", "memory_main"]


@dataclass(frozen=True)
class MemoryResult:
    """What one child measured."""

    items: int
    events: int
    base_mb: float  # RSS after the imports, before the catalogue exists
    peak_mb: float
    events_growth_mb: float  # RSS growth over the second half of the events
    ex_per_s: float
    register_s: float  # building the learner with the catalogue
    publish_s: float  # encoding and remembering every item once, as at start-up


def bench_memory(ctx: BenchContext) -> None:
    for items in ctx.sizes.memory_items:
        try:
            result = _memory_child(items, ctx.sizes.memory_events)
        except (subprocess.SubprocessError, ValueError) as error:
            ctx.add(BenchRow("memory", f"{items:,} items: peak RSS", math.nan, "MB", note=f"failed: {error}"))
            continue
        per_item = (result.peak_mb - result.base_mb) * 2**20 / items
        ctx.add(
            BenchRow(
                "memory",
                f"{items:,} items: peak RSS",
                result.peak_mb,
                "MB",
                note=f"{per_item:,.0f} B/item above the {result.base_mb:.0f} MB base; "
                f"RSS +{result.events_growth_mb:.1f} MB over the 2nd half of "
                f"{result.events:,} events (synthetic)",
            )
        )
        ctx.add(
            BenchRow(
                "memory",
                f"{items:,} items: learner step",
                result.ex_per_s,
                "ex/s",
                note=f"catalogue of {items:,} registered in {result.register_s:.1f}s, "
                f"first publish {result.publish_s:.1f}s",
            )
        )


def _memory_child(items: int, events: int, timeout: float = 900.0) -> MemoryResult:
    out = subprocess.run(
        [sys.executable, "-m", "onevec.streams.tools.bench", "memory", str(items), str(events)],
        capture_output=True,
        timeout=timeout,
        check=True,
        env=dict(os.environ) | {"ONEVEC_LOG_LEVEL": "warning"},
    )
    return MemoryResult(**json.loads(out.stdout.decode().strip().splitlines()[-1]))


def memory_main(items: int, events: int) -> None:
    """The child: a learner over ``items`` synthetic items learning ``events`` synthetic clicks."""
    settings = Settings(data_dir=Path(tempfile.mkdtemp(prefix="onevec-mem-")))
    base = _rss_mb()
    # Synthetic catalogue: 100 categories, 1,000 brands.
    started = time.perf_counter()
    attributes = {f"item-{i}": {"category": f"c{i % 100}", "brand": f"b{i % 1000}"} for i in range(items)}
    learner = Learner(settings, QdrantStore(dim=settings.model_dim), attributes)
    register = time.perf_counter() - started
    started = time.perf_counter()
    mark_catalogue_published(learner)
    publish = time.perf_counter() - started
    half = peak_half = 0.0
    learned = 0
    started = time.perf_counter()
    for batch in _synthetic_batches(items, events, settings.learner_batch_size):
        learn_round(learner, batch)
        learned += len(batch)
        if not half and learned >= events // 2:
            half = _rss_mb()
            peak_half = _peak_rss_mb()
    seconds = time.perf_counter() - started
    peak = _peak_rss_mb()
    result = MemoryResult(
        items=items,
        events=events,
        base_mb=base,
        peak_mb=peak,
        events_growth_mb=max(_rss_mb() - half, peak - peak_half),
        ex_per_s=learned / seconds,
        register_s=register,
        publish_s=publish,
    )
    print(json.dumps(asdict(result)), flush=True)


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    """Peak RSS of this process image (VmHWM). Not ``ru_maxrss``: Linux carries that across
    fork + exec, so a child would report at least its parent's (the bench's) peak."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _synthetic_batches(items: int, events: int, batch: int, seed: int = 0) -> Iterator[list[ExampleRecord]]:
    """Synthetic sessions over ``items`` ids with Zipf-like popularity, generated batch by
    batch so the bench itself holds no events."""
    rng = np.random.default_rng(seed)
    session: list[str] = []
    number = 0
    for start in range(0, events, batch):
        records: list[ExampleRecord] = []
        for _ in range(min(batch, events - start)):
            if not session or rng.random() < 0.15:
                session, number = [], number + 1
            popular = rng.random() < 0.5
            row = min(int(rng.zipf(1.2)) - 1, items - 1) if popular else int(rng.integers(items))
            item = f"item-{row}"
            records.append(
                {
                    "event_id": f"e{len(records)}",
                    "event_type": "view",
                    "timestamp": 0.0,
                    "session_id": f"s{number}",
                    "user_id": f"u{number % 997}",
                    "item_id": item,
                    "prefix": session[-50:],
                    "duplicate": False,
                }
            )
            session = [*session, item]
        yield records
