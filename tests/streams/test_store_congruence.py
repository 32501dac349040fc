"""Congruence of the store's engines: the same operations on the same synthetic data give the
same answers on qdrant-edge (the embedded engine), on qdrant-client's local mode and, when
ONEVEC_TEST_QDRANT_URL names one, on a Qdrant server.

Local mode is exact (brute force), so it is the reference. Small collections are scanned
exactly by every engine, so their answers must be equal: the same ids in the same order, the
same scores, payloads and vectors. A collection large enough for qdrant-edge to build HNSW
graphs is compared by recall@10 against local mode.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from onevec.models.online.user_history import Had, Recalled
from onevec.streams.qdrant import (
    ItemRecord,
    QdrantStore,
    SessionRecord,
    UserRecord,
    build_item_points,
    build_session_points,
    build_user_points,
)
from onevec.streams.qdrant.edge import EdgeProcess

DIM = 16
GENRES = ("Comedy", "Drama", "Horror")
SERVER_URL = os.environ.get("ONEVEC_TEST_QDRANT_URL", "")

Scenario = Callable[[QdrantStore], Awaitable[dict[str, Any]]]


def unit(rng: np.random.Generator, dim: int = DIM) -> np.ndarray:
    v = rng.standard_normal(dim)
    return v / np.linalg.norm(v)


def synthetic_items(n: int, seed: int, dim: int = DIM) -> list[ItemRecord]:
    """Synthetic items: random unit vectors (no ties), a genre and a release year each; every
    fifth item has no text vector."""
    rng = np.random.default_rng(seed)
    return [
        ItemRecord(
            item_id=f"syn-{k}",
            vectors={
                "unified": unit(rng, dim),
                "behaviour": unit(rng, dim),
                **({} if k % 5 == 0 else {"text": unit(rng, dim)}),
            },
            attributes={"genre": GENRES[k % 3], "year": 1990 + k % 7},
            model_version=1,
            updated_at=1_700_000_000.0 + k,
            event_count=k,
        )
        for k in range(n)
    ]


def store_for(engine: str, folder: Path) -> QdrantStore:
    if engine == "server":
        return QdrantStore(dim=DIM, url=SERVER_URL, collection_prefix=f"congruence-{uuid.uuid4().hex[:8]}-")
    return QdrantStore(dim=DIM, path=folder, engine="edge" if engine == "edge" else "local")


def outcome(engine: str, folder: Path, scenario: Scenario) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        async with store_for(engine, folder) as store:
            await store.ensure_collections()
            return await scenario(store)

    return asyncio.run(run())


def hits(found: list[Any]) -> list[tuple[str, float]]:
    return [(hit.item_id, round(hit.score, 4)) for hit in found]


async def small_catalogue(store: QdrantStore) -> dict[str, Any]:
    """Every store operation once, on 90 synthetic items, 3 sessions and 2 users."""
    items = synthetic_items(90, seed=1)
    rng = np.random.default_rng(2)
    seen: dict[str, Any] = {}
    await store.upsert_points("items", build_item_points(items, DIM).all_or_error())
    sessions = [SessionRecord(f"s{k}", unit(rng), "u1", 5.0, ["syn-1", "syn-2"]) for k in range(3)]
    await store.upsert_points("sessions", build_session_points(sessions, DIM).all_or_error())
    history = Recalled.of({"syn-3": Had(1.5, 0), "syn-4": Had(0.5, 2)})
    users = [UserRecord(f"u{k}", unit(rng), "s0", 6.0, history) for k in range(2)]
    await store.upsert_points("users", build_user_points(users, DIM).all_or_error())
    seen["counts"] = [await store.count(kind) for kind in ("items", "sessions", "users")]
    seen["similar"] = hits(await store.similar("syn-7", k=10))
    seen["similar_text"] = hits(await store.similar("syn-7", k=10, using="text"))
    seen["similar_no_text"] = hits(await store.similar("syn-5", k=10, using="text"))
    seen["similar_genre"] = hits(await store.similar("syn-7", k=10, filter={"genre": "Drama"}))
    seen["similar_year"] = hits(await store.similar("syn-7", k=10, filter={"year": "1993"}))
    seen["similar_both"] = hits(await store.similar("syn-7", k=5, filter={"genre": "Comedy", "year": "1993"}))
    query = unit(rng).tolist()
    seen["recommend"] = hits(await store.rank_items(query, 15))
    item = await store.get_item("syn-8")
    assert item is not None
    seen["item"] = (item.payload, {name: np.round(v, 5).tolist() for name, v in item.vectors.items()})
    seen["items"] = sorted(i.item_id for i in await store.get_items(["syn-1", "syn-2", "absent"]))
    session, user = await store.get_session("s1"), await store.get_user("u0")
    assert session is not None and user is not None
    seen["session"] = (session.user_id, session.items, np.round(session.vector, 5).tolist())
    seen["user"] = (user.session_id, user.history, np.round(user.vector, 5).tolist())
    # Deletes: gone from counts, lookups and every ranking; absent ids are no error.
    top = [item_id for item_id, _ in seen["similar"][:3]]
    await store.delete_items([*top, "never-there"])
    seen["count_after_delete"] = await store.count()
    seen["similar_after_delete"] = hits(await store.similar("syn-7", k=10))
    seen["recommend_after_delete"] = hits(await store.rank_items(query, 15))
    seen["deleted_found"] = [await store.get_item(i) for i in top]
    # An upsert replaces the point whole: the text vector it no longer sends is gone.
    replaced = synthetic_items(12, seed=3)[11]
    await store.upsert_points(
        "items",
        build_item_points(
            [ItemRecord("syn-11", {"unified": replaced.vectors["unified"]})], DIM
        ).all_or_error(),
    )
    again = await store.get_item("syn-11")
    assert again is not None
    seen["replaced"] = sorted(again.vectors)
    seen["similar_after_replace"] = hits(await store.similar("syn-11", k=10))
    return seen


ENGINES = [
    "edge",
    pytest.param(
        "server",
        marks=pytest.mark.skipif(
            not SERVER_URL,
            reason="no Qdrant server: set ONEVEC_TEST_QDRANT_URL (none can run on this machine)",
        ),
    ),
]


@pytest.mark.parametrize("engine", ENGINES)
def test_small_catalogue_answers_equal_local_mode(tmp_path: Path, engine: str) -> None:
    expected = outcome("local", tmp_path / "local", small_catalogue)
    found = outcome(engine, tmp_path / engine, small_catalogue)
    assert found.keys() == expected.keys()
    for key in expected:
        assert found[key] == expected[key], key
    # The scenario is not vacuous: filters narrowed, deletes removed, the no-text item had none.
    assert expected["counts"] == [90, 3, 2] and expected["count_after_delete"] == 87
    assert expected["similar_no_text"] == [] and expected["deleted_found"] == [None] * 3
    assert len(expected["similar_both"]) == 5 and expected["replaced"] == ["unified"]


def recall_at_10(found: list[list[str]], exact: list[list[str]]) -> float:
    return float(np.mean([len(set(f) & set(e)) / len(e) for f, e in zip(found, exact, strict=True)]))


QUERIES = [f"syn-{k}" for k in range(0, 2000, 40)]  # none of them deleted below


async def lookups(store: QdrantStore) -> dict[str, list[list[str]]]:
    similar = [await store.similar(item, k=10) for item in QUERIES]
    filtered = [await store.similar(item, k=10, filter={"genre": "Horror"}) for item in QUERIES]
    return {
        "similar": [[h.item_id for h in found] for found in similar],
        "filtered": [[h.item_id for h in found] for found in filtered],
    }


def test_indexed_edge_recall_against_local_mode(tmp_path: Path) -> None:
    """2,000 synthetic items, indexed by qdrant-edge and searched through its HNSW graphs (a
    threshold low enough for this size), then more writes and deletes after the index:
    recall@10 of ``similar`` with its exclusion, with and without a payload filter, against
    local mode's exact answers."""
    items = synthetic_items(2000, seed=4, dim=DIM)
    late = synthetic_items(2200, seed=5, dim=DIM)[2000:]  # written after the index is built
    gone = [f"syn-{k}" for k in range(1, 2000, 10)]

    async def fill(store: QdrantStore, after_index: Callable[[], Awaitable[None]]) -> dict[str, Any]:
        await store.upsert_points("items", build_item_points(items, DIM).all_or_error())
        await after_index()
        await store.upsert_points("items", build_item_points(late, DIM).all_or_error())
        await store.delete_items(gone)
        return {"count": await store.count(), **await lookups(store)}

    async def nothing() -> None:
        return None

    async def reference() -> dict[str, Any]:
        # Local mode in memory: the same brute force as on disk, without SQLite's 30 s for these writes.
        async with QdrantStore(dim=DIM) as store:
            await store.ensure_collections()
            return await fill(store, nothing)

    engine = EdgeProcess(tmp_path / "edge", index_from_kb=16)
    indexed: list[int] = []

    async def build_index() -> None:
        await asyncio.to_thread(engine.optimize)
        indexed.append(await asyncio.to_thread(engine.indexed_vectors, "items"))

    async def edge_run() -> dict[str, Any]:
        async with QdrantStore.from_client(engine, dim=DIM) as store:
            await store.ensure_collections()
            return await fill(store, build_index)

    exact, found = asyncio.run(reference()), asyncio.run(edge_run())
    assert indexed and indexed[0] >= 2 * 2000  # unified and behaviour graphs over the 2,000 items
    assert found["count"] == exact["count"] == 2200 - len(gone)
    for key in ("similar", "filtered"):
        assert all(len(f) == 10 for f in found[key])
        assert recall_at_10(found[key], exact[key]) >= 0.95, key
    assert not any(set(f) & set(gone) for f in found["similar"] + found["filtered"])
    horror = {item.item_id for item in items + late if item.attributes["genre"] == "Horror"}
    assert all(set(f) <= horror for f in found["filtered"])
