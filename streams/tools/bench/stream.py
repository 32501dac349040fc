"""Sections **pipeline** and **freshness**: real worker processes on one broker, in each layout
(``workers.LAYOUTS``: one ``all`` worker, an ingest and a learn worker, and the supervised
default of ``onevec worker`` without a role, measured through the supervisor's port).

pipeline: MovieLens-100k events replayed into a fresh clicks topic, timed from the last poll
before the first accepted event to the last one sessionized and to the last one learned, once
with one event per record and once with the producer packing each partition's events into
records (``EventProducer(pack=True)``), each on fresh topics and workers; then the ceilings
(``ceilings``: raw aiokafka, the Quix Streams peer, the no-op Faust agent) drain the one event
per record topic. The sessionize rows are compared with the peer (which reads one event per
record), end to end with the same run's sessionize rate. Within the ceilings' passes, the
sessionize stage alone is measured the way the peer is: an ingest worker (no learner) drains each
filled clicks topic, one event per record and packed, timed from its first event to its last.
freshness: p50 / p99 seconds from a click on a new item to its vector being served, at rising
input rates, up to the first rate the learner no longer keeps up with (``freshness``)."""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pandas as pd

from onevec.deploy.embedded_broker import EmbeddedBroker
from onevec.models.datasets import load_events
from onevec.streams.kafka.producer import EventProducer
from onevec.streams.kafka.replay import replay
from onevec.streams.kafka.topics import bootstrap_servers, ensure_topics
from onevec.streams.settings import Settings
from onevec.streams.tools.bench.ceilings import Ceilings, measure_ceilings
from onevec.streams.tools.bench.context import DATASET, BenchContext
from onevec.streams.tools.bench.freshness import freshness_at
from onevec.streams.tools.bench.report import BenchRow
from onevec.streams.tools.bench.workers import LAYOUTS, Workers, layout_label
from onevec.streams.worker import WorkerProcess, metric_total

__all__ = ["bench_settings", "bench_stream", "freshness_ladder"]

# Saturated: after the input stopped, the learner still had more than this much work queued
# (it fell behind during the window).
SATURATION_DRAIN_SECONDS = 2.0


@dataclass(frozen=True)
class PipelineRun:
    """One layout's replay, monotonic seconds: last poll before the first
    event was accepted, all sessionized, all learned."""

    packed: bool
    clicks_topic: str
    events: int
    first: float
    sessionized: float
    learned: float
    produce_seconds: float


def bench_stream(ctx: BenchContext, pipeline: bool, freshness: bool) -> None:
    embedded = EmbeddedBroker(host=ctx.settings.bind_host) if ctx.settings.embedded else None
    with embedded if embedded is not None else contextlib.nullcontext(), tempfile.TemporaryDirectory() as tmp:
        broker_url = embedded.url if embedded is not None else ctx.settings.broker_url
        runs: list[tuple[tuple[str, ...], PipelineRun]] = []
        first_settings: Settings | None = None
        for number, roles in enumerate(LAYOUTS):
            for packed in (False, True) if pipeline else (False,):
                # Topics and an app id of their own per run: each starts from nothing.
                data_dir = Path(tmp) / f"data-{number}{'-packed' if packed else ''}"
                settings = bench_settings(ctx.settings, broker_url, data_dir)
                first_settings = first_settings or settings
                run = _run_stream(ctx, settings, roles, pipeline, freshness and not packed, packed)
                if run is not None:
                    runs.append((roles, run))
        if runs and first_settings is not None:
            # The ceilings are measured once every worker has stopped, so nothing else competes
            # for the cores (a live worker's timers, sink flushes and checkpoints would), and
            # they are the same for every layout; so is the sessionize stage alone.
            count = ctx.sizes.pipeline_events
            stages = {
                _stage(run.packed): partial(stage_rate, first_settings, run.clicks_topic, count, Path(tmp))
                for roles, run in runs
                if roles == LAYOUTS[0]
            }
            ceilings = measure_ceilings(first_settings, count, ctx.sizes.ceiling_passes, also=stages)
            for row in ceilings.rows(first_settings.max_session_items):
                ctx.add(row)
            for packed in (False, True):
                _add_stage_row(ctx, packed, ceilings)
            for roles, run in runs:
                _add_pipeline_rows(ctx, roles, run, ceilings)


