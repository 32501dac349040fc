"""Section **sink**: points/s of ``UpsertBuffer`` over ``QdrantStore`` against the same points
written raw in the same batches: ``QdrantClient.upsert`` in each local-mode backend
(``:memory:`` and ``path=`` on disk), and for the embedded engine (qdrant-edge in its child
process, the default with a data folder) ``EdgeShard.update`` in this process on a shard with
the keyword index the store keeps on the item attribute (issue 20's goal: 0.8 of it)."""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import qdrant_edge as edge
from qdrant_client import QdrantClient, models

from onevec.models.fusion import normalise
from onevec.streams.qdrant import (
    ITEM_VECTORS,
    VECTOR_DISTANCES,
    ItemRecord,
    QdrantStore,
    UpsertBuffer,
    build_item_points,
    item_payload,
    point_id,
)
from onevec.streams.qdrant.edge import EDGE_DISTANCES
from onevec.streams.qdrant.store import Engine
from onevec.streams.tools.bench.context import BenchContext
from onevec.streams.tools.bench.report import BenchRow

__all__ = ["bench_sink", "raw_edge_shard"]

EDGE_RUNS = 3


def bench_sink(ctx: BenchContext) -> None:
    dim = ctx.settings.model_dim
    batch = ctx.settings.upsert_batch_points
    backends: list[tuple[str, int, Engine, bool]] = [
        ("local :memory:", ctx.sizes.sink_points, "local", False),
        ("local path (disk)", ctx.sizes.sink_disk_points, "local", True),
        ("qdrant-edge (child process, disk)", ctx.sizes.sink_points, "edge", True),
    ]
    for label, count, engine, on_disk in backends:
        records = _sink_records(count, dim)
        with tempfile.TemporaryDirectory() as tmp:
            if engine == "edge":
                # A second or two each on a shared machine: the median of three alternated runs.
                raws, ours_runs = [], []
                for run in range(EDGE_RUNS):
                    raws.append(_raw_edge_seconds(records, dim, Path(tmp) / f"raw{run}", batch))
                    folder = Path(tmp) / f"onevec{run}"
                    ours_runs.append(asyncio.run(_onevec_seconds(records, dim, folder, batch, engine)))
                raw, ours = statistics.median(raws), statistics.median(ours_runs)
                ceiling = (
                    f"raw EdgeShard.update in one process, with the store's keyword index; "
                    f"medians of {EDGE_RUNS} alternated runs"
                )
            else:
                raw = _raw_seconds(records, dim, Path(tmp) / "raw" if on_disk else None, batch)
                ceiling = "raw client.upsert"
                ours = asyncio.run(
                    _onevec_seconds(records, dim, Path(tmp) / "onevec" if on_disk else None, batch, engine)
                )
        ctx.add(
            BenchRow(
                "sink",
                f"UpsertBuffer, {label}",
                count / ours,
                "pt/s",
                count / raw,
                goal=">= 0.8" if engine == "edge" else "",
                note=f"{count:,} synthetic points x {dim}, batches of {batch}; ceiling: {ceiling}",
            )
        )


def _sink_records(count: int, dim: int) -> list[ItemRecord]:
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    units = normalise(vectors)
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


async def _onevec_seconds(
    records: list[ItemRecord], dim: int, path: Path | None, batch: int, engine: Engine
) -> float:
    """Local mode: records added one by one (``UpsertBuffer.add`` validates each alone). The
    engine: as a learner round writes, points built a batch at a time and added together."""
    store = QdrantStore(dim=dim, path=path, engine=engine)
    await store.ensure_collections()
    buffer = UpsertBuffer(store, max_batch=batch, max_delay_ms=500.0)
    started = time.perf_counter()
    if engine == "edge":
        for start in range(0, len(records), batch):
            await buffer.add_points(build_item_points(records[start : start + batch], dim).points, now=True)
    else:
        for record in records:
            await buffer.add(record)
    await buffer.flush()
    seconds = time.perf_counter() - started
    await buffer.close()
    await store.close()
    return seconds


def _raw_seconds(records: list[ItemRecord], dim: int, path: Path | None, batch: int) -> float:
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
                payload=item_payload(r),
            )
            for r in records[start : start + batch]
        ]
        client.upsert("items", points=points, wait=True)
    seconds = time.perf_counter() - started
    client.close()
    return seconds


def _raw_edge_seconds(records: list[ItemRecord], dim: int, path: Path, batch: int) -> float:
    """The engine alone, from the same records as the raw client rows above (the payload and
    the point id built per point, as there), into a shard with the store's keyword index
    (``attributes.category``) made before the first write."""
    distances = {name: EDGE_DISTANCES[VECTOR_DISTANCES[name]] for name in ITEM_VECTORS}
    shard = raw_edge_shard(path, distances, dim, "attributes.category")
    started = time.perf_counter()
    for start in range(0, len(records), batch):
        points = [
            edge.Point(
                point_id("item", r.item_id),
                {name: np.asarray(v, dtype=np.float32).tolist() for name, v in r.vectors.items()},
                item_payload(r),
            )
            for r in records[start : start + batch]
        ]
        shard.update(edge.UpdateOperation.upsert_points(points))
    seconds = time.perf_counter() - started
    shard.close()
    return seconds


def raw_edge_shard(
    path: Path, distances: Mapping[str, edge.Distance], dim: int, keyword: str | None
) -> edge.EdgeShard:
    """A bare qdrant-edge shard for the engine's raw rate: one vector per name, and the keyword
    index the store keeps on an item attribute (``keyword``), made before the first write as the
    store makes it."""
    config = edge.EdgeConfig(
        vectors={
            name: edge.EdgeVectorParams(size=dim, distance=distance) for name, distance in distances.items()
        }
    )
    shard = edge.EdgeShard.create(str(path), config)
    if keyword is not None:
        shard.update(edge.UpdateOperation.create_field_index(keyword, edge.PayloadSchemaType.Keyword))
    return shard
