"""``onevec bench``: every hop measured against its own ceiling, in one run, on one broker.

Sections (each a row group of one table; ratios are what matter, since absolute figures
depend on what else the machine runs):

1. **pipeline**: a real worker (sessionize -> examples -> learner -> Qdrant) consuming a
   MovieLens-100k slice, against a no-op Faust agent (own consumer group) draining the same
   events from the same clicks topic.
2. **learner**: examples/s of the trainer alone, of a full learner step (prequential scoring,
   training, session vectors, choice of items to publish) and of the learner with its Qdrant
   sink, against a raw torch loop of the same model (same tables, session network, losses and
   batch size; tensors prepared up front, stock torch optimisers, no online bookkeeping).
3. **sink**: points/s of ``UpsertBuffer`` over ``QdrantStore`` against raw
   ``QdrantClient.upsert`` calls of the same points, in each local-mode backend.
4. **freshness**: p50 / p99 seconds from sending a click on a new item to its vector being
   served by the worker (GET /items), under paced background load at fixed input rates, up
   to the rate where the learner no longer keeps up.
5. **memory**: peak RSS and learner throughput with 1k..1M *synthetic* item ids (synthetic
   catalogue, synthetic Zipf clicks), one subprocess per size; RSS is also sampled halfway
   through the events, so growth with events (should be none) shows next to growth with items.

``python -m onevec.streams.tools.bench noop COUNT`` and
``python -m onevec.streams.tools.bench memory ITEMS EVENTS`` are the child processes of sections 1
and 5.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from onevec.streams.settings import Settings

__all__ = ["BenchRow", "BenchSizes", "run_bench"]

DATASET = "movielens-100k"
WARMUP_BATCHES = 2  # torch's first calls allocate and dispatch lazily: not timed
SECTIONS = ("pipeline", "learner", "sink", "freshness", "memory")
SATURATION_DRAIN_SECONDS = 2.0


@dataclass(frozen=True)
class BenchSizes:
    pipeline_events: int = 40_000  # the no-op ceiling drains 10k in <1 s: too short to time well
    learner_examples: int = 30_000  # several rounds of learner_round_batches (16) x 256
    sink_points: int = 20_000
    sink_disk_points: int = 2_000
    freshness_rates: tuple[int, ...] = (200, 1_000, 2_000, 5_000)
    freshness_seconds: float = 15.0
    memory_items: tuple[int, ...] = (1_000, 10_000, 100_000, 1_000_000)
    memory_events: int = 4_096

    @classmethod
    def quick(cls) -> BenchSizes:
        return cls(
            pipeline_events=1_500,
            learner_examples=2_048,
            sink_points=1_000,
            sink_disk_points=300,
            freshness_rates=(200,),
            freshness_seconds=5.0,
            memory_items=(1_000, 10_000),
            memory_events=1_024,
        )


@dataclass
class BenchRow:
    section: str
    measure: str
    value: float
    unit: str
    ceiling: float | None = None  # the same work done by the reference
    goal: str = ""  # e.g. ">= 0.5" on the ratio, "< 2" on the value
    note: str = ""

    @property
    def ratio(self) -> float | None:
        return self.value / self.ceiling if self.ceiling else None

    @property
    def met(self) -> bool | None:
        if not self.goal:
            return None
        op, bound = self.goal.split()
        subject = self.ratio if self.ceiling is not None else self.value
        if subject is None or not math.isfinite(subject):
            return False
        return subject >= float(bound) if op == ">=" else subject < float(bound)


@dataclass
class _Context:
    settings: Settings
    sizes: BenchSizes
    console: Console
    rows: list[BenchRow] = field(default_factory=list)

    def add(self, row: BenchRow) -> None:
        self.rows.append(row)
        ceiling = "" if row.ceiling is None else f" (ceiling {_fmt(row.ceiling)})"
        self.console.log(f"{row.section}: {row.measure} = {_fmt(row.value)} {row.unit}{ceiling}")


# --- entry point --------------------------------------------------------------------------


def run_bench(
    settings: Settings,
    *,
    quick: bool = False,
    sections: Sequence[str] = SECTIONS,
    output: Path | None = Path("reports/bench"),
    console: Console | None = None,
    memory_items: Sequence[int] = (),
) -> list[BenchRow]:
    """Run the chosen sections, print one table, write ``output``.md / .json; return the rows."""
    console = console or Console()
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    sizes = BenchSizes.quick() if quick else BenchSizes()
    if memory_items:
        sizes = dataclasses.replace(sizes, memory_items=tuple(memory_items))
    ctx = _Context(settings, sizes, console)
    load = os.getloadavg()
    started = time.time()
    if "learner" in sections:
        bench_learner(ctx)
    if "sink" in sections:
        bench_sink(ctx)
    if "pipeline" in sections or "freshness" in sections:
        bench_stream(ctx, pipeline="pipeline" in sections, freshness="freshness" in sections)
    if "memory" in sections:
        bench_memory(ctx)
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


def render_table(rows: Sequence[BenchRow], title: str) -> Table:
    table = Table(title=title)
    for column in ("section", "measure", "onevec", "ceiling", "ratio", "goal", "note"):
        table.add_column(column, justify="right" if column in ("onevec", "ceiling", "ratio") else "left")
    for row in rows:
        cells = _cells(row)
        table.add_row(*cells[:5], _goal_cell(row, rich=True), cells[6])
    return table


def write_reports(rows: Sequence[BenchRow], title: str, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        f"## {title}",
        "",
        "| section | measure | onevec | ceiling | ratio | goal | note |",
        "|---" * 7 + "|",
    ]
    for row in rows:
        cells = _cells(row)
        lines.append("| " + " | ".join([*cells[:5], _goal_cell(row, rich=False), cells[6]]) + " |")
    output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    payload = {
        "title": title,
        "rows": [asdict(r) | {"ratio": r.ratio, "met": r.met} for r in rows],
    }
    output.with_suffix(".json").write_text(json.dumps(payload, indent=2, allow_nan=True) + "\n")


def _cells(row: BenchRow) -> list[str]:
    ratio = row.ratio
    return [
        row.section,
        row.measure,
        f"{_fmt(row.value)} {row.unit}",
        "" if row.ceiling is None else f"{_fmt(row.ceiling)} {row.unit}",
        "" if ratio is None else f"{ratio:.2f}",
        row.goal,
        row.note,
    ]


def _goal_cell(row: BenchRow, rich: bool) -> str:
    if row.met is None:
        return ""
    mark = "met" if row.met else "MISSED"
    if rich:
        mark = f"[green]{mark}[/]" if row.met else f"[red]{mark}[/]"
    return f"{row.goal} {mark}"


def _fmt(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


# --- section 2: learner vs raw torch ------------------------------------------------------


def _learner_inputs(count: int) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    from onevec.models.datasets import load_events
    from onevec.models.pretrain import session_examples
    from onevec.streams.learner.learner import load_attributes

    events = load_events(DATASET, 1800.0)
    examples = session_examples(events.head(count))
    return examples, load_attributes(DATASET)


def _batches(examples: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    return [examples[i : i + size] for i in range(0, len(examples), size)]


def bench_learner(ctx: _Context) -> None:
    import torch

    from onevec.models.online.trainer import OnlineTrainer
    from onevec.streams.learner.learner import Learner, attribute_tokens
    from onevec.streams.qdrant import QdrantStore

    settings = ctx.settings
    examples, attributes = _learner_inputs(ctx.sizes.learner_examples)
    batch_size = settings.learner_batch_size
    batches = _batches(examples, batch_size)

    raw_steps = _raw_torch_steps(settings, batches, attributes)
    trainer = OnlineTrainer(settings.model_config_for_training())
    for item_id, attrs in attributes.items():
        trainer.set_attributes(item_id, attribute_tokens(attrs))
    per_round = settings.learner_round_batches
    with tempfile.TemporaryDirectory() as tmp:
        learners = []
        for name in ("single", "backlog"):
            local = settings.model_copy(update={"data_dir": Path(tmp) / name})
            learners.append(Learner(local, QdrantStore(dim=local.model_dim), attributes))
            _publish_catalogue(learners[-1])  # once at start, not per-example work
        single, backlog = learners
        # Interleaved round by round, so a change in the machine's load hits every variant
        # alike. A round under backlog is what the learner forms when records queue up
        # (_fill_batch): learner_round_batches micro-batches, stepped one by one.
        seconds = {"raw": 0.0, "trainer": 0.0, "single": 0.0, "backlog": 0.0}
        timed = 0
        for first in [0, *range(WARMUP_BATCHES, len(batches), per_round)]:
            # The first WARMUP_BATCHES batches warm every variant up, untimed.
            end = WARMUP_BATCHES if first == 0 else first + per_round
            group = batches[first:end]
            for name, steps in (
                ("raw", raw_steps[first:end]),
                ("trainer", [functools.partial(trainer.learn, batch) for batch in group]),
                ("single", [functools.partial(single._learn, batch) for batch in group]),
                ("backlog", [functools.partial(backlog._learn, [e for batch in group for e in batch])]),
            ):
                started = time.perf_counter()
                for step in steps:
                    step()
                if first > 0:
                    seconds[name] += time.perf_counter() - started
            if first > 0:
                timed += sum(map(len, group))
        sink_seconds = asyncio.run(
            _learner_with_sink(settings.model_copy(update={"data_dir": Path(tmp)}), attributes, examples)
        )

    n = timed  # every variant times the same batches
    threads = torch.get_num_threads()  # as the Learner set it (Settings.learner_torch_threads)
    raw = n / seconds["raw"]
    note = f"batch {batch_size}, {n:,} MovieLens examples, torch threads {threads}"
    ctx.add(BenchRow("learner", "trainer.learn only", n / seconds["trainer"], "ex/s", raw, note=note))
    ctx.add(
        BenchRow(
            "learner",
            "learner round of 1 micro-batch (score+train+select+points)",
            n / seconds["single"],
            "ex/s",
            raw,
            note="the learner thread's work when records arrive one batch at a time (light load); "
            "ceiling: raw torch, same model and batch",
        )
    )
    ctx.add(
        BenchRow(
            "learner",
            f"learner under backlog: rounds of {per_round} micro-batches",
            n / seconds["backlog"],
            "ex/s",
            raw,
            goal=">= 0.8",
            note=f"the same work per step; sessions, points and drift once per round of {per_round} "
            "(what the learner does whenever examples queue up, i.e. at full throughput)",
        )
    )
    ctx.add(BenchRow("learner", "learner + Qdrant sink (memory)", n / sink_seconds, "ex/s", raw))


def _publish_catalogue(learner: Any) -> None:
    """What a starting worker does (``publish_all``) minus the writes: every known item is
    encoded and remembered as published, and the change marks are drained."""
    ids = learner.trainer.item_encoder.item_ids()
    learner._material_changes(ids, set(ids))
    learner.trainer.changed_items()


async def _learner_with_sink(
    settings: Settings, attributes: dict[str, dict[str, Any]], examples: list[dict[str, Any]]
) -> float:
    from onevec.streams.learner.learner import Learner
    from onevec.streams.qdrant import QdrantStore

    store = QdrantStore(dim=settings.model_dim)
    await store.ensure_collections()
    learner = Learner(settings, store, attributes)
    await learner.publish_all()
    await learner.buffer.flush()
    records = [("bench:0", offset, [example]) for offset, example in enumerate(examples)]
    warmup = WARMUP_BATCHES * settings.learner_batch_size
    await learner.learn_records(records[:warmup])
    started = time.perf_counter()
    await learner.learn_records(records[warmup:])
    await learner.buffer.flush()
    seconds = time.perf_counter() - started
    await learner.buffer.close()
    learner.thread.shutdown(wait=True)
    await store.close()
    return seconds


def _raw_torch_steps(
    settings: Settings, batches: list[list[dict[str, Any]]], attributes: dict[str, dict[str, Any]]
) -> list[Callable[[], None]]:
    """The same model as OnlineTrainer (item + token tables, attention session network,
    logQ-corrected sampled softmax + SGNS), written as a plain torch loop: every id mapped
    and every tensor built up front, fixed-size tables, stock optimisers. One callable per
    batch, each one training step."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from onevec.models.online.session_encoder import _SessionNet
    from onevec.streams.learner.learner import attribute_tokens

    config = settings.model_config_for_training()
    dim, window, max_prefix = config.dim, config.window, config.max_prefix
    torch.manual_seed(config.seed)
    records = [e for batch in batches for e in batch]
    items: dict[str, int] = {}
    tokens: dict[str, int] = {}
    for item_id in attributes:
        items.setdefault(item_id, len(items))
    for e in records:
        for item in [*e["prefix"][-max_prefix:], e["item_id"]]:
            items.setdefault(str(item), len(items))
    bags = [[] for _ in items]
    for item_id, attrs in attributes.items():
        bags[items[item_id]] = [tokens.setdefault(t, len(tokens)) for t in attribute_tokens(attrs)]
    pad = len(tokens)
    width = max(1, *map(len, bags))
    token_matrix = torch.full((len(items), width), pad, dtype=torch.long)
    for row, bag in enumerate(bags):
        token_matrix[row, : len(bag)] = torch.tensor(bag, dtype=torch.long)
    item_table = nn.Embedding(len(items), dim, sparse=True)
    nn.init.normal_(item_table.weight, std=config.init_std)
    token_table = nn.Embedding(pad + 1, dim, sparse=True, padding_idx=pad)
    net = _SessionNet(dim, max_prefix)
    sparse = torch.optim.SparseAdam([*item_table.parameters(), *token_table.parameters()], lr=config.lr)
    dense = torch.optim.Adam(net.parameters(), lr=config.lr)
    counts = torch.ones(len(items), dtype=torch.float64)

    def vectors(rows: torch.Tensor) -> torch.Tensor:
        # Each distinct row looked up once (a batch repeats popular items many times).
        unique, inverse = torch.unique(rows, return_inverse=True)
        bags = F.embedding_bag(
            token_matrix[unique], token_table.weight, mode="mean", sparse=True, padding_idx=pad
        )
        return (item_table(unique) + bags).index_select(0, inverse.reshape(-1)).reshape(*rows.shape, dim)

    def prepare(chunk: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        targets = torch.tensor([items[str(e["item_id"])] for e in chunk])
        prefixes = [[items[str(i)] for i in e["prefix"][-max_prefix:]] for e in chunk]
        lengths = torch.tensor([len(p) for p in prefixes])
        prefix = torch.zeros(len(chunk), max(1, int(lengths.max())), dtype=torch.long)
        for i, p in enumerate(prefixes):
            prefix[i, : len(p)] = torch.tensor(p, dtype=torch.long)
        return targets, prefix, lengths

    def step(targets: torch.Tensor, prefix: torch.Tensor, lengths: torch.Tensor) -> None:
        counts.index_add_(0, targets, torch.ones(len(targets), dtype=torch.float64))
        smoothed = counts**0.75
        negatives = torch.multinomial(smoothed, config.negatives, replacement=True)
        real = torch.arange(prefix.shape[1])[None, :] < lengths[:, None]
        sessions = net(vectors(prefix) * real[..., None], lengths)
        candidates = torch.cat([targets, negatives])
        log_q = torch.cat(
            [torch.log(counts[targets] / counts.sum()), torch.log(smoothed[negatives] / smoothed.sum())]
        ).float()
        logits = sessions @ vectors(candidates).T - log_q
        own = torch.arange(len(targets))
        accidental = candidates[None, :] == targets[:, None]
        accidental[own, own] = False
        loss = F.cross_entropy(logits.masked_fill(accidental, float("-inf")), own)
        start_pos = (lengths - window).clamp(min=0)
        positions = torch.arange(prefix.shape[1])
        in_window = (positions >= start_pos[:, None]) & (positions < lengths[:, None])
        example, position = in_window.nonzero(as_tuple=True)
        if example.numel():
            context = vectors(prefix[example, position])
            target_rows = targets[example]
            positive = (context * vectors(target_rows)).sum(-1)
            negative = context @ vectors(negatives).T
            mask = (negatives[None, :] != target_rows[:, None]).float()
            negative_loss = (F.softplus(negative) * mask).sum(-1) / mask.sum(-1).clamp(min=1)
            loss = loss + (F.softplus(-positive) + negative_loss).mean()
        sparse.zero_grad()
        dense.zero_grad()
        loss.backward()
        sparse.step()
        dense.step()
        loss.item()

    return [functools.partial(step, *prepare(batch)) for batch in batches]


# --- section 3: sink vs raw qdrant-client -------------------------------------------------


def _sink_records(count: int, dim: int) -> list[Any]:
    from onevec.streams.qdrant import ItemRecord

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    units = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return [
        ItemRecord(
            item_id=f"synthetic-{i}",
            vectors={"unified": units[i], "behaviour": vectors[i]},
            attributes={"category": f"c{i % 20}"},
            model_version=1,
            updated_at=time.time(),
            event_count=1,
        )
        for i in range(count)
    ]


async def _sink_onevec_seconds(records: list[Any], dim: int, path: Path | None, batch: int) -> float:
    from onevec.streams.qdrant import QdrantStore, UpsertBuffer

    store = QdrantStore(dim=dim, path=path)
    await store.ensure_collections()
    buffer = UpsertBuffer(store, max_batch=batch, max_delay_ms=500.0)
    started = time.perf_counter()
    for record in records:
        await buffer.add(record)
    await buffer.flush()
    seconds = time.perf_counter() - started
    await buffer.close()
    await store.close()
    return seconds


def _sink_raw_seconds(records: list[Any], dim: int, path: Path | None, batch: int) -> float:
    from qdrant_client import QdrantClient, models

    from onevec.streams.qdrant import ITEM_VECTORS, VECTOR_DISTANCES, point_id

    if path is None:
        client = QdrantClient(location=":memory:")
    else:
        path.mkdir(parents=True, exist_ok=True)
        client = QdrantClient(path=str(path))
    config = {n: models.VectorParams(size=dim, distance=VECTOR_DISTANCES[n]) for n in ITEM_VECTORS}
    client.create_collection("items", vectors_config=config)
    started = time.perf_counter()
    for start in range(0, len(records), batch):
        points = [
            models.PointStruct(
                id=point_id("item", r.item_id),
                vector={name: np.asarray(v).tolist() for name, v in r.vectors.items()},
                payload={
                    "item_id": r.item_id,
                    "attributes": dict(r.attributes),
                    "model_version": r.model_version,
                    "updated_at": r.updated_at,
                    "event_count": r.event_count,
                },
            )
            for r in records[start : start + batch]
        ]
        client.upsert("items", points=points, wait=True)
    seconds = time.perf_counter() - started
    client.close()
    return seconds


def bench_sink(ctx: _Context) -> None:
    dim = ctx.settings.model_dim
    batch = ctx.settings.upsert_batch_points
    for label, count, on_disk in (
        ("local :memory:", ctx.sizes.sink_points, False),
        ("local path (disk)", ctx.sizes.sink_disk_points, True),
    ):
        records = _sink_records(count, dim)
        with tempfile.TemporaryDirectory() as tmp:
            raw = _sink_raw_seconds(records, dim, Path(tmp) / "raw" if on_disk else None, batch)
            ours = asyncio.run(
                _sink_onevec_seconds(records, dim, Path(tmp) / "onevec" if on_disk else None, batch)
            )
        ctx.add(
            BenchRow(
                "sink",
                f"UpsertBuffer, {label}",
                count / ours,
                "pt/s",
                count / raw,
                note=f"{count:,} synthetic points x {dim}, batches of {batch}; ceiling: raw client.upsert",
            )
        )
    try:
        import qdrant_edge  # noqa: F401

        edge = "installed but not adopted"
    except ImportError:
        edge = "not installed"
    ctx.console.log(f"sink: qdrant-edge-py {edge}: no embedded-engine row")


# --- sections 1 and 4: the stream (pipeline vs no-op, freshness) ---------------------------


def _bench_settings(settings: Settings, broker_url: str, data_dir: Path) -> Settings:
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


# The worker layouts the stream sections run: one process with both halves, and the split
# (Settings.role) that gives the sessions and the learner a core and an interpreter each.
LAYOUTS: tuple[tuple[str, ...], ...] = (("all",), ("ingest", "learn"))


def _layout_label(roles: tuple[str, ...]) -> str:
    return "" if roles == ("all",) else f", {' + '.join(roles)} workers"


class _Workers:
    """The worker processes of one layout, on one broker: metrics are summed over them and
    lookups go to the one that runs the learner."""

    def __init__(self, settings: Settings, roles: tuple[str, ...]) -> None:
        from onevec.streams.worker import WorkerProcess

        self.workers = [
            WorkerProcess(settings.model_copy(update={"role": role}), settings.broker_url) for role in roles
        ]
        self.learner = self.workers[-1]  # "all" or "learn"

    @property
    def base_url(self) -> str:
        return self.learner.base_url

    @property
    def log_path(self) -> str:
        return ", ".join(str(worker.log_path) for worker in self.workers)

    def start(self, ready_timeout: float) -> None:
        for worker in self.workers:
            worker.start(ready_timeout=ready_timeout)

    def metrics(self) -> dict[str, float]:
        summed: dict[str, float] = {}
        for worker in self.workers:
            for name, value in worker.metrics().items():
                summed[name] = summed.get(name, 0.0) + value
        return summed

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()


def bench_stream(ctx: _Context, pipeline: bool, freshness: bool) -> None:
    from onevec.deploy.embedded_broker import EmbeddedBroker

    embedded = EmbeddedBroker(host=ctx.settings.bind_host) if ctx.settings.embedded else None
    with embedded if embedded is not None else contextlib.nullcontext(), tempfile.TemporaryDirectory() as tmp:
        broker_url = embedded.url if embedded is not None else ctx.settings.broker_url
        runs: list[tuple[tuple[str, ...], PipelineRun]] = []
        first_settings: Settings | None = None
        for number, roles in enumerate(LAYOUTS):
            # Topics and an app id of its own per layout: the second starts from nothing too.
            settings = _bench_settings(ctx.settings, broker_url, Path(tmp) / f"data-{number}")
            first_settings = first_settings or settings
            run = _run_stream(ctx, settings, roles, pipeline, freshness)
            if run is not None:
                runs.append((roles, run))
        if runs and first_settings is not None:
            # The ceiling is measured once every worker has stopped, so nothing else competes
            # for the cores (a live worker's timers, sink flushes and checkpoints would), and
            # it is the same for both layouts.
            noop = _noop_rate(first_settings, ctx.sizes.pipeline_events)
            for roles, run in runs:
                _add_pipeline_rows(ctx, roles, run, noop)


@dataclass(frozen=True)
class PipelineRun:
    """One layout's replay, monotonic seconds: first event accepted, all sessionized, all learned."""

    events: int
    first: float
    sessionized: float
    learned: float
    produce_seconds: float


def _add_pipeline_rows(ctx: _Context, roles: tuple[str, ...], run: PipelineRun, noop: float) -> None:
    label = _layout_label(roles)
    ctx.add(
        BenchRow(
            "pipeline",
            f"sessionized (ingest -> sessions){label}",
            run.events / (run.sessionized - run.first),
            "ev/s",
            noop,
            note=f"{run.events:,} MovieLens events; ceiling: no-op Faust agent, same topic, workers stopped",
        )
    )
    ctx.add(
        BenchRow(
            "pipeline",
            f"end to end (-> learner -> Qdrant){label}",
            run.events / (run.learned - run.first),
            "ev/s",
            noop,
            goal=">= 0.5",
            note=f"producer ran at {run.events / run.produce_seconds:,.0f} ev/s",
        )
    )


def _run_stream(
    ctx: _Context, settings: Settings, roles: tuple[str, ...], pipeline: bool, freshness: bool
) -> PipelineRun | None:
    """Start this layout's workers, replay the pipeline events (when ``pipeline``), then the
    freshness ladder (when ``freshness``); returns the replay's timings."""
    from onevec.models.datasets import load_events
    from onevec.streams.kafka.producer import EventProducer
    from onevec.streams.kafka.replay import replay
    from onevec.streams.kafka.topics import bootstrap_servers, ensure_topics
    from onevec.streams.worker import metric_total

    ensure_topics(settings)
    events = load_events(DATASET, settings.session_gap_seconds)
    count = ctx.sizes.pipeline_events
    label = _layout_label(roles)
    worker = _Workers(settings, roles)
    worker.start(ready_timeout=120)
    run = None
    try:
        if pipeline:
            with EventProducer(bootstrap_servers(settings), settings.clicks_topic) as producer:
                produce_started = time.monotonic()
                produce_seconds = replay(events.head(count), producer)
            first, sessionized, learned = _wait_pipeline(worker, count, produce_started, timeout=900)
            ctx.console.log(f"pipeline{label}: produced {count:,} in {produce_seconds:.1f}s")
            run = PipelineRun(count, first, sessionized, learned, produce_seconds)
        if freshness:
            for rate in ctx.sizes.freshness_rates:
                result = _freshness_at(settings, worker, events, rate, ctx.sizes.freshness_seconds)
                # Saturated: after the input stopped, the learner still had more than
                # SATURATION_DRAIN_SECONDS of work queued (it fell behind during the window).
                keeps_up = result["drain"] <= SATURATION_DRAIN_SECONDS
                note = (
                    f"{result['probes']} probes; input {result['sent'] / result['seconds']:,.0f} ev/s; "
                    f"learner caught up {result['drain']:.1f}s after the input stopped"
                    + ("" if keeps_up else "; SATURATED")
                )
                goal = "< 2" if rate == 1_000 else ""
                ctx.add(BenchRow("freshness", f"p50 at {rate:,} ev/s{label}", result["p50"], "s", note=note))
                ctx.add(BenchRow("freshness", f"p99 at {rate:,} ev/s{label}", result["p99"], "s", goal=goal))
                if not keeps_up:
                    break
                _drain(worker, metric_total, timeout=120)
    finally:
        worker.stop()
    return run


def _wait_pipeline(worker: Any, count: int, started: float, timeout: float) -> tuple[float, float, float]:
    """Poll the worker: (first event accepted, all sessionized, all learned), monotonic."""
    from onevec.streams.worker import metric_total

    first = sessionized = math.nan
    deadline = started + timeout
    while time.monotonic() < deadline:
        samples = worker.metrics()
        now = time.monotonic()
        accepted = metric_total(samples, "onevec_events_accepted_total") + metric_total(
            samples, "onevec_events_rejected_total"
        )
        if accepted > 0 and math.isnan(first):
            first = now
        if accepted >= count and math.isnan(sessionized):
            sessionized = now
        if metric_total(samples, "onevec_examples_learned_total") >= count:
            return first, sessionized, now
        # A scrape renders every metric on the worker's event loop: polling much faster would
        # slow down what is being measured.
        time.sleep(0.1)
    raise TimeoutError(f"the worker did not learn {count} events in {timeout:.0f}s; log: {worker.log_path}")


def _drain(worker: Any, metric_total: Any, timeout: float) -> None:
    """Wait until the learner has caught up with everything sessionized."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        samples = worker.metrics()
        if metric_total(samples, "onevec_examples_learned_total") >= metric_total(
            samples, "onevec_examples_emitted_total"
        ):
            return
        time.sleep(0.2)


def _noop_rate(settings: Settings, count: int, timeout: float = 300.0) -> float:
    """Events/s of a no-op Faust agent draining the first ``count`` events of the clicks topic."""
    from onevec.deploy.embedded_broker import stop_process

    env = dict(os.environ) | settings.to_env() | {"ONEVEC_APP_ID": settings.app_id + "-noop"}
    tmp = Path(tempfile.mkdtemp(prefix="onevec-bench-noop-"))
    result, log_path = tmp / "result.json", tmp / "noop.log"
    with open(log_path, "ab") as log:
        # Faust sends a worker's stdout to its log, so the result comes back in a file.
        proc = subprocess.Popen(
            [sys.executable, "-m", "onevec.streams.tools.bench", "noop", str(count), str(result)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if result.exists():
                done = json.loads(result.read_text())
                return done["count"] / max(done["last"] - done["first"], 1e-9)
            if proc.poll() is not None:
                raise RuntimeError(f"no-op agent exited early; log: {log_path}")
            time.sleep(0.2)
        raise TimeoutError(f"no-op agent did not see {count} events in {timeout:.0f}s; log: {log_path}")
    finally:
        stop_process(proc, 30)


def _noop_main(count: int, result: Path) -> None:
    """A Faust app whose one agent only counts: the ceiling for any agent on this broker."""
    import faust

    from onevec.deploy.embedded_broker import free_port
    from onevec.streams.kafka.topics import bootstrap_servers
    from onevec.streams.settings import load_settings

    settings = load_settings()
    tmp = tempfile.mkdtemp(prefix="onevec-noop-")
    app = faust.App(
        settings.app_id,
        broker=";".join(f"kafka://{s}" for s in bootstrap_servers(settings)),
        store="memory://",
        autodiscover=False,
        datadir=tmp,
        web_bind=settings.bind_host,
        web_host=settings.bind_host,
        web_port=free_port(settings.bind_host),
        topic_partitions=settings.partitions,
        consumer_auto_offset_reset="earliest",
        **settings.faust_broker_options,
    )
    raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
    topic = app.topic(settings.clicks_topic, **raw)
    state = {"seen": 0, "first": 0.0}

    async def noop(stream: Any) -> None:
        async for _ in stream.events():
            state["seen"] += 1
            if state["seen"] == 1:
                state["first"] = time.monotonic()
            if state["seen"] == count:
                done = {"count": count - 1, "first": state["first"], "last": time.monotonic()}
                partial = result.with_suffix(".tmp")
                partial.write_text(json.dumps(done))
                partial.replace(result)  # atomic: the parent never reads half a file

    app.agent(topic, name="noop")(noop)
    faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()


def _freshness_at(
    settings: Settings, worker: Any, events: Any, rate: int, seconds: float
) -> dict[str, float]:
    """Background clicks at ``rate`` ev/s (MovieLens users and items, re-timed to now) plus a
    probe every 0.25 s: a click on a brand-new item, timed until GET /items serves it."""
    from onevec.streams.kafka.producer import EventProducer
    from onevec.streams.kafka.topics import bootstrap_servers
    from onevec.streams.worker import metric_total

    servers = bootstrap_servers(settings)
    tag = uuid.uuid4().hex[:6]
    stop = threading.Event()
    sent = [0]
    pairs = list(zip(events["user_id"].astype(str), events["item_id"].astype(str), strict=True))

    def load() -> None:
        with EventProducer(servers, settings.clicks_topic) as producer:
            started = time.monotonic()
            while not stop.is_set():
                due = int((time.monotonic() - started) * rate)
                while sent[0] < due:
                    user, item = pairs[sent[0] % len(pairs)]
                    producer.send(
                        {
                            "user_id": f"{tag}-{user}",
                            "item_id": item,
                            "event_type": "click",
                            "timestamp": time.time(),
                        }
                    )
                    sent[0] += 1
                time.sleep(0.005)

    before = metric_total(worker.metrics(), "onevec_examples_learned_total")
    thread = threading.Thread(target=load, name="bench-load", daemon=True)
    probes = EventProducer(servers, settings.clicks_topic, linger_ms=0)
    pending: dict[str, float] = {}
    latencies: list[float] = []
    thread.start()
    started = time.monotonic()
    next_probe = started
    number = 0
    total, ended, drained = 0, math.nan, None
    try:
        while True:
            now = time.monotonic()
            running = now - started < seconds
            if running and now >= next_probe:
                item = f"probe-{tag}-{number}"
                number += 1
                probes.send(
                    {
                        "user_id": "probe",
                        "session_id": item,
                        "item_id": item,
                        "event_type": "click",
                        "timestamp": time.time(),
                    }
                )
                probes.flush()
                pending[item] = now
                next_probe += 0.25
            if not running and not stop.is_set():
                stop.set()
                thread.join()
                ended = time.monotonic()
                total = sent[0] + number
            if not running and drained is None:
                # How long the learner needs, once the input stops, to catch up with it: a
                # pipeline that keeps up only has its latency left to work off.
                if metric_total(worker.metrics(), "onevec_examples_learned_total") - before >= total:
                    drained = time.monotonic() - ended
                elif time.monotonic() - ended > 120:
                    drained = math.inf
            for item, sent_at in list(pending.items()):
                if _item_served(worker.base_url, item):
                    latencies.append(time.monotonic() - sent_at)
                    del pending[item]
                elif time.monotonic() - sent_at > 60:
                    latencies.append(math.inf)  # reported, never hidden
                    del pending[item]
            if not running and not pending and drained is not None:
                break
            time.sleep(0.02)  # the probes' timing resolution
    finally:
        stop.set()
        thread.join()
        probes.close()
    ordered = np.sort(np.asarray(latencies))
    return {
        "p50": float(np.percentile(ordered, 50)) if len(ordered) else math.nan,
        "p99": float(np.percentile(ordered, 99)) if len(ordered) else math.nan,
        "probes": len(latencies),
        "sent": total,
        "seconds": ended - started,
        "drain": drained,
    }


def _item_served(base_url: str, item: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/items/{urllib.parse.quote(item)}", timeout=10):  # noqa: S310
            return True
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return False
        raise


# --- section 5: memory and throughput vs item count ----------------------------------------


def bench_memory(ctx: _Context) -> None:
    for items in ctx.sizes.memory_items:
        try:
            result = _memory_child(items, ctx.sizes.memory_events)
        except (subprocess.SubprocessError, ValueError) as error:
            ctx.add(BenchRow("memory", f"{items:,} items: peak RSS", math.nan, "MB", note=f"failed: {error}"))
            continue
        per_item = (result["peak_mb"] - result["base_mb"]) * 2**20 / items
        ctx.add(
            BenchRow(
                "memory",
                f"{items:,} items: peak RSS",
                result["peak_mb"],
                "MB",
                note=f"{per_item:,.0f} B/item above the {result['base_mb']:.0f} MB base; "
                f"RSS +{result['events_growth_mb']:.1f} MB over the 2nd half of "
                f"{result['events']:,} events (synthetic)",
            )
        )
        ctx.add(
            BenchRow(
                "memory",
                f"{items:,} items: learner step",
                result["ex_per_s"],
                "ex/s",
                note=f"catalogue of {items:,} registered in {result['register_s']:.1f}s, "
                f"first publish {result['publish_s']:.1f}s",
            )
        )


def _memory_child(items: int, events: int, timeout: float = 900.0) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "onevec.streams.tools.bench", "memory", str(items), str(events)],
        capture_output=True,
        timeout=timeout,
        check=True,
        env=dict(os.environ) | {"ONEVEC_LOG_LEVEL": "warning"},
    )
    return json.loads(out.stdout.decode().strip().splitlines()[-1])


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


def _synthetic_batches(items: int, events: int, batch: int, seed: int = 0) -> Iterator[list[dict[str, Any]]]:
    """Synthetic sessions over ``items`` ids with Zipf-like popularity, generated batch by
    batch so the bench itself holds no events."""
    rng = np.random.default_rng(seed)
    session: list[str] = []
    number = 0
    for start in range(0, events, batch):
        records = []
        for _ in range(min(batch, events - start)):
            if not session or rng.random() < 0.15:
                session, number = [], number + 1
            popular = rng.random() < 0.5
            row = min(int(rng.zipf(1.2)) - 1, items - 1) if popular else int(rng.integers(items))
            item = f"item-{row}"
            records.append(
                {
                    "session_id": f"s{number}",
                    "user_id": f"u{number % 997}",
                    "item_id": item,
                    "prefix": session[-50:],
                    "duplicate": False,
                }
            )
            session = [*session, item]
        yield records


def _memory_main(items: int, events: int) -> None:
    from onevec.streams.learner.learner import Learner
    from onevec.streams.qdrant import QdrantStore

    settings = Settings(data_dir=Path(tempfile.mkdtemp(prefix="onevec-mem-")))
    base = _rss_mb()
    # Synthetic catalogue: 100 categories, 1,000 brands.
    started = time.perf_counter()
    attributes = {f"item-{i}": {"category": f"c{i % 100}", "brand": f"b{i % 1000}"} for i in range(items)}
    learner = Learner(settings, QdrantStore(dim=settings.model_dim), attributes)
    register = time.perf_counter() - started
    started = time.perf_counter()
    _publish_catalogue(learner)
    publish = time.perf_counter() - started
    half = peak_half = 0.0
    learned = 0
    started = time.perf_counter()
    for batch in _synthetic_batches(items, events, settings.learner_batch_size):
        learner._learn(batch)
        learned += len(batch)
        if not half and learned >= events // 2:
            half = _rss_mb()
            peak_half = _peak_rss_mb()
    seconds = time.perf_counter() - started
    peak = _peak_rss_mb()
    result = {
        "items": items,
        "events": events,
        "base_mb": base,
        "peak_mb": peak,
        "events_growth_mb": max(_rss_mb() - half, peak - peak_half),
        "ex_per_s": learned / seconds,
        "register_s": register,
        "publish_s": publish,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "noop":
        _noop_main(int(sys.argv[2]), Path(sys.argv[3]))
    elif sys.argv[1] == "memory":
        _memory_main(int(sys.argv[2]), int(sys.argv[3]))
    else:
        raise SystemExit(f"unknown child command {sys.argv[1]!r}")