def bench_settings(settings: Settings, broker_url: str, data_dir: Path) -> Settings:
    tag = uuid.uuid4().hex[:8]
    return settings.model_copy(
        update={
            "broker_url": broker_url,
            "tansu": settings.tansu or not settings.broker_url,
            "app_id": f"onevec-bench-{tag}",
            "clicks_topic": f"bench-clicks-{tag}",
            "dlq_topic": f"bench-dlq-{tag}",
            "examples_topic": f"bench-examples-{tag}",
            "sessions_topic": f"bench-sessions-{tag}",
            "data_dir": data_dir,
            "catalog": settings.catalog or DATASET,
            "qdrant_path": None,
            "qdrant_url": settings.qdrant_url,
        }
    )


def _run_stream(
    ctx: BenchContext,
    settings: Settings,
    roles: tuple[str, ...],
    pipeline: bool,
    freshness: bool,
    packed: bool = False,
) -> PipelineRun | None:
    """Start this layout's workers, replay the pipeline events (when ``pipeline``; ``packed``:
    the producer packs them), then the freshness ladder (when ``freshness``); returns the
    replay's timings."""
    ensure_topics(settings)
    events = load_events(DATASET, settings.session_gap_seconds)
    count = ctx.sizes.pipeline_events
    label = layout_label(roles)
    workers = Workers(settings, roles)
    workers.start(ready_timeout=120)
    run = None
    try:
        if pipeline:
            servers = bootstrap_servers(settings)
            with EventProducer(servers, settings.clicks_topic, pack=packed) as producer:
                produce_started = time.monotonic()
                produce_seconds = replay(events.head(count), producer)
            first, sessionized, learned = _wait_pipeline(workers, count, produce_started, timeout=900)
            kind = "packed" if packed else "one per record"
            ctx.console.log(f"pipeline{label}: produced {count:,} ({kind}) in {produce_seconds:.1f}s")
            run = PipelineRun(
                packed, settings.clicks_topic, count, first, sessionized, learned, produce_seconds
            )
        if freshness:
            freshness_ladder(
                ctx,
                settings,
                workers,
                events,
                "freshness",
                lambda stat, rate: f"{stat} at {rate:,} ev/s{label}",
            )
    finally:
        workers.stop()
    return run


def freshness_ladder(
    ctx: BenchContext,
    settings: Settings,
    workers: Workers,
    events: pd.DataFrame,
    section: str,
    measure: Callable[[str, int], str],
    note: str = "",
) -> None:
    """Freshness p50 / p99 rows at each of the sizes' input rates (background clicks from
    ``events``), up to the first rate the learner no longer keeps up with. ``measure`` names a
    row from its statistic and rate."""
    for rate in ctx.sizes.freshness_rates:
        result = freshness_at(settings, workers, events, rate, ctx.sizes.freshness_seconds)
        keeps_up = result.drain <= SATURATION_DRAIN_SECONDS
        details = (
            f"{result.probes} probes; input {result.input_rate:,.0f} ev/s; "
            f"learner caught up {result.drain:.1f}s after the input stopped"
            + ("" if keeps_up else "; SATURATED")
        )
        goal = "< 2" if rate == 1_000 else ""
        ctx.add(
            BenchRow(
                section, measure("p50", rate), result.p50, "s", note=f"{note}; {details}" if note else details
            )
        )
        ctx.add(BenchRow(section, measure("p99", rate), result.p99, "s", goal=goal))
        if not keeps_up:
            break
        _drain(workers, timeout=120)


def stage_rate(settings: Settings, clicks_topic: str, count: int, tmp: Path) -> float:
    """Events/s of the sessionize stage alone: an ingest worker (no learner) draining the first
    ``count`` events of ``clicks_topic`` from the earliest offset, with a group, a table and
    output topics of its own, timed from the last poll before its first event to its last."""
    stage = bench_settings(settings, settings.broker_url, tmp / f"stage-{uuid.uuid4().hex[:8]}")
    stage = stage.model_copy(update={"clicks_topic": clicks_topic, "role": "ingest"})
    ensure_topics(stage)
    worker = WorkerProcess(stage, stage.broker_url)
    # Launched, not started: polled from before it owns a partition, so its first event is seen.
    worker.launch()
    try:
        first, sessionized, _ = _wait_pipeline(worker, count, time.monotonic(), timeout=300, learn=False)
    finally:
        worker.stop()
    return count / (sessionized - first)


