"""Section **memory**: peak RSS and learner speed with 1k..1M *synthetic* item ids (synthetic
catalogue, synthetic Zipf clicks), one child process per size
(``python -m onevec.streams.tools.bench memory ITEMS EVENTS``, which prints its result as one
JSON line): the first round, the steady state and the longest round apart. RSS is also sampled
halfway through the steady-state events, so growth with events (there should be none) shows
next to growth with items."""

from __future__ import annotations

import dataclasses
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
from onevec.streams.learner.learner import Learner, settle_heap
from onevec.streams.qdrant import QdrantStore
from onevec.streams.settings import Settings
from onevec.streams.tools.bench.context import BenchContext
from onevec.streams.tools.bench.learner import learn_round, mark_catalogue_published
from onevec.streams.tools.bench.report import BenchRow

__all__ = ["MemoryResult", "bench_memory", "memory_main"]


STALL_GOAL_SECONDS = 0.1  # no learner round of one micro-batch may take longer
RSS_GOAL_BYTES_PER_ITEM = 2048  # above the base, at 1M items
STEADY_GOAL = 0.8  # steady-state ex/s of a larger catalogue against the 10k one's


@dataclass(frozen=True)
class MemoryResult:
    """What one child measured."""

    items: int
    events: int  # learned in steady state (after the first round and the catch-up)
    base_mb: float  # RSS after the imports, before the catalogue exists
    peak_mb: float
    end_mb: float  # RSS after the last round
    events_growth_mb: float  # RSS growth over the second half of the steady-state events
    register_s: float  # building the learner with the catalogue
    publish_s: float  # encoding and remembering every item once, as at start-up
    first_round_s: float
    catchup_rounds: int  # rounds after the first while the drift monitor drains the first publish
    catchup_s: float
    steady_ex_per_s: float
    unscored_ex_per_s: float  # the same events again with prequential scoring off
    longest_round_s: float  # over every round after the first
    longest_unscored_s: float  # the same over rounds that did no prequential scoring
    rounds: int  # after the first
    scored_rounds: int
    rotations: int  # drift reference rotations during the rounds


def bench_memory(ctx: BenchContext) -> None:
    results: list[MemoryResult] = []
    for items in ctx.sizes.memory_items:
        try:
            results.append(_memory_child(items, ctx.sizes.memory_events))
        except (subprocess.SubprocessError, ValueError) as error:
            ctx.add(BenchRow("memory", f"{items:,} items: peak RSS", math.nan, "MB", note=f"failed: {error}"))
    at_10k = next((r for r in results if r.items == 10_000), None)
    for result in results:
        _add_rows(ctx, result, at_10k)


def _add_rows(ctx: BenchContext, result: MemoryResult, at_10k: MemoryResult | None) -> None:
    items = result.items
    per_item = (result.peak_mb - result.base_mb) * 2**20 / items
    end_per_item = (result.end_mb - result.base_mb) * 2**20 / items
    ctx.add(
        BenchRow(
            "memory",
            f"{items:,} items: peak RSS per item above base",
            per_item,
            "B",
            goal=f"< {RSS_GOAL_BYTES_PER_ITEM}" if items >= 1_000_000 else "",
            note=f"peak {result.peak_mb:,.0f} MB, base {result.base_mb:.0f} MB; after the last round "
            f"{end_per_item:,.0f} B/item; RSS +{result.events_growth_mb:.1f} MB over the 2nd half of "
            f"{result.events:,} events (synthetic)",
        )
    )
    larger = at_10k is not None and items > 10_000
    ctx.add(
        BenchRow(
            "memory",
            f"{items:,} items: learner steady state",
            result.steady_ex_per_s,
            "ex/s",
            at_10k.steady_ex_per_s if at_10k and larger else None,
            goal=f">= {STEADY_GOAL}" if larger else "",
            note=f"{result.events:,} synthetic events in rounds of one micro-batch after the first round "
            f"and the catch-up; ceiling: the 10,000-item catalogue's rate in this run; "
            f"{result.rotations} drift reference rotations",
        )
    )
    ctx.add(
        BenchRow(
            "memory",
            f"{items:,} items: learner steady state, prequential scoring off",
            result.unscored_ex_per_s,
            "ex/s",
            at_10k.unscored_ex_per_s if at_10k and larger else None,
            goal=f">= {STEADY_GOAL}" if larger else "",
            note="the same number of events next, with ONEVEC_PREQUENTIAL_SAMPLE_RATE near 0: every other "
            "part of the rounds (training, publishing, sweeps, drift)",
        )
    )
    catchup = (
        f"then {result.catchup_rounds} catch-up rounds ({result.catchup_s:.1f} s) while the drift monitor "
        "takes the first publish in batches"
        if result.catchup_rounds
        else "no catch-up rounds"
    )
    ctx.add(
        BenchRow(
            "memory",
            f"{items:,} items: first round",
            result.first_round_s,
            "s",
            note=f"learner built with the catalogue in {result.register_s:.1f} s, first publish "
            f"{result.publish_s:.1f} s; {catchup}",
        )
    )
    ctx.add(
        BenchRow(
            "memory",
            f"{items:,} items: longest round after the first",
            result.longest_round_s,
            "s",
            goal=f"< {STALL_GOAL_SECONDS}",
            note=f"{result.scored_rounds} of {result.rounds} rounds did prequential scoring; the longest "
            f"round without it {result.longest_unscored_s * 1000:.0f} ms",
        )
    )


