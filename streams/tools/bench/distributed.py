"""Section **distributed** (issue 22): what learning on several ranks costs and gives, on gloo over
loopback (torch.distributed, one process per rank, ``torch.multiprocessing`` spawn).

* ``collective``: the gradient exchange alone (``all_reduce_gradients``: three collectives) per
  call, against the table rows in the union, with the session network's dense gradients; a
  barrier before each call, so the figure is the exchange, not waiting for a slower rank.
* ``steps``: real steps of the data-parallel trainer on MovieLens-100k at several batch sizes
  per rank: table rows the exchange carried per step, its time per step (waiting for the
  slower rank included), and the step's time.
* ``stream``: the learner's test-then-train rounds over the first events of MovieLens-100k, on
  one rank (``OnlineTrainer``, as the worker runs it today) and on several
  (``DataParallelTrainer``, each rank learning the examples of its Kafka partitions: the
  session key's partition, partitions dealt round-robin): examples/s of the group and
  prequential HR@20 / MRR@20 over all ranks' scored examples, per seed. Two ways to size a
  rank's step: the one-rank step shared out (``split_step``: the group's step learns as many
  examples as one rank's), and each rank taking a whole one-rank step (the group's step learns
  ``world`` times as many, so the stream takes ``world`` times fewer steps).

    python -m onevec.streams.tools.bench.distributed [--events 20000] [--seeds 0,1,2]

``bench_distributed`` returns the rows for ``onevec bench``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from onevec.models.catalog import attribute_tokens, load_attributes
from onevec.models.clickstream.examples import ExampleRecord
from onevec.models.datasets import load_events
from onevec.models.online.config import ModelConfig
from onevec.models.online.data_parallel import (
    DataParallelTrainer,
    SyncedItemEncoder,
    all_reduce_gradients,
    learn_in_lockstep,
)
from onevec.models.online.round import LearningRound, RoundConfig
from onevec.models.online.trainer import OnlineTrainer
from onevec.models.pretrain import session_examples
from onevec.streams.kafka.producer import key_partition
from onevec.streams.settings import load_settings
from onevec.streams.tools.bench.context import DATASET
from onevec.streams.tools.bench.report import BenchRow

__all__ = ["StreamRun", "bench_distributed", "main", "model_digest", "run_group", "split_step", "stream_run"]

PARTITIONS = 4  # the examples topic's partitions (Settings.partitions' default)
SECTIONS = ("collective", "steps", "stream")
GROUP_TIMEOUT = timedelta(seconds=120)  # a collective waiting longer than this raises


def run_group(world: int, fn: Callable[..., Any], *args: Any) -> list[Any]:
    """``fn(rank, world, *args)`` on ``world`` processes joined in a gloo group on 127.0.0.1;
    the results in rank order (each JSON-serialisable). ``fn`` must be importable."""
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_rank_main, args=(world, _free_port(), out, fn, args), nprocs=world, join=True)
        return [json.loads((Path(out) / f"{rank}.json").read_text()) for rank in range(world)]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _rank_main(
    rank: int, world: int, port: int, out: str, fn: Callable[..., Any], args: tuple[Any, ...]
) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # the worker's learner_torch_threads default; ranks share the cores
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=GROUP_TIMEOUT)
    try:
        result = fn(rank, world, *args)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    (Path(out) / f"{rank}.json").write_text(json.dumps(result))


# ---- the exchange alone -------------------------------------------------------------------


def collective_cost(
    rank: int, world: int, rows: Sequence[int], dim: int, repeats: int
) -> list[dict[str, float]]:
    """Per union size: ms per ``all_reduce_gradients`` call (median of ``repeats``), every rank
    touching the same ``rows`` rows of an item table, plus a session network's dense grads."""
    net = OnlineTrainer(ModelConfig(dim=dim)).session_encoder.net  # the real dense weights
    table = nn.Parameter(torch.zeros(max(rows) + 1, dim))
    dense = [nn.Parameter(torch.zeros(p.shape)) for p in net.parameters()]
    named = [("items.item", table), *((f"session.{i}", p) for i, p in enumerate(dense))]
    out = []
    for count in rows:
        times = []
        for _ in range(repeats):
            touched = torch.arange(count)
            table.grad = torch.sparse_coo_tensor(touched[None, :], torch.randn(count, dim), table.shape)
            for p in dense:
                p.grad = torch.randn(p.shape)
            dist.barrier()
            started = time.perf_counter()
            all_reduce_gradients(named, [table], None)
            times.append(time.perf_counter() - started)
        out.append(
            {
                "rows": count,
                "ms": 1000 * statistics.median(times),
                "dense_floats": sum(p.numel() for p in dense),
            }
        )
    return out


