"""Section **users**: per-user lookups at scale, on *synthetic* users and items.

What it answers: how a user's history reaches Qdrant and what that costs. Each user is one
point of the ``users`` collection (a vector and the history as parallel payload lists); a lookup
reads that point, asks Qdrant for the catalogue's top k by the ``behaviour`` inner product
(over-fetched by the user's items, which are dropped) and reads the user's items by id
(:mod:`onevec.streams.learner.recommend`). Rows per
catalogue size: RSS per user with and without the history payload, user upserts per second, and
lookup latency (p50 / p95) per mode next to an unfiltered top-k of the same vector (the ceiling)
and next to reading the user point alone, and the alternative that sends the history to Qdrant
as point-id filters (``has_id`` for what the user had, ``must_not has_id`` for the rest) instead
of over-fetching the catalogue and reading the user's items by id.

Every size runs in a child process (``python -m onevec.streams.tools.bench.users --child ...``),
so one size's memory does not count in another's. Qdrant is the embedded default (local mode in
memory, brute force); a Qdrant server indexes payloads and vectors instead.

Not yet one of ``onevec bench``'s sections: run ``python -m onevec.streams.tools.bench.users``
(``--help`` for the sizes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from qdrant_client import QdrantClient, models

from onevec.models.online.repeat_gate import RepeatGate
from onevec.models.online.user_history import Recalled
from onevec.streams.learner.recommend import MODES, Recommender
from onevec.streams.qdrant import (
    ItemRecord,
    QdrantStore,
    StoredUser,
    UserRecord,
    build_item_points,
    build_user_points,
    point_id,
)
from onevec.streams.settings import load_settings
from onevec.streams.tools.bench.context import BenchContext, BenchSizes
from onevec.streams.tools.bench.memory import _rss_mb
from onevec.streams.tools.bench.report import BenchRow, render_table, write_reports

__all__ = ["UsersResult", "bench_users", "users_child"]

BATCH = 1024  # points per upsert
K = 20  # results per lookup
HAS_ID = "again as a has_id filter"  # the alternatives: the history sent as point-id filters
MUST_NOT = "discover as a must_not filter"


@dataclass(frozen=True)
class UsersResult:
    """What one child measured."""

    items: int
    users: int
    history: int  # mean items per user (0: users without a history payload)
    rss_items_mb: float  # RSS growth for the items
    rss_users_mb: float  # RSS growth for the users
    upsert_per_s: float  # user points written per second
    latency_ms: dict[str, list[float]]  # per lookup kind, every lookup


def bench_users(ctx: BenchContext, users: int, items: Sequence[int], history: int, lookups: int) -> None:
    """Rows for each catalogue size: memory and writes of ``users`` users with and without a
    history of ``history`` items on average, and ``lookups`` lookups per kind."""
    for count in items:
        bare = _child(count, users, 0, 0)
        full = _child(count, users, history, lookups)
        label = f"{count:,} items, {users:,} users"
        note = f"synthetic; history {history} items per user on average (at most 100)"
        per_user = full.rss_users_mb * 2**20 / users
        ctx.add(BenchRow("users", f"{label}: RSS per user", per_user, "B", note=note))
        bare_note = "synthetic; the same users without the history payload (vector only)"
        ctx.add(
            BenchRow(
                "users",
                f"{label}: RSS per user, no history",
                bare.rss_users_mb * 2**20 / users,
                "B",
                note=bare_note,
            )
        )
        ctx.add(
            BenchRow(
                "users",
                f"{label}: user upserts",
                full.upsert_per_s,
                "pt/s",
                bare.upsert_per_s,
                note="ceiling: the same users without history",
            )
        )
        p50s = {kind: float(np.percentile(times, 50)) for kind, times in full.latency_ms.items()}
        for kind, times in full.latency_ms.items():
            p50, p95 = p50s[kind], float(np.percentile(times, 95))
            ceiling = p50s["unfiltered"] if kind in (*MODES, HAS_ID, MUST_NOT) else None
            ctx.add(
                BenchRow(
                    "users",
                    f"{label}: {kind} p50",
                    p50,
                    "ms",
                    ceiling,
                    note=f"p95 {p95:.2f} ms; {lookups} lookups of k={K}",
                )
            )


def _child(items: int, users: int, history: int, lookups: int, timeout: float = 3600.0) -> UsersResult:
    command = [sys.executable, "-m", "onevec.streams.tools.bench.users", "--child"]
    command += [
        "--items",
        str(items),
        "--users",
        str(users),
        "--history",
        str(history),
        "--lookups",
        str(lookups),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=True)
    return UsersResult(**json.loads(done.stdout.strip().splitlines()[-1]))


def users_child(items: int, users: int, history: int, lookups: int, dim: int, seed: int = 0) -> UsersResult:
    """Build the collections in this process and measure them (see the module doc)."""
    return asyncio.run(_measure(items, users, history, lookups, dim, np.random.default_rng(seed)))


async def _measure(
    items: int, users: int, history: int, lookups: int, dim: int, rng: np.random.Generator
) -> UsersResult:
    async with QdrantStore(dim=dim) as store:
        await store.ensure_collections()
        base = _rss_mb()
        item_ids = [f"i{n}" for n in range(items)]
        vectors = (0.3 * rng.standard_normal((items, dim))).astype(np.float32)
        for start in range(0, items, BATCH):
            item_records = [
                ItemRecord(i, {"behaviour": v})
                for i, v in zip(item_ids[start : start + BATCH], vectors[start : start + BATCH], strict=True)
            ]
            await store.upsert_points("items", build_item_points(item_records, dim).all_or_error())
        with_items = _rss_mb()
        seconds = 0.0
        for start in range(0, users, BATCH):
            user_records = [
                _user(f"u{n}", item_ids, history, dim, rng) for n in range(start, min(users, start + BATCH))
            ]
            points = build_user_points(user_records, dim).all_or_error()
            started = time.perf_counter()
            await store.upsert_points("users", points)
            seconds += time.perf_counter() - started
        with_users = _rss_mb()
        latency = {}
        if lookups:
            chosen = [f"u{n}" for n in rng.integers(0, users, lookups).tolist()]
            stored = [user for user in [await store.get_user(u) for u in chosen] if user is not None]
            latency = await _latencies(store, stored) | _filter_latencies(item_ids, vectors, stored)
    return UsersResult(
        items, users, history, with_items - base, with_users - with_items, users / seconds, latency
    )


def _user(user_id: str, item_ids: list[str], history: int, dim: int, rng: np.random.Generator) -> UserRecord:
    """A synthetic user: a random vector and ``history`` items on average, popular ones
    (Zipf-like) more often."""
    vector = (0.3 * rng.standard_normal(dim)).astype(np.float32)
    if not history:
        return UserRecord(user_id, vector, f"{user_id}@0", 0.0)
    size = min(100, int(rng.integers(1, 2 * history)))
    picked = np.unique(np.minimum(rng.zipf(1.2, 3 * size), len(item_ids)) - 1)[:size]
    had = Recalled(
        [item_ids[i] for i in picked.tolist()],
        rng.gamma(1.0, 1.5, len(picked)),
        rng.integers(0, 20, len(picked)),
    )
    return UserRecord(user_id, vector, f"{user_id}@0", 0.0, had)


async def _latencies(store: QdrantStore, users: list[StoredUser]) -> dict[str, list[float]]:
    """Milliseconds per lookup of each kind, through the store and the recommender."""
    gate = RepeatGate()
    gate.weights = np.array([1.0, 0.5, 0.5])  # some weight on the history, as a fitted gate has
    recommender = Recommender(store, lambda: gate, decay=0.7)
    times: dict[str, list[float]] = {kind: [] for kind in ("read user point", "unfiltered", *MODES)}
    for user in users:
        steps = [
            ("read user point", store.get_user(user.user_id)),
            ("unfiltered", store.rank_items(user.vector, K)),
            *((mode, recommender.for_user(user.user_id, K, mode)) for mode in MODES),
        ]
        for kind, call in steps:
            started = time.perf_counter()
            await call
            times[kind].append(1000 * (time.perf_counter() - started))
    return times


def _filter_latencies(
    item_ids: list[str], vectors: np.ndarray, users: list[StoredUser]
) -> dict[str, list[float]]:
    """Milliseconds per query with the history as point-id filters, on a plain local-mode client
    holding the same items."""
    client = QdrantClient(location=":memory:")
    params = models.VectorParams(size=vectors.shape[1], distance=models.Distance.DOT)
    client.create_collection("items", vectors_config={"behaviour": params})
    for start in range(0, len(item_ids), BATCH):
        ids: list[models.ExtendedPointId] = [point_id("item", i) for i in item_ids[start : start + BATCH]]
        client.upsert(
            "items", models.Batch(ids=ids, vectors={"behaviour": vectors[start : start + BATCH].tolist()})
        )
    times: dict[str, list[float]] = {HAS_ID: [], MUST_NOT: []}
    for user in users:
        had: list[models.Condition] = [
            models.HasIdCondition(has_id=[point_id("item", i) for i in user.history])
        ]
        for kind, kept in ((HAS_ID, models.Filter(must=had)), (MUST_NOT, models.Filter(must_not=had))):
            started = time.perf_counter()
            client.query_points("items", query=user.vector, using="behaviour", query_filter=kept, limit=K)
            times[kind].append(1000 * (time.perf_counter() - started))
    client.close()
    return times


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Per-user lookups on synthetic users (see the module doc).")
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", default="1682,10000", help="comma-separated catalogue sizes")
    parser.add_argument("--history", type=int, default=50, help="mean items per user")
    parser.add_argument("--lookups", type=int, default=200, help="lookups per kind")
    parser.add_argument("--output", type=Path, default=Path("reports/bench-users"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    settings = load_settings()
    if args.child:
        result = users_child(int(args.items), args.users, args.history, args.lookups, settings.model_dim)
        print(json.dumps(asdict(result)), flush=True)
        return
    from rich.console import Console

    ctx = BenchContext(settings, BenchSizes(), Console())
    started = time.time()
    bench_users(ctx, args.users, [int(n) for n in args.items.split(",")], args.history, args.lookups)
    title = f"per-user lookups, synthetic ({time.time() - started:.0f} s)"
    ctx.console.print(render_table(ctx.rows, title))
    write_reports(ctx.rows, title, args.output)
    ctx.console.print(f"written: {args.output}.md, {args.output}.json")


if __name__ == "__main__":
    main()
