"""Section **learner**: examples/s of the trainer alone, of whole learner rounds (prequential
scoring, training, session vectors, choice of the items to publish, drift, points) in the two
shapes the learner runs, and of the learner with its Qdrant sink, each against a raw torch loop
of the same model (same tables, session network, losses and batch size; tensors prepared up
front, stock torch optimisers, no online bookkeeping).

``learn_round`` and ``mark_catalogue_published`` run the learner's work without its Qdrant
writes (the memory section uses them too)."""

from __future__ import annotations

import asyncio
import functools
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from onevec.models.catalog import attribute_tokens, load_attributes
from onevec.models.clickstream.examples import ExampleRecord
from onevec.models.datasets import load_events
from onevec.models.online.session_encoder import _SessionNet
from onevec.models.online.trainer import OnlineTrainer
from onevec.models.pretrain import session_examples
from onevec.streams.learner.learner import Learner
from onevec.streams.learner.queue import ExamplesBatch
from onevec.streams.qdrant import QdrantStore
from onevec.streams.settings import Settings
from onevec.streams.tools.bench.context import DATASET, WARMUP_BATCHES, BenchContext
from onevec.streams.tools.bench.report import BenchRow

__all__ = ["bench_learner", "learn_round", "mark_catalogue_published"]

Attributes = dict[str, dict[str, Any]]


def learn_round(learner: Learner, examples: list[ExampleRecord]) -> None:
    """One learner round, as the learner thread runs it: training and scoring step by step,
    then sessions, items to publish, drift and points once."""
    learner.learn_round(examples)


def mark_catalogue_published(learner: Learner) -> None:
    """What a starting worker does (``publish_all``) minus the writes: every known item is
    encoded and remembered as published, and the change marks are drained."""
    for _ in learner.publish_catalogue():
        pass


def bench_learner(ctx: BenchContext) -> None:
    settings = ctx.settings
    examples, attributes = _learner_inputs(ctx.sizes.learner_examples)
    batch_size = settings.learner_batch_size
    batches = [examples[i : i + batch_size] for i in range(0, len(examples), batch_size)]

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
            mark_catalogue_published(learners[-1])  # once at start, not per-example work
        single, backlog = learners
        # Interleaved round by round, so a change in the machine's load hits every variant
        # alike. A round under backlog is what the learner forms when records queue up:
        # learner_round_batches micro-batches, stepped one by one.
        seconds = {"raw": 0.0, "trainer": 0.0, "single": 0.0, "backlog": 0.0}
        timed = 0
        for first in [0, *range(WARMUP_BATCHES, len(batches), per_round)]:
            # The first WARMUP_BATCHES batches warm every variant up, untimed.
            end = WARMUP_BATCHES if first == 0 else first + per_round
            group = batches[first:end]
            variants: tuple[tuple[str, list[Callable[[], object]]], ...] = (
                ("raw", list(raw_steps[first:end])),
                ("trainer", [functools.partial(trainer.learn, batch) for batch in group]),
                ("single", [functools.partial(learn_round, single, batch) for batch in group]),
                ("backlog", [functools.partial(learn_round, backlog, [e for batch in group for e in batch])]),
            )
            for name, steps in variants:
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


def _learner_inputs(count: int) -> tuple[list[ExampleRecord], Attributes]:
    events = load_events(DATASET, 1800.0)
    return session_examples(events.head(count)), load_attributes(DATASET)


async def _learner_with_sink(
    settings: Settings, attributes: Attributes, examples: list[ExampleRecord]
) -> float:
    """Seconds for the learner to learn ``examples`` through ``learn_records`` (rounds as under
    backlog) and write their points to an in-memory Qdrant, after an untimed warm-up."""
    store = QdrantStore(dim=settings.model_dim)
    await store.ensure_collections()
    learner = Learner(settings, store, attributes)
    await learner.publish_all()
    await learner.buffer.flush()
    records = [ExamplesBatch("bench:0", offset, [example]) for offset, example in enumerate(examples)]
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
    settings: Settings, batches: list[list[ExampleRecord]], attributes: Attributes
) -> list[Callable[[], None]]:
    """The same model as OnlineTrainer (item + token tables, attention session network,
    logQ-corrected sampled softmax + SGNS), written as a plain torch loop: every id mapped
    and every tensor built up front, fixed-size tables, stock optimisers. One callable per
    batch, each one training step."""
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
    bags: list[list[int]] = [[] for _ in items]
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

    def prepare(chunk: list[ExampleRecord]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
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
