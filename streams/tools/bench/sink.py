"""Section **sink**: points/s of ``UpsertBuffer`` over ``QdrantStore`` against raw
``QdrantClient.upsert`` calls of the same points in the same batches, in each local-mode
backend (``:memory:`` and ``path=`` on disk)."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import numpy as np
from qdrant_client import QdrantClient, models

from onevec.models.fusion import normalise
from onevec.streams.qdrant import (
    ITEM_VECTORS,
    VECTOR_DISTANCES,
    ItemRecord,
    QdrantStore,
    UpsertBuffer,
    point_id,
)
from onevec.streams.tools.bench.context import BenchContext
from onevec.streams.tools.bench.report import BenchRow

__all__ = ["bench_sink"]


def bench_sink(ctx: BenchContext) -> None:
    dim = ctx.settings.model_dim
    batch = ctx.settings.upsert_batch_points
    for label, count, on_disk in (
        ("local :memory:", ctx.sizes.sink_points, False),
        ("local path (disk)", ctx.sizes.sink_disk_points, True),
    ):
        records = _sink_records(count, dim)
        with tempfile.TemporaryDirectory() as tmp:
            raw = _raw_seconds(records, dim, Path(tmp) / "raw" if on_disk else None, batch)
            ours = asyncio.run(
                _onevec_seconds(records, dim, Path(tmp) / "onevec" if on_disk else None, batch)
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


async def _onevec_seconds(records: list[ItemRecord], dim: int, path: Path | None, batch: int) -> float:
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
