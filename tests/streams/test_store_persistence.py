"""Vectors that outlive the process that wrote them: an embedded store closed (or killed) and
reopened at the same path has its points, qdrant-edge reopens its HNSW graphs rather than
building them again, and ``onevec similar`` / ``onevec recommend`` read what a stopped worker
stored, with no worker running. Item data is synthetic except in the worker test (a MovieLens
replay)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from qdrant_client.http import models

from onevec.models.datasets import load_events
from onevec.streams.qdrant import QdrantStore, build_item_points
from onevec.streams.qdrant.edge import EdgeProcess
from onevec.streams.settings import Settings
from tests.reliability.reconcile import produce, wait_metric
from tests.streams.test_store_congruence import DIM, synthetic_items

ONEVEC = Path(sys.executable).parent / "onevec"


async def write_and_read(store: QdrantStore, n: int) -> dict[str, Any]:
    await store.ensure_collections()
    await store.upsert_points("items", build_item_points(synthetic_items(n, seed=7), DIM).all_or_error())
    await store.delete_items(["syn-3"])
    return await read(store)


async def read(store: QdrantStore) -> dict[str, Any]:
    await store.ensure_collections()  # a restarted worker's first call: finds, does not recreate
    item = await store.get_item("syn-8")
    return {
        "count": await store.count(),
        "similar": [(h.item_id, round(h.score, 5)) for h in await store.similar("syn-8", k=10)],
        "item": None if item is None else (item.payload, item.vectors),
        "deleted": await store.get_item("syn-3"),
    }


@pytest.mark.parametrize("engine", ["edge", "local"])
def test_points_survive_close_and_reopen(tmp_path: Path, engine: str) -> None:
    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        async with QdrantStore(dim=DIM, path=tmp_path, engine=engine) as store:  # type: ignore[arg-type]
            written = await write_and_read(store, 200)
        async with QdrantStore(dim=DIM, path=tmp_path, engine=engine) as store:  # type: ignore[arg-type]
            return written, await read(store)

    written, reopened = asyncio.run(scenario())
    assert written["count"] == 199 and written["deleted"] is None and len(written["similar"]) == 10
    assert reopened == written


def test_edge_keeps_acknowledged_writes_when_its_process_is_killed(tmp_path: Path) -> None:
    """SIGKILL of the engine's process: no flush, no close. A call in flight fails as a
    connection error (the upsert buffer retries those); the next call starts the engine again,
    which finds every acknowledged write in its write-ahead log."""
    engine = EdgeProcess(tmp_path)

    async def scenario() -> tuple[dict[str, Any], dict[str, Any]]:
        async with QdrantStore.from_client(engine, dim=DIM) as store:
            written = await write_and_read(store, 300)
            killed = engine.pid
            # Stopped first, so the call is surely in flight (sent, waiting for its answer) when
            # the kill lands; a child killed between calls is restarted by the next one unseen.
            os.kill(killed, signal.SIGSTOP)
            in_flight = asyncio.ensure_future(store.count())
            await asyncio.sleep(0.5)
            assert not in_flight.done()
            os.kill(killed, signal.SIGKILL)
            with pytest.raises(ConnectionError):
                await in_flight
            after = await read(store)
            assert engine.pid != killed
            return written, after

    written, after = asyncio.run(scenario())
    assert after == written and written["count"] == 299

    async def reopen() -> dict[str, Any]:
        async with QdrantStore(dim=DIM, path=tmp_path, engine="edge") as store:
            return await read(store)

    assert asyncio.run(reopen()) == written


def test_edge_sends_again_an_upsert_its_killed_process_never_applied(tmp_path: Path) -> None:
    """An upsert returns once it is sent (the child applies it while the caller builds the
    next one). Sent to a stopped child that is then killed, it was never applied: the next call
    starts the engine again and sends it first, so a count after it sees every point."""
    engine = EdgeProcess(tmp_path)

    async def scenario() -> tuple[int, int, int]:
        async with QdrantStore.from_client(engine, dim=DIM) as store:
            await store.ensure_collections()
            points = build_item_points(synthetic_items(130, seed=3), DIM).all_or_error()
            await store.upsert_points("items", points[:100])
            assert await store.count() == 100
            killed = engine.pid
            os.kill(killed, signal.SIGSTOP)
            # One batch (the same named vectors) of a few points, so it fits the socket's
            # buffer: the call returns once it is sent, and it is never answered.
            unsent = [p for p in points[100:] if p.vector.keys() == points[100].vector.keys()]
            assert len(unsent) >= 5
            await store.upsert_points("items", unsent)
            os.kill(killed, signal.SIGKILL)
            for _ in range(3):  # the first call may find the socket closed before the exit
                try:
                    return await store.count(), len(unsent), killed
                except ConnectionError:
                    await asyncio.sleep(0.2)
            raise AssertionError("the engine did not start again")

    count, unsent, killed = asyncio.run(scenario())
    assert count == 100 + unsent
    assert engine.pid != killed


def test_an_upsert_the_engine_refuses_fails_the_next_call(tmp_path: Path) -> None:
    """The upsert that returned before its answer was read and then failed in the engine fails
    the next call (and is logged), so the caller learns of it: nothing fails silently."""
    engine = EdgeProcess(tmp_path)
    try:
        engine.create_collection(
            "items", {"unified": models.VectorParams(size=DIM, distance=models.Distance.COSINE)}
        )
        batch = models.Batch(ids=[1, 2], vectors={"unified": [[0.5] * DIM, [0.25] * DIM]})
        engine.upsert("no-such-collection", batch)  # returns: its answer is not read yet
        with pytest.raises(RuntimeError, match="earlier upsert failed"):
            engine.count("items")
        engine.upsert("items", batch)
        assert engine.count("items").count == 2  # in step again
    finally:
        engine.close()


def test_edge_reopens_its_index_instead_of_building_it(tmp_path: Path) -> None:
    async def index() -> int:
        engine = EdgeProcess(tmp_path, index_from_kb=16)
        async with QdrantStore.from_client(engine, dim=DIM) as store:
            await write_and_read(store, 2000)
            assert await asyncio.to_thread(engine.optimize)
            return await asyncio.to_thread(engine.indexed_vectors, "items")

    async def reopen() -> tuple[int, int]:
        engine = EdgeProcess(tmp_path, index_from_kb=16)
        async with QdrantStore.from_client(engine, dim=DIM) as store:
            await store.ensure_collections()
            indexed = await asyncio.to_thread(engine.indexed_vectors, "items")
            return indexed, await store.count()

    built = asyncio.run(index())
    assert built >= 2 * 1999  # unified and behaviour graphs
    assert asyncio.run(reopen()) == (built, 1999)


def cli_rows(args: list[str], settings: Settings) -> list[tuple[str, float]]:
    """(item id, score) rows of an ``onevec`` table, the command run as by a user with the
    worker's settings and no worker address."""
    env = {**os.environ, **settings.to_env(), "COLUMNS": "200"}
    env.pop("ONEVEC_WORKER_URL", None)
    done = subprocess.run([ONEVEC, *args], capture_output=True, text=True, timeout=180, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    cells = [[cell.strip() for cell in line.split("│")[1:3]] for line in done.stdout.splitlines()]
    return [
        (item, float(score)) for item, score in (c for c in cells if len(c) == 2) if item and item != "item"
    ]


def test_commands_read_what_a_stopped_worker_stored(settings: Settings, start_worker) -> None:
    """After the worker stops: ``onevec similar`` answers what its stored collection answers,
    ``onevec recommend --items`` ranks stored items by its last checkpoint's session vector."""
    events = load_events("movielens-100k").iloc[:4000]
    worker = start_worker(catalog="movielens-100k")
    produce(settings, events.drop(columns="session_id"))
    wait_metric(worker, "onevec_examples_learned_total", len(events))
    worker.stop()
    popular = str(events["item_id"].value_counts().index[0])
    basket = [str(i) for i in events["item_id"].value_counts().index[1:4]]

    async def stored() -> tuple[list[tuple[str, float]], set[str]]:
        async with QdrantStore.from_settings(settings) as store:
            similar = [(h.item_id, round(h.score, 3)) for h in await store.similar(popular, k=10)]
            return similar, {
                item.item_id for item in await store.get_items(list(events["item_id"].astype(str)))
            }

    similar, items = asyncio.run(stored())
    assert len(similar) == 10
    assert cli_rows(["similar", popular], settings) == similar  # the table shows 3 decimals
    offline = cli_rows(["recommend", "--items", ",".join(basket), "--k", "10"], settings)
    ranked = [item for item, _ in offline]
    assert len(ranked) == 10 and set(ranked) <= items and not set(ranked) & set(basket)
    assert [score for _, score in offline] == sorted((score for _, score in offline), reverse=True)
    # No stored vectors to read: one line, exit status 2.
    refused = subprocess.run(
        [ONEVEC, "similar", popular],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **settings.model_copy(update={"qdrant_path": None}).to_env()},
    )
    assert refused.returncode == 2 and "ONEVEC_QDRANT_PATH" in refused.stderr, refused.stderr
