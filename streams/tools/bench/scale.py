"""Section **scale** (opt-in: ``--sections scale``): the whole pipeline at a catalogue's size, on
the **synthetic** scale stream (``models/synthetic_scale.py``: made-up clicks with Zipf item
popularity and MovieLens-100k's session lengths and gaps; by default 1M items and 10M events,
which take hours on two cores).

An ingest and a learn worker on one broker, the learn worker with the stream's catalogue (every
item's attributes) and qdrant-edge on disk, as a deployment at that size runs. Measured:

* the learn worker's start: from launch until it serves (its first start publishes every item);
* end to end: the stream produced as fast as the producer goes, read lazily frame by frame,
  timed from the first event accepted to the last one learned;
* freshness at that size: once the stream is learned, probes on new items at rising input rates
  (``freshness``), up to the first rate the learner no longer keeps up with;
* peak RSS of each worker with its child processes (the learn worker's qdrant-edge engine),
  sampled while the stream runs, and per item for the learn worker.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from onevec.deploy.embedded_broker import EmbeddedBroker
from onevec.models.datasets import iter_events, session_shapes
from onevec.models.synthetic_scale import ScaleSpec
from onevec.streams.kafka.producer import EventProducer
from onevec.streams.kafka.replay import iter_event_dicts
from onevec.streams.kafka.topics import bootstrap_servers, ensure_topics
from onevec.streams.settings import Settings
from onevec.streams.tools.bench.context import BenchContext
from onevec.streams.tools.bench.report import BenchRow
from onevec.streams.tools.bench.stream import bench_settings, freshness_ladder
from onevec.streams.tools.bench.workers import Workers, layout_label
from onevec.streams.worker import metric_total

__all__ = ["ScaleRun", "bench_scale"]

ROLES = ("ingest", "learn")
MIN_EVENTS_PER_SECOND = 100.0  # the slowest end-to-end rate waited for before giving up
POLL_SECONDS = 0.5  # metrics and RSS; a scrape renders every metric on the worker's event loop


@dataclass(frozen=True)
class ScaleRun:
    """One run of the stream through the workers (monotonic seconds, MB)."""

    spec: ScaleSpec
    users: int
    serving_after: float  # launch to the learn worker serving
    events: int
    first: float  # first event accepted
    learned: float  # last event learned
    produce_seconds: float
    peak_mb: dict[str, float]  # per role: the worker and its child processes, sampled
    worker_peak_mb: dict[str, float]  # per role: the worker process alone (its VmHWM)

    @property
    def end_to_end(self) -> float:
        return self.events / (self.learned - self.first)


def bench_scale(ctx: BenchContext) -> None:
    spec = ScaleSpec.parse(ctx.sizes.scale_stream)
    if spec is None:
        raise ValueError(f"{ctx.sizes.scale_stream}: not a synthetic-scale stream name")
    embedded = EmbeddedBroker(host=ctx.settings.bind_host) if ctx.settings.embedded else None
    with embedded if embedded is not None else contextlib.nullcontext(), tempfile.TemporaryDirectory() as tmp:
        broker_url = embedded.url if embedded is not None else ctx.settings.broker_url
        settings = bench_settings(ctx.settings, broker_url, Path(tmp) / "data").model_copy(
            update={"catalog": spec.name, "qdrant_path": Path(tmp) / "qdrant", "qdrant_engine": "edge"}
        )
        ensure_topics(settings)
        workers = Workers(settings, ROLES)
        launched = time.monotonic()
        workers.start(ready_timeout=600 + spec.items / 1_000)
        try:
            workers.wait_serving(timeout=600 + spec.items / 500)
            serving_after = time.monotonic() - launched
            run = _run(ctx, settings, workers, spec, serving_after)
            _add_rows(ctx, run)
            # Background clicks for the probes: the stream's own users and items.
            background = next(
                iter_events(ScaleSpec(spec.items, 100_000, spec.users, spec.zipf, spec.seed).name)
            )
            freshness_ladder(
                ctx,
                settings,
                workers,
                background,
                "scale",
                lambda stat, rate: f"freshness {stat} at {rate:,} ev/s, {spec.items:,} items",
                note=f"synthetic-scale stream{layout_label(ROLES)}, after the stream was learned",
            )
        finally:
            workers.stop()


def _run(
    ctx: BenchContext, settings: Settings, workers: Workers, spec: ScaleSpec, serving_after: float
) -> ScaleRun:
    """Produce the whole stream on a thread while sampling the workers until it is learned."""
    produced: list[float] = []
    failed: list[BaseException] = []

    def produce() -> None:
        try:
            with EventProducer(bootstrap_servers(settings), settings.clicks_topic) as producer:
                started = time.monotonic()
                for frame in iter_events(spec.name):
                    for event in iter_event_dicts(frame):
                        producer.send(event)
                producer.flush()
                produced.append(time.monotonic() - started)
        except BaseException as error:  # noqa: BLE001 - reported by the waiting thread
            failed.append(error)

    thread = threading.Thread(target=produce, name="bench-scale-producer", daemon=True)
    thread.start()
    first = math.nan
    peaks = dict.fromkeys(ROLES, 0.0)
    deadline = time.monotonic() + 600 + spec.events / MIN_EVENTS_PER_SECOND
    while True:
        if failed:
            raise RuntimeError("producing the scale stream failed") from failed[0]
        samples = workers.metrics()
        now = time.monotonic()
        for role, mb in workers.tree_rss_mb().items():
            peaks[role] = max(peaks[role], mb)
        accepted = metric_total(samples, "onevec_events_accepted_total")
        if accepted > 0 and math.isnan(first):
            first = now
        if metric_total(samples, "onevec_examples_learned_total") >= spec.events:
            break
        if now > deadline:
            raise TimeoutError(f"{spec.events:,} events not learned in time; logs: {workers.log_path}")
        time.sleep(POLL_SECONDS)
    thread.join()
    ctx.console.log(f"scale: {spec.name} learned in {now - first:,.0f} s")
    return ScaleRun(
        spec=spec,
        users=spec.users_for(session_shapes()),
        serving_after=serving_after,
        events=spec.events,
        first=first,
        learned=now,
        produce_seconds=produced[0],
        peak_mb=peaks,
        worker_peak_mb=workers.peak_rss_mb(),
    )


def _add_rows(ctx: BenchContext, run: ScaleRun) -> None:
    spec = run.spec
    stream = (
        f"synthetic-scale stream: {spec.items:,} items (Zipf {spec.zipf:g}), {run.users:,} users, "
        f"MovieLens-100k session lengths and gaps"
    )
    ctx.add(
        BenchRow(
            "scale",
            f"learn worker serving after start, {spec.items:,} items",
            run.serving_after,
            "s",
            note="launch to /healthz?ready: the catalogue's attributes loaded, every item published to "
            "qdrant-edge on disk (a first start)",
        )
    )
    ctx.add(
        BenchRow(
            "scale",
            f"end to end (-> learner -> Qdrant), {spec.items:,} items, {spec.events:,} events",
            run.end_to_end,
            "ev/s",
            note=f"{stream}; {layout_label(ROLES).lstrip(', ')}; producer ran at "
            f"{spec.events / run.produce_seconds:,.0f} ev/s",
        )
    )
    above = (run.peak_mb["learn"] - run.peak_mb["ingest"]) * 2**20 / spec.items
    for role in ROLES:
        ctx.add(
            BenchRow(
                "scale",
                f"peak RSS, {role} worker and its child processes, {spec.items:,} items",
                run.peak_mb[role],
                "MB",
                note=f"sampled every {POLL_SECONDS} s while the stream ran; the worker process alone "
                f"peaked at {run.worker_peak_mb[role]:,.0f} MB"
                # The ingest worker is the same program without the learner, its catalogue and
                # its engine: what the learn worker holds above it is what the catalogue costs.
                + (f"; {above:,.0f} B per item above the ingest worker" if role == "learn" else ""),
            )
        )
