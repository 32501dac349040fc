"""The embedded store at catalogue scale, on synthetic items (random unit vectors, a genre of ten).

Prints, per size: the store's upsert rate (``QdrantStore.upsert_points`` in the learner's batch
size, into qdrant-edge in its child process) against qdrant-edge's raw rate (``EdgeShard.update``
in this process, the same points and batches); the index build; ``similar`` with its exclusion
and a payload filter (and without the filter), p50 / p99 over the queries, and recall@10 against
exact search (numpy over the same vectors); optionally qdrant-client's local mode in memory.

    python -m onevec.streams.tools.store_bench --items 100000 --queries 300
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import numpy as np
import qdrant_edge as edge

from onevec.streams.qdrant import ItemRecord, PointRow, QdrantStore, build_item_points
from onevec.streams.qdrant.edge import INDEX_FROM_KB, EdgeProcess
from onevec.streams.tools.bench.sink import raw_edge_shard

__all__ = ["main"]

GENRES = [f"g{k}" for k in range(10)]
VECTORS = ("unified", "behaviour")
UPSERT_CHUNK = 64  # batches built before a timed run of upserts


def synthetic_catalogue(
    n: int, dim: int, seed: int, uniform: bool
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Unit vectors per named vector, and each item's genre index. Clustered by default (2,000
    centres plus noise), as learned item vectors are; ``uniform`` vectors are HNSW's worst case
    (no structure: recall@10 0.63 at Qdrant's default search effort, 100k x 64)."""
    rng = np.random.default_rng(seed)
    vectors = {}
    for name in VECTORS:
        v = rng.standard_normal((n, dim)).astype(np.float32)
        if not uniform:
            centres = rng.standard_normal((2000, dim)).astype(np.float32)
            v = centres[rng.integers(0, len(centres), n)] + np.float32(0.5) * v
        vectors[name] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return vectors, rng.integers(0, len(GENRES), n)


def item_points(
    vectors: dict[str, np.ndarray], genres: np.ndarray, dim: int, start: int, stop: int
) -> list[PointRow]:
    """Items ``start`` to ``stop`` as the learner's points (built per batch: a million points
    held as Python lists would take gigabytes)."""
    records = [
        ItemRecord(
            f"syn-{k}",
            {name: vectors[name][k] for name in VECTORS},
            {"genre": GENRES[genres[k]]},
            model_version=1,
            updated_at=1.7e9,
            event_count=1,
        )
        for k in range(start, stop)
    ]
    return build_item_points(records, dim).all_or_error()


def batches(
    vectors: dict[str, np.ndarray], genres: np.ndarray, dim: int, batch: int
) -> Iterator[list[PointRow]]:
    for start in range(0, len(genres), batch):
        yield item_points(vectors, genres, dim, start, min(start + batch, len(genres)))


def raw_rate(
    vectors: dict[str, np.ndarray], genres: np.ndarray, dim: int, batch: int, folder: Path, indexed: bool
) -> float:
    """Points/s of qdrant-edge itself: ``EdgeShard.update`` in this process (with its points'
    construction, the engine's input). ``indexed``: with the keyword index on the attribute
    that the store keeps for its filters."""
    distances = dict.fromkeys(VECTORS, edge.Distance.Dot)
    shard = raw_edge_shard(folder, distances, dim, "attributes.genre" if indexed else None)
    seconds = 0.0
    for points in batches(vectors, genres, dim, batch):
        started = time.perf_counter()
        rows = [
            edge.Point(p.id, {name: values for name, values in p.vector.items()}, p.payload) for p in points
        ]
        shard.update(edge.UpdateOperation.upsert_points(rows))
        seconds += time.perf_counter() - started
    shard.close()
    return len(genres) / seconds


def exact_top10(vectors: np.ndarray, genres: np.ndarray, query: int, genre: int | None) -> set[str]:
    scores = vectors @ vectors[query]
    scores[query] = -np.inf  # similar excludes the item itself
    if genre is not None:
        scores[genres != genre] = -np.inf
    return {f"syn-{k}" for k in np.argpartition(-scores, 10)[:10]}


async def timed_lookups(
    lookup: Callable[[int], Awaitable[list[str]]], queries: np.ndarray, exact: Callable[[int], set[str]]
) -> tuple[float, float, float]:
    """p50 and p99 in ms, recall@10. The exact answers are computed after the timed calls: each
    reads the whole matrix (256 MB at 1M items), and run between two calls it evicted from the
    caches what the next call reads."""
    seconds, answers = [], []
    for q in queries:
        started = time.perf_counter()
        answers.append(await lookup(int(q)))
        seconds.append(time.perf_counter() - started)
    recalls = [len(set(found) & exact(int(q))) / 10 for q, found in zip(queries, answers, strict=True)]
    ms = np.array(seconds) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), float(np.mean(recalls))