def _memory_child(items: int, events: int, timeout: float = 1800.0) -> MemoryResult:
    out = subprocess.run(
        [sys.executable, "-m", "onevec.streams.tools.bench", "memory", str(items), str(events)],
        capture_output=True,
        timeout=timeout,
        check=True,
        env=dict(os.environ) | {"ONEVEC_LOG_LEVEL": "warning"},
    )
    return MemoryResult(**json.loads(out.stdout.decode().strip().splitlines()[-1]))


def memory_main(items: int, events: int) -> None:
    """The child: a learner over ``items`` synthetic items learning synthetic clicks: a first
    round, catch-up rounds while the drift monitor still takes the first publish, then
    ``events`` in steady state. The drift windows and reference rotations run every few
    seconds instead of every minute and hour, so their work falls inside the timed rounds."""
    settings = Settings(
        data_dir=Path(tempfile.mkdtemp(prefix="onevec-mem-")),
        drift_window_seconds=1.0,
        drift_reference_seconds=2.0,
        drift_warmup_examples=1024,
    )
    base = _rss_mb()
    # Synthetic catalogue: 100 categories, 1,000 brands.
    started = time.perf_counter()
    attributes = {f"item-{i}": {"category": f"c{i % 100}", "brand": f"b{i % 1000}"} for i in range(items)}
    learner = Learner(settings, QdrantStore(dim=settings.model_dim), attributes)
    register = time.perf_counter() - started
    started = time.perf_counter()
    mark_catalogue_published(learner)
    publish = time.perf_counter() - started
    settle_heap()  # as a worker's learner does when it starts learning
    batches = _synthetic_batches(items, settings.learner_batch_size)
    first = _timed_round(learner, next(batches))[0]
    catchup: list[tuple[float, bool]] = []
    while learner.drift.pending > learner.drift.config.apply_updates:
        catchup.append(_timed_round(learner, next(batches)))
    rounds: list[tuple[float, bool]] = []
    rotations, reference = 0, learner.drift.reference
    learned = 0
    half = peak_half = 0.0
    while learned < events:
        batch = next(batches)
        rounds.append(_timed_round(learner, batch))
        rotations += learner.drift.reference is not reference
        reference = learner.drift.reference
        learned += len(batch)
        if not half and learned >= events // 2:
            half, peak_half = _rss_mb(), _peak_rss_mb()
    peak = _peak_rss_mb()
    end = _rss_mb()
    # Then the same again without prequential scoring: above ONEVEC_PREQUENTIAL_ITEM_BUDGET a
    # scored step ranks the whole catalogue, so this shows the rest of the round apart.
    learner.round.config = dataclasses.replace(learner.round.config, sample_rate=1e-12)
    unscored: list[tuple[float, bool]] = []
    for _ in rounds:
        unscored.append(_timed_round(learner, next(batches)))
    every = rounds + catchup + unscored
    result = MemoryResult(
        items=items,
        events=learned,
        base_mb=base,
        peak_mb=peak,
        end_mb=end,
        events_growth_mb=max(end - half, peak - peak_half),
        register_s=register,
        publish_s=publish,
        first_round_s=first,
        catchup_rounds=len(catchup),
        catchup_s=sum(seconds for seconds, _ in catchup),
        steady_ex_per_s=learned / sum(seconds for seconds, _ in rounds),
        unscored_ex_per_s=learned / sum(seconds for seconds, _ in unscored),
        longest_round_s=max(seconds for seconds, _ in every),
        longest_unscored_s=max((seconds for seconds, scored in every if not scored), default=0.0),
        rounds=len(every),
        scored_rounds=sum(scored for _, scored in every),
        rotations=rotations,
    )
    print(json.dumps(asdict(result)), flush=True)


def _timed_round(learner: Learner, batch: list[ExampleRecord]) -> tuple[float, bool]:
    """(seconds, whether the round did prequential scoring) of one learner round."""
    scored = learner.score.scored
    started = time.perf_counter()
    learn_round(learner, batch)
    return time.perf_counter() - started, learner.score.scored > scored


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


def _synthetic_batches(items: int, batch: int, seed: int = 0) -> Iterator[list[ExampleRecord]]:
    """Synthetic sessions over ``items`` ids with Zipf-like popularity, generated batch by
    batch (as many as are taken) so the bench itself holds no events."""
    rng = np.random.default_rng(seed)
    session: list[str] = []
    number = 0
    while True:
        records: list[ExampleRecord] = []
        for _ in range(batch):
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