def _wait_pipeline(
    workers: Workers | WorkerProcess, count: int, started: float, timeout: float, learn: bool = True
) -> tuple[float, float, float]:
    """Poll the workers: (start, all sessionized, all learned), monotonic (without ``learn``,
    all sessionized twice). The start is the last poll that saw no event accepted (the
    producer's start before any): a small run can be sessionized within one poll, and the rates
    must stay finite lower bounds. A worker that does not answer yet has accepted nothing."""
    first = sessionized = math.nan
    nothing_yet = started
    deadline = started + timeout
    while time.monotonic() < deadline:
        polled = time.monotonic()
        try:
            samples = workers.metrics()
        except OSError:  # not serving yet: its web server starts before its consumer
            time.sleep(0.1)
            continue
        now = time.monotonic()
        accepted = metric_total(samples, "onevec_events_accepted_total") + metric_total(
            samples, "onevec_events_rejected_total"
        )
        if accepted == 0:
            nothing_yet = polled
        elif math.isnan(first):
            first = nothing_yet
        if accepted >= count and math.isnan(sessionized):
            sessionized = now
            if not learn:
                return first, sessionized, sessionized
        if metric_total(samples, "onevec_examples_learned_total") >= count:
            return first, sessionized, now
        # A scrape renders every metric on the worker's event loop: polling much faster would
        # slow down what is being measured.
        time.sleep(0.1)
    raise TimeoutError(f"the worker did not learn {count} events in {timeout:.0f}s; log: {workers.log_path}")


def _drain(workers: Workers, timeout: float) -> None:
    """Wait until the learner has caught up with everything sessionized."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        samples = workers.metrics()
        if metric_total(samples, "onevec_examples_learned_total") >= metric_total(
            samples, "onevec_examples_emitted_total"
        ):
            return
        time.sleep(0.2)


def _stage(packed: bool) -> str:
    return f"sessionize stage alone, {'packed records' if packed else 'one event per record'}"


def _add_stage_row(ctx: BenchContext, packed: bool, ceilings: Ceilings) -> None:
    """Goals of issue 21: the sessionize stage at least the peer's rate when the producer packs
    records, at least half of it with one event per record."""
    name, peer = _stage(packed), ceilings.peer
    rate = ceilings.median(name)
    ctx.add(
        BenchRow(
            "pipeline",
            f"{name} (ingest worker)",
            rate,
            "ev/s",
            peer,
            goal="" if peer is None else (">= 1" if packed else ">= 0.5"),
            note=f"the pipeline's topic drained from the earliest offset, timed like the peer; "
            f"{_shares(rate, ceilings)}; {ceilings.runs_note(name)}; ceiling: "
            + (
                "the Quix Streams peer (one event per record)"
                if peer is not None
                else f"none, peer {ceilings.peer_missing}"
            ),
        )
    )


def _add_pipeline_rows(
    ctx: BenchContext, roles: tuple[str, ...], run: PipelineRun, ceilings: Ceilings
) -> None:
    label = (", packed records" if run.packed else "") + layout_label(roles)
    sessionized = run.events / (run.sessionized - run.first)
    learned = run.events / (run.learned - run.first)
    peer = ceilings.peer
    # Goal of issue 21: end to end at least 0.8 of sessionize (the sessionize stage's own goals
    # are on the rows of the stage alone, measured as the peer is, with no learner running).
    records = "records packed per partition by the producer" if run.packed else "one event per record"
    ctx.add(
        BenchRow(
            "pipeline",
            f"sessionized (ingest -> sessions){label}",
            sessionized,
            "ev/s",
            peer,
            note=f"{run.events:,} MovieLens events, {records}, while the learner runs; "
            f"{_shares(sessionized, ceilings)}; ceiling: "
            + (
                "the Quix Streams peer (one event per record)"
                if peer is not None
                else f"none, peer {ceilings.peer_missing}"
            ),
        )
    )
    ctx.add(
        BenchRow(
            "pipeline",
            f"end to end (-> learner -> Qdrant){label}",
            learned,
            "ev/s",
            sessionized,
            goal=">= 0.8",
            note=f"{_shares(learned, ceilings)}; ceiling: this layout's sessionize rate; "
            f"producer ran at {run.events / run.produce_seconds:,.0f} ev/s",
        )
    )


def _shares(rate: float, ceilings: Ceilings) -> str:
    return f"{rate / ceilings.raw:.2g} of raw aiokafka, {rate / ceilings.noop:.2g} of the no-op Faust agent"