async def bench_store(
    store: QdrantStore,
    vectors: dict[str, np.ndarray],
    genres: np.ndarray,
    queries: np.ndarray,
    batch: int,
    build_index: Callable[[], float] | None,
    raw: float | None = None,
) -> None:
    await store.ensure_collections()
    upsert = 0.0
    # Timed a chunk of batches at a time, built beforehand, up to a count that is answered once
    # all are applied: qdrant-edge applies an upsert while the caller sends the next one.
    built = batches(vectors, genres, store.dim, batch)
    while chunk := list(itertools.islice(built, UPSERT_CHUNK)):
        started = time.perf_counter()
        for points in chunk:
            await store.upsert_points("items", points)
        await store.count("items")
        upsert += time.perf_counter() - started
    share = f", {len(genres) / upsert / raw:.2f} of raw with the payload index" if raw else ""
    print(f"  store upsert: {len(genres) / upsert:,.0f} points/s ({upsert:.1f} s{share})")
    if build_index is not None:
        print(f"  index build (optimize): {build_index():.1f} s")
    unified = vectors["unified"]

    async def filtered(q: int) -> list[str]:
        hits = await store.similar(f"syn-{q}", k=10, filter={"genre": GENRES[genres[q]]})
        return [h.item_id for h in hits]

    async def unfiltered(q: int) -> list[str]:
        return [h.item_id for h in await store.similar(f"syn-{q}", k=10)]

    await filtered(int(queries[0]))  # warm-up: the first query loads what it reads

    def exact(q: int, with_genre: bool) -> set[str]:
        return exact_top10(unified, genres, q, int(genres[q]) if with_genre else None)

    for label, lookup, with_genre in (
        ("similar + genre filter", filtered, True),
        ("similar", unfiltered, False),
    ):
        p50, p99, recall = await timed_lookups(
            lookup, queries, functools.partial(exact, with_genre=with_genre)
        )
        print(f"  {label}: p50 {p50:.2f} ms, p99 {p99:.2f} ms, recall@10 {recall:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--batch", type=int, default=256, help="points per upsert (the learner's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--index-from-kb",
        type=int,
        default=INDEX_FROM_KB,
        help="segment size from which HNSW is built and searched (lower: filtered queries use HNSW at 100k)",
    )
    parser.add_argument("--uniform", action="store_true", help="unstructured vectors (HNSW's worst case)")
    parser.add_argument("--local", action="store_true", help="also qdrant-client local mode in memory (slow)")
    parser.add_argument("--local-queries", type=int, default=30)
    args = parser.parse_args()

    vectors, genres = synthetic_catalogue(args.items, args.dim, args.seed, args.uniform)
    queries = np.random.default_rng(args.seed + 1).choice(args.items, args.queries, replace=False)
    shape = "uniform" if args.uniform else "clustered"
    print(f"synthetic catalogue ({shape}): {args.items:,} items x {args.dim} ({', '.join(VECTORS)})")
    folder = Path(tempfile.mkdtemp(prefix="onevec-store-bench-"))
    try:
        raw = raw_rate(vectors, genres, args.dim, args.batch, folder / "raw", indexed=False)
        print(f"qdrant-edge raw (EdgeShard.update): {raw:,.0f} points/s")
        raw = raw_rate(vectors, genres, args.dim, args.batch, folder / "raw-indexed", indexed=True)
        print(f"qdrant-edge raw with the store's payload index: {raw:,.0f} points/s")
        print("qdrant-edge through QdrantStore (child process):")
        engine = EdgeProcess(folder / "store", index_from_kb=args.index_from_kb)

        def build_index() -> float:
            started = time.perf_counter()
            engine.optimize()
            return time.perf_counter() - started

        async def edge_run() -> None:
            async with QdrantStore.from_client(engine, dim=args.dim) as store:
                await bench_store(store, vectors, genres, queries, args.batch, build_index, raw)
                print(f"  indexed vectors: {engine.indexed_vectors('items'):,}")

        asyncio.run(edge_run())
        if args.local:
            print("qdrant-client local mode in memory:")

            async def local_run() -> None:
                async with QdrantStore(dim=args.dim) as store:
                    await bench_store(store, vectors, genres, queries[: args.local_queries], args.batch, None)

            asyncio.run(local_run())
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