# ---- real steps ---------------------------------------------------------------------------


def step_cost(rank: int, world: int, batch_sizes: Sequence[int], steps: int) -> list[dict[str, float]]:
    """Per batch size (per rank): ``steps`` data-parallel steps on consecutive MovieLens-100k
    examples (rank r takes the r-th of each ``world`` batches), after two untimed ones; fewer
    where the data set runs out."""
    examples = session_examples(load_events(DATASET, 1800.0))
    out = []
    for size in batch_sizes:
        timed_steps = max(1, min(steps, len(examples) // (world * size) - 2))
        trainer = DataParallelTrainer(ModelConfig())
        encoder = trainer.item_encoder
        assert isinstance(encoder, SyncedItemEncoder)
        timed = cpu = 0.0
        for step in range(timed_steps + 2):
            start = (step * world + rank) * size
            batch = examples[start : start + size]
            if step == 2:
                encoder.sync_seconds, encoder.syncs, encoder.synced_rows = 0.0, 0, 0
                timed = cpu = 0.0
            started, cpu_started = time.perf_counter(), time.process_time()
            trainer.learn(batch)
            timed += time.perf_counter() - started
            cpu += time.process_time() - cpu_started
        out.append(
            {
                "batch": size,
                "rows_per_sync": encoder.synced_rows / encoder.syncs,
                "sync_ms": 1000 * encoder.sync_seconds / encoder.syncs,
                "step_ms": 1000 * timed / timed_steps,  # a step is 1 + replay syncs
                "step_cpu_ms": 1000 * cpu / timed_steps,
                "syncs_per_step": encoder.syncs / timed_steps,
            }
        )
    return out


# ---- the stream ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamRun:
    world: int
    seed: int
    examples: int
    seconds: float  # the slowest rank's learning time
    cpu_seconds: float  # the busiest rank's CPU time while learning (waits not counted)
    scored: int
    hits: int
    reciprocal_rank: float
    digests: list[str]  # per rank, of the model's tables and session network

    @property
    def examples_per_second(self) -> float:
        return self.examples / self.seconds

    @property
    def examples_per_cpu_second(self) -> float:
        """What the group would learn a second with a core per rank and no wait but the
        exchanges' own (an upper bound on a loaded machine, where wall time is noise)."""
        return self.examples / self.cpu_seconds

    @property
    def hr(self) -> float:
        return self.hits / self.scored

    @property
    def mrr(self) -> float:
        return self.reciprocal_rank / self.scored


def stream_run(
    world: int,
    seed: int,
    events: int,
    batch_size: int,
    round_examples: int,
    overrides: dict[str, Any] | None = None,
) -> StreamRun:
    """The learner's rounds over the first ``events`` MovieLens-100k events on ``world`` ranks,
    ``batch_size`` examples a step per rank; ``overrides``: ModelConfig fields."""
    results = run_group(world, learn_stream, seed, events, batch_size, round_examples, overrides or {})
    return StreamRun(
        world=world,
        seed=seed,
        examples=sum(r["examples"] for r in results),
        seconds=max(r["seconds"] for r in results),
        cpu_seconds=max(r["cpu_seconds"] for r in results),
        scored=sum(r["scored"] for r in results),
        hits=sum(r["hits"] for r in results),
        reciprocal_rank=sum(r["reciprocal_rank"] for r in results),
        digests=[r["digest"] for r in results],
    )


def learn_stream(
    rank: int,
    world: int,
    seed: int,
    events: int,
    batch_size: int,
    round_examples: int,
    overrides: dict[str, Any],
) -> dict[str, Any]:
    """One rank's share: the stream cut into rounds of ``round_examples`` records in arrival
    order, of which this rank learns the ones its partitions hold. One rank runs the plain
    trainer and ``LearningRound.learn``, as the worker does today."""
    settings = load_settings()
    base = settings.model_config_for_training().model_dump()
    config = ModelConfig.model_validate({**base, **overrides, "seed": seed})
    examples = session_examples(load_events(DATASET, settings.session_gap_seconds).head(events))
    trainer = DataParallelTrainer(config) if world > 1 else OnlineTrainer(config)
    for item_id, attributes in sorted(load_attributes(DATASET).items()):
        trainer.set_attributes(item_id, attribute_tokens(attributes))
    learning = LearningRound(trainer, RoundConfig(batch_size=batch_size, seed=seed))
    mine = [e for e in examples if key_partition(e["session_id"].encode(), PARTITIONS) % world == rank]
    bounds = _round_bounds(examples, mine, round_examples)
    dist.barrier()
    started, cpu = time.perf_counter(), time.process_time()
    for start, end in bounds:
        if world > 1:
            learn_in_lockstep(learning, mine[start:end])
        else:
            learning.learn(mine[start:end])
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    score = learning.score
    return {
        "examples": len(mine),
        "seconds": seconds,
        "cpu_seconds": cpu,
        "scored": score.scored,
        "hits": score.hits,
        "reciprocal_rank": score.reciprocal_rank,
        "digest": model_digest(trainer),
    }


def _round_bounds(
    examples: Sequence[ExampleRecord], mine: Sequence[ExampleRecord], round_examples: int
) -> list[tuple[int, int]]:
    """This rank's slices of ``mine`` per round of ``round_examples`` records of the whole
    stream (the rounds every rank takes at the same time)."""
    ids = {id(e) for e in mine}
    bounds, taken = [], 0
    for start in range(0, len(examples), round_examples):
        count = sum(id(e) in ids for e in examples[start : start + round_examples])
        bounds.append((taken, taken + count))
        taken += count
    return bounds


def model_digest(trainer: OnlineTrainer) -> str:
    """A hash of the known rows of every table and of the session network's weights."""
    digest = hashlib.sha256()
    encoder = trainer.item_encoder
    for name, table in encoder.tables.items():
        digest.update(table.detach()[: len(encoder.vocabularies[name])].numpy().tobytes())
    for _, param in sorted(trainer.session_encoder.net.named_parameters()):
        digest.update(param.detach().numpy().tobytes())
    return digest.hexdigest()


# ---- the section --------------------------------------------------------------------------


def bench_distributed(
    events: int = 20_000,
    seeds: Sequence[int] = (0, 1, 2),
    batch_sizes: Sequence[int] = (256, 1024, 4096),
    union_rows: Sequence[int] = (256, 1024, 4096, 16_384, 65_536),
    world: int = 2,
    report: Callable[[str], None] = print,
    sections: Sequence[str] = SECTIONS,
) -> list[BenchRow]:
    settings = load_settings()
    rows: list[BenchRow] = []
    exchanges = (
        run_group(world, collective_cost, union_rows, settings.model_dim, 20)[0]
        if "collective" in sections
        else []
    )
    for cost in exchanges:
        rows.append(
            BenchRow(
                "distributed",
                f"exchange, {cost['rows']:,} union rows x {settings.model_dim}",
                cost["ms"],
                "ms",
                note=f"{world} ranks, gloo; + {cost['dense_floats']:,.0f} dense floats",
            )
        )
        report(f"exchange {cost}")
    for cost in run_group(world, step_cost, batch_sizes, 16)[0] if "steps" in sections else []:
        rows += [
            BenchRow(
                "distributed",
                f"step, batch {cost['batch']:,}/rank: rows per exchange",
                cost["rows_per_sync"],
                "rows",
            ),
            BenchRow("distributed", f"step, batch {cost['batch']:,}/rank: exchange", cost["sync_ms"], "ms"),
            BenchRow(
                "distributed",
                f"step, batch {cost['batch']:,}/rank: whole step",
                cost["step_ms"],
                "ms",
                note=f"{cost['syncs_per_step']:.0f} exchanges a step (1 + replay);"
                f" CPU {cost['step_cpu_ms']:.1f} ms",
            ),
        ]
        report(f"step {cost}")
    batch, replay_batch = settings.learner_batch_size, settings.model_config_for_training().replay_batch
    variants = {
        "1 rank": (1, batch, {}),
        f"{world} ranks, the step split": (world, *split_step(world, batch, replay_batch)),
        f"{world} ranks, each the whole step": (world, batch, {}),
    }
    runs: dict[str, list[StreamRun]] = {name: [] for name in variants}
    for seed in (
        seeds if "stream" in sections else []
    ):  # variants interleaved per seed: a change of load hits them alike
        for name, (n, per_rank, overrides) in variants.items():
            run = stream_run(n, seed, events, per_rank, settings.learner_round_examples, overrides)
            runs[name].append(run)
            report(
                f"stream {name} seed={seed} ex/s={run.examples_per_second:.0f}"
                f" ex/cpu-s={run.examples_per_cpu_second:.0f} hr={run.hr:.4f}"
                f" mrr={run.mrr:.4f} identical={len(set(run.digests)) == 1}"
            )
    for name, done in runs.items():
        if not done:
            continue
        note = f"{len(done)} seeds, first {events:,} events of {DATASET}"
        for measure, unit, values in (
            ("examples/s", "ex/s", [r.examples_per_second for r in done]),
            (
                "examples per CPU second of the busiest rank",
                "ex/s",
                [r.examples_per_cpu_second for r in done],
            ),
            ("HR@20", "", [r.hr for r in done]),
            ("MRR@20", "", [r.mrr for r in done]),
        ):
            spread = f"min {min(values):.4g}, max {max(values):.4g}"
            rows.append(
                BenchRow(
                    "distributed",
                    f"stream, {name}: {measure}",
                    float(np.mean(values)),
                    unit,
                    note=f"{note}; {spread}",
                )
            )
    return rows


def split_step(world: int, batch_size: int, replay_batch: int | None) -> tuple[int, dict[str, Any]]:
    """Per rank: the batch size and ModelConfig overrides that make ``world`` ranks take the
    step one rank takes (the same examples and replayed examples a step, shared out)."""
    overrides = {} if replay_batch is None else {"replay_batch": max(1, replay_batch // world)}
    return max(1, batch_size // world), overrides


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--batch-sizes", default="256,1024,4096")
    parser.add_argument("--union-rows", default="256,1024,4096,16384,65536")
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--out", type=Path, help="write the rows here as JSON")
    options = parser.parse_args(argv)
    rows = bench_distributed(
        events=options.events,
        seeds=[int(s) for s in options.seeds.split(",")],
        batch_sizes=[int(s) for s in options.batch_sizes.split(",")],
        union_rows=[int(s) for s in options.union_rows.split(",")],
        world=options.world,
        sections=options.sections.split(","),
    )
    for row in rows:
        print(f"{row.measure}: {row.value:,.4g} {row.unit} {row.note}")
    if options.out:
        options.out.write_text(json.dumps([row.__dict__ for row in rows], indent=1))


if __name__ == "__main__":
    main()
