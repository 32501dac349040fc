"""Tests of onevec.streams.qdrant (points, store, buffer) against real qdrant-client local mode
(no server needed).

Faults (failing, blocking, racing calls) are injected into real local-mode clients by
subclassing them; every other call goes through qdrant-client unchanged. The store's tests run
against every client kind the store drives (congruence): local mode on disk and in memory on
the store's thread, and the AsyncQdrantClient code path.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from qdrant_client import AsyncQdrantClient, QdrantClient, models

from onevec.models.online.user_history import Had, Recalled
from onevec.streams.qdrant import (
    ITEM_VECTORS,
    VECTOR_DISTANCES,
    CollectionSchemaError,
    ItemNotFound,
    ItemRecord,
    QdrantStore,
    SessionRecord,
    UpsertBuffer,
    UserRecord,
    build_item_points,
    build_session_points,
    build_user_points,
    point_id,
)

DIM = 8
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def basis(i: int) -> np.ndarray:
    v = np.zeros(DIM)
    v[i] = 1.0
    return v


def item(item_id: str, unified: np.ndarray, **attributes: Any) -> ItemRecord:
    return ItemRecord(
        item_id=item_id,
        vectors={"unified": unit(unified)},
        attributes=attributes,
        model_version=1,
        updated_at=1_700_000_000.0,
        event_count=3,
    )


def random_items(n: int, seed: int = 0, prefix: str = "i") -> list[ItemRecord]:
    rng = np.random.default_rng(seed)
    return [item(f"{prefix}{k}", rng.standard_normal(DIM)) for k in range(n)]


async def wait_until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


class FaultyClient(QdrantClient):
    """Fault injection into a real local-mode client.

    fail_first: the first N upserts raise ConnectionError (a transient server/network fault).
    gate: upserts block until the event is set (a slow server).
    lose_create_race: create_collection creates the collection, then raises as if another
    worker had created it first.
    """

    def __init__(
        self,
        *,
        fail_first: int = 0,
        gate: threading.Event | None = None,
        lose_create_race: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.fail_left = fail_first
        self.gate = gate
        self.lose_create_race = lose_create_race
        self.upsert_calls = 0
        self.upsert_sizes: list[int] = []

    def upsert(self, collection_name: str, points: Any, **kwargs: Any) -> Any:
        self.upsert_calls += 1
        if self.gate is not None:
            assert self.gate.wait(10), "test never opened the gate"
        if self.fail_left > 0:
            self.fail_left -= 1
            raise ConnectionError("injected fault")
        # onevec sends columnar batches (models.Batch), a caller may send a point list.
        self.upsert_sizes.append(len(points.ids) if isinstance(points, models.Batch) else len(points))
        return super().upsert(collection_name, points, **kwargs)

    def create_collection(self, collection_name: str, **kwargs: Any) -> bool:
        created = super().create_collection(collection_name, **kwargs)
        if self.lose_create_race:
            raise RuntimeError(f"Collection {collection_name} already exists")
        return created


class FaultyAsyncClient(AsyncQdrantClient):
    """Fault injection into a real AsyncQdrantClient: the first N upserts raise."""

    def __init__(self, *, fail_first: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fail_left = fail_first
        self.upsert_calls = 0

    async def upsert(self, collection_name: str, points: Any, **kwargs: Any) -> Any:
        self.upsert_calls += 1
        if self.fail_left > 0:
            self.fail_left -= 1
            raise ConnectionError("injected fault")
        return await super().upsert(collection_name, points, **kwargs)


def local_client(tmp_path: Path, **faults: Any) -> FaultyClient:
    # The async store calls it from its worker thread.
    return FaultyClient(path=str(tmp_path / "qdrant"), force_disable_check_same_thread=True, **faults)


# --- backends ---------------------------------------------------------------------------

StoreFactory = Callable[[Path], QdrantStore]

STORES: dict[str, StoreFactory] = {
    # What the embedded default runs: local mode on disk, on the store's thread.
    "local-path": lambda tmp: QdrantStore(path=tmp / "q", dim=DIM),
    # Local mode in memory (no path), on the store's thread.
    "local-memory": lambda tmp: QdrantStore(dim=DIM),
    # The AsyncQdrantClient code path (server mode); its in-memory local mode stands in here.
    "async-client": lambda tmp: QdrantStore.from_client(AsyncQdrantClient(location=":memory:"), dim=DIM),
}


def with_store(tmp_path: Path, backend: str, body: Callable[[QdrantStore], Awaitable[None]]) -> None:
    """Run body against a fresh store of the backend, collections created; closed after."""

    async def scenario() -> None:
        async with STORES[backend](tmp_path) as store:
            await store.ensure_collections()
            await body(store)

    run(scenario())


async def write_items(store: QdrantStore, records: list[ItemRecord]) -> int:
    return await store.upsert_points("items", build_item_points(records, DIM).all_or_error())


async def write_sessions(store: QdrantStore, records: list[SessionRecord]) -> int:
    return await store.upsert_points("sessions", build_session_points(records, DIM).all_or_error())


async def write_users(store: QdrantStore, records: list[UserRecord]) -> int:
    return await store.upsert_points("users", build_user_points(records, DIM).all_or_error())


# --- ids and collections ----------------------------------------------------------------


def test_point_id_is_a_deterministic_uuid5_per_kind() -> None:
    a = point_id("item", "sku-1")
    assert a == point_id("item", "sku-1")
    assert uuid.UUID(a).version == 5
    assert a != point_id("session", "sku-1")
    assert a != point_id("item", "sku-2")


def test_ensure_collections_creates_named_vectors_and_is_idempotent(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with QdrantStore(path=tmp_path / "q", dim=DIM, collection_prefix="t_") as store:
            await store.ensure_collections()
            await store.ensure_collections()  # second call: collections exist and match

    run(scenario())
    reader = QdrantClient(path=str(tmp_path / "q"))  # the store has released the folder
    try:
        items = reader.get_collection("t_items").config.params.vectors
        sessions = reader.get_collection("t_sessions").config.params.vectors
        users = reader.get_collection("t_users").config.params.vectors
    finally:
        reader.close()
    assert isinstance(items, dict) and set(items) == set(ITEM_VECTORS)
    for name, params in items.items():
        assert (params.size, params.distance) == (DIM, VECTOR_DISTANCES[name])
    assert items["unified"].distance == models.Distance.DOT
    assert isinstance(sessions, dict) and list(sessions) == ["session"]
    assert sessions["session"].size == DIM
    # Users query item vectors by inner product, like sessions.
    assert isinstance(users, dict) and list(users) == ["user"]
    assert (users["user"].size, users["user"].distance) == (DIM, models.Distance.DOT)


def test_ensure_collections_rejects_dimension_mismatch(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with QdrantStore(path=tmp_path / "q", dim=DIM) as store:
            await store.ensure_collections()
        async with QdrantStore(path=tmp_path / "q", dim=DIM * 2) as store:
            with pytest.raises(CollectionSchemaError, match=r"'items'.*'unified' has size 8.*16"):
                await store.ensure_collections()

    run(scenario())


def test_ensure_collections_survives_losing_the_create_race(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with QdrantStore.from_client(local_client(tmp_path, lose_create_race=True), dim=DIM) as store:
            await store.ensure_collections()
            assert await store.count("items") == 0

    run(scenario())


# --- writes -----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", STORES)
def test_upserting_the_same_ids_twice_keeps_the_count(tmp_path: Path, backend: str) -> None:
    records = random_items(25)
    sessions = [SessionRecord(f"s{k}", np.ones(DIM), "u1", 1.0, ["i1", "i2"]) for k in range(5)]

    async def body(store: QdrantStore) -> None:
        for _ in range(2):  # a redelivered batch
            assert await write_items(store, records) == 25
            assert await write_sessions(store, sessions) == 5
        assert await store.count("items") == 25
        assert await store.count("sessions") == 5

    with_store(tmp_path, backend, body)


@pytest.mark.parametrize("backend", STORES)
def test_items_store_only_the_sources_they_have(tmp_path: Path, backend: str) -> None:
    rng = np.random.default_rng(1)
    text, image = rng.standard_normal(DIM), rng.standard_normal(DIM)
    new_item = ItemRecord("cold-1", {"text": text, "image": image}, {"brand": "Acme"}, 2, 123.5, 0)

    async def body(store: QdrantStore) -> None:
        await write_items(store, [new_item])
        stored = await store.get_item("cold-1")
        assert stored is not None
        assert set(stored.vectors) == {"text", "image"}
        # Cosine-distance vectors come back normalised, pointing the same way.
        assert np.allclose(stored.vectors["text"], unit(text), atol=1e-5)
        assert stored.payload == {
            "item_id": "cold-1",
            "attributes": {"brand": "Acme"},
            "model_version": 2,
            "updated_at": 123.5,
            "event_count": 0,
        }
        # A record is the whole point: once the writer drops a source, the point loses it.
        await write_items(store, [ItemRecord("cold-1", {"text": text})])
        stored = await store.get_item("cold-1")
        assert stored is not None and set(stored.vectors) == {"text"}
        assert await store.get_item("never-seen") is None

    with_store(tmp_path, backend, body)


@pytest.mark.parametrize(
    ("vectors", "attributes", "message"),
    [
        ({"unified": np.ones(DIM + 1) / np.sqrt(DIM + 1)}, {}, "shape"),
        ({"behaviour": np.full(DIM, np.nan)}, {}, "NaN"),
        ({"colour": np.ones(DIM)}, {}, "unknown vector"),
        ({"unified": np.ones(DIM)}, {}, "L2-normalised"),
        ({}, {}, "no vector"),
        ({"text": np.ones(DIM)}, {"year": np.int64(1995)}, "not plain JSON"),
    ],
)
def test_bad_item_records_are_rejected_before_any_write(
    tmp_path: Path, vectors: dict[str, np.ndarray], attributes: dict[str, Any], message: str
) -> None:
    bad = ItemRecord("bad", vectors, attributes)
    good = random_items(1)[0]
    # Built together, the bad record is rejected alone (the learner publishes the others) ...
    built = build_item_points([good, bad], DIM)
    assert [key for key, _ in built.points] == ["i0"]
    assert [key for key, _ in built.rejected] == ["bad"]
    # ... and nothing of a batch that must be written whole.
    with pytest.raises(ValueError, match=message):
        built.all_or_error()

    async def body(store: QdrantStore) -> None:
        async with UpsertBuffer(store) as buffer:
            with pytest.raises(ValueError, match=message):
                await buffer.add(bad)  # its producer fails, not a batch
        assert await store.count("items") == 0

    with_store(tmp_path, "local-memory", body)


# --- lookups ----------------------------------------------------------------------------


def neighbourhood() -> list[ItemRecord]:
    """Anchor a; c is its nearest neighbour (Drama), b the nearest Comedy; the rest far off."""
    far = [item(f"far{k}", -basis(0) + 0.3 * basis(k % DIM), genre=["Comedy"]) for k in range(8)]
    return [
        item("a", basis(0), genre=["Comedy"], year=1995),
        item("b", basis(0) + 0.2 * basis(1), genre=["Romance", "Comedy"], year=1995),
        item("c", basis(0) + 0.1 * basis(2), genre=["Drama"], year=2001),
        *far,
    ]


@pytest.mark.parametrize("backend", STORES)
def test_similar_finds_the_nearest_neighbour_excludes_self_and_filters(tmp_path: Path, backend: str) -> None:
    async def body(store: QdrantStore) -> None:
        await write_items(store, neighbourhood())

        hits = await store.similar("a", k=3)
        assert [h.item_id for h in hits][:2] == ["c", "b"]
        assert "a" not in {h.item_id for h in await store.similar("a", k=20)}
        assert hits[0].score == pytest.approx(float(unit(basis(0) + 0.1 * basis(2))[0]), abs=1e-5)

        comedy = await store.similar("a", k=3, filter={"genre": "Comedy"})
        assert comedy[0].item_id == "b"  # matched inside the genre list
        assert all("Comedy" in h.payload["attributes"]["genre"] for h in comedy)
        # Query-string values match integer attributes too.
        assert [h.item_id for h in await store.similar("a", filter={"year": "1995"})] == ["b"]
        assert await store.similar("a", filter={"genre": "Western"}) == []

    with_store(tmp_path, backend, body)


@pytest.mark.parametrize("backend", STORES)
def test_similar_without_the_vector_or_item(tmp_path: Path, backend: str) -> None:
    async def body(store: QdrantStore) -> None:
        await write_items(store, neighbourhood())
        assert await store.similar("a", using="image") == []  # "a" has no image vector
        with pytest.raises(ItemNotFound):
            await store.similar("missing")
        with pytest.raises(ValueError, match="using"):
            await store.similar("a", using="colour")
        with pytest.raises(ValueError, match="k must be positive"):
            await store.similar("a", k=0)

    with_store(tmp_path, backend, body)


@pytest.mark.parametrize("backend", STORES)
def test_behaviour_vectors_score_by_inner_product_with_their_norm(tmp_path: Path, backend: str) -> None:
    """Behaviour vectors are Dot: their norm (popularity, confidence) is stored and scores."""
    norms = {"anchor": 2.0, "popular": 3.0, "close": 1.0, "opposite": 5.0}
    directions = {"anchor": basis(0), "popular": unit(basis(0) + basis(1)), "close": basis(0)}
    directions["opposite"] = -basis(0)
    records = [ItemRecord(i, {"behaviour": norms[i] * directions[i]}) for i in norms]

    async def body(store: QdrantStore) -> None:
        await write_items(store, records)
        stored = await store.get_item("popular")
        assert stored is not None
        assert np.linalg.norm(stored.vectors["behaviour"]) == pytest.approx(3.0, abs=1e-5)
        hits = await store.similar("anchor", k=3, using="behaviour")
        # popular is 45 degrees off but 3x longer: 2 * 3 * cos(45) = 4.24 beats 2 * 1 * 1 = 2.
        assert [h.item_id for h in hits] == ["popular", "close", "opposite"]
        assert [h.score for h in hits] == pytest.approx([6.0 / np.sqrt(2.0), 2.0, -10.0], abs=1e-4)

    with_store(tmp_path, backend, body)


@pytest.mark.parametrize("backend", STORES)
def test_store_round_trip(tmp_path: Path, backend: str) -> None:
    async def body(store: QdrantStore) -> None:
        await store.ensure_collections()
        assert await write_items(store, neighbourhood()) == 11
        assert await write_items(store, neighbourhood()) == 11
        assert await store.count("items") == 11
        await write_sessions(store, [SessionRecord("s1", basis(0), "u1", 5.0, ["a"])])
        assert await store.count("sessions") == 1
        hits = await store.similar("a", k=2, filter={"genre": "Comedy"})
        assert hits[0].item_id == "b" and "a" not in {h.item_id for h in hits}
        stored = await store.get_item("c")
        assert stored is not None and stored.payload["attributes"]["genre"] == ["Drama"]
        await store.delete_items(["c", "never-stored"])  # an absent id is not an error
        assert await store.get_item("c") is None
        assert await store.count("items") == 10

    with_store(tmp_path, backend, body)


def test_user_points_carry_the_history_as_parallel_lists() -> None:
    history = Recalled.of({"a": Had(1.7, 0), "b": Had(0.49, 2)})
    built = build_user_points([UserRecord("u1", basis(0), "s9", 5.0, history)], DIM)
    ((key, point),) = built.points
    assert key == "u1" and point.id == point_id("user", "u1") != point_id("session", "u1")
    assert point.payload == {
        "user_id": "u1",
        "session_id": "s9",
        "updated_at": 5.0,
        "items": ["a", "b"],
        "counts": [1.7, 0.49],
        "ago": [0, 2],
    }
    # One bad user (a NaN count or vector) is rejected alone.
    bad = [
        UserRecord("nan-count", basis(0), "s", 1.0, Recalled.of({"a": Had(float("nan"), 0)})),
        UserRecord("nan-vector", np.full(DIM, np.nan), "s", 1.0),
        UserRecord("ok", basis(1), None, 1.0),
    ]
    built = build_user_points(bad, DIM)
    assert [key for key, _ in built.points] == ["ok"]
    assert dict(built.rejected).keys() == {"nan-count", "nan-vector"}


@pytest.mark.parametrize("backend", STORES)
def test_users_and_sessions_read_back(tmp_path: Path, backend: str) -> None:
    async def body(store: QdrantStore) -> None:
        history = {"a": Had(1.7, 0), "b": Had(0.49, 2)}
        await write_users(store, [UserRecord("u1", 2.0 * basis(0), "s9", 5.0, Recalled.of(history))])
        await write_sessions(store, [SessionRecord("s9", basis(1), "u1", 5.0, ["a", "c"])])
        user = await store.get_user("u1")
        assert user is not None and user.session_id == "s9" and user.history == history
        assert user.vector == pytest.approx(list(2.0 * basis(0)))
        session = await store.get_session("s9")
        assert session is not None and (session.user_id, session.items) == ("u1", ["a", "c"])
        assert session.vector == pytest.approx(list(basis(1)))
        assert await store.get_user("s9") is None  # ids of one kind never find another's point
        assert await store.get_session("u1") is None
        assert await store.count("users") == 1

    with_store(tmp_path, backend, body)


@pytest.mark.parametrize("backend", STORES)
def test_rank_items_by_inner_product_and_read_items_by_id(tmp_path: Path, backend: str) -> None:
    lengths = {"a": 4.0, "b": 3.0, "c": 2.0, "d": 1.0}
    records = [ItemRecord(i, {"behaviour": n * basis(0)}, {"genre": ["Drama"]}) for i, n in lengths.items()]
    records.append(ItemRecord("text-only", {"text": basis(0)}))  # no behaviour: never ranked

    async def body(store: QdrantStore) -> None:
        await write_items(store, records)
        query = 0.5 * basis(0)
        every = await store.rank_items(query, 10)
        assert [h.item_id for h in every] == ["a", "b", "c", "d"]
        assert [h.score for h in every] == pytest.approx([2.0, 1.5, 1.0, 0.5], abs=1e-5)
        assert [h.item_id for h in await store.rank_items(query, 2)] == ["a", "b"]
        assert await store.rank_items(query, 0) == []
        with pytest.raises(ValueError, match="using"):
            await store.rank_items(query, 1, using="session")
        # By id: only the items that have the vector, with their payload.
        found = await store.get_items(["d", "never-stored", "text-only", "b"])
        assert sorted(i.item_id for i in found) == ["b", "d"]
        assert all(i.payload["attributes"] == {"genre": ["Drama"]} for i in found)
        by_id = {i.item_id: i.vectors["behaviour"] for i in found}
        assert by_id["b"] == pytest.approx(list(3.0 * basis(0)))
        assert await store.get_items([]) == []

    with_store(tmp_path, backend, body)


# --- buffer -----------------------------------------------------------------------------


def buffered(
    tmp_path: Path,
    body: Callable[[UpsertBuffer, FaultyClient], Awaitable[None]],
    faults: dict[str, Any] | None = None,
    **options: Any,
) -> FaultyClient:
    """Run body with a buffer over a fault-injectable local store; the store is closed after."""
    client = local_client(tmp_path, **(faults or {}))
    options = {"backoff_base_s": 0.001, "backoff_cap_s": 0.01} | options

    async def scenario() -> None:
        async with QdrantStore.from_client(client, dim=DIM) as store:
            await store.ensure_collections()
            buffer = UpsertBuffer(store, **options)
            try:
                await body(buffer, client)
            finally:
                if client.gate is not None:
                    client.gate.set()  # never leave the worker thread blocked
                await buffer.close(timeout=5)

    run(scenario())
    return client


def test_buffer_coalesces_duplicate_ids_latest_wins(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    versions = [unit(rng.standard_normal(DIM)) for _ in range(5)]

    async def body(buffer: UpsertBuffer, client: FaultyClient) -> None:
        for v in versions:
            await buffer.add(item("dup", v))
        await buffer.add(item("other", versions[0]))
        assert buffer.pending == 2
        await buffer.flush()
        assert buffer.pending == 0
        assert buffer.upserted_points == 2
        assert client.upsert_sizes == [2]
        stored = await buffer.store.get_item("dup")
        assert stored is not None
        assert np.allclose(stored.vectors["unified"], versions[-1], atol=1e-6)
        assert await buffer.store.count() == 2

    buffered(tmp_path, body, max_delay_ms=60_000)


def test_buffer_flushes_on_size(tmp_path: Path) -> None:
    async def body(buffer: UpsertBuffer, client: FaultyClient) -> None:
        for record in random_items(4):
            await buffer.add(record)
        await wait_until(lambda: buffer.upserted_points == 4)  # no flush() call
        for record in random_items(2, prefix="late"):
            await buffer.add(record)
        await asyncio.sleep(0.2)  # below max_batch and far from max_delay: they wait
        assert buffer.upserted_points == 4 and buffer.pending == 2
        assert client.upsert_sizes == [4]

    client = buffered(tmp_path, body, max_batch=4, max_delay_ms=60_000)
    assert client.upsert_sizes == [4, 2]  # close() drained the rest


def test_buffer_flushes_on_time(tmp_path: Path) -> None:
    async def body(buffer: UpsertBuffer, client: FaultyClient) -> None:
        started = time.monotonic()
        for record in random_items(3):
            await buffer.add(record)
        await wait_until(lambda: buffer.upserted_points == 3)
        assert time.monotonic() - started >= 0.1
        assert client.upsert_sizes == [3]

    buffered(tmp_path, body, max_batch=1000, max_delay_ms=100)


def test_buffer_retries_transient_failures_until_success(tmp_path: Path) -> None:
    async def body(buffer: UpsertBuffer, client: FaultyClient) -> None:
        for record in random_items(10):
            await buffer.add(record)
        await buffer.flush()
        assert await buffer.store.count() == 10
        assert (buffer.retries, buffer.failures, buffer.upserted_points) == (3, 0, 10)
        assert client.upsert_calls == 4
        assert isinstance(buffer.last_error, ConnectionError)

    buffered(tmp_path, body, faults={"fail_first": 3}, max_attempts=5)


def test_buffer_requeues_after_exhausting_attempts_and_drops_nothing(tmp_path: Path) -> None:
    async def body(buffer: UpsertBuffer, client: FaultyClient) -> None:
        for record in random_items(6):
            await buffer.add(record)
        await buffer.flush()
        # 5 injected faults with 2 attempts per round: two exhausted rounds, then success.
        assert (buffer.failures, buffer.retries) == (2, 3)
        assert buffer.upserted_points == 6 and await buffer.store.count() == 6

    buffered(tmp_path, body, faults={"fail_first": 5}, max_attempts=2, max_delay_ms=60_000)


def test_requeued_batch_keeps_items_added_meanwhile_and_their_newer_versions(
    tmp_path: Path,
) -> None:
    gate = threading.Event()
    rng = np.random.default_rng(3)
    old, new = unit(rng.standard_normal(DIM)), unit(rng.standard_normal(DIM))

    async def body(buffer: UpsertBuffer, client: FaultyClient) -> None:
        await buffer.add(item("x", old))
        await buffer.add(item("y", old))  # full batch: in flight, held at the gate
        await wait_until(lambda: client.upsert_calls == 1)
        await buffer.add(item("x", new))  # a newer version while the old one is in flight
        await buffer.add(item("z", old))
        gate.set()  # the held call now fails; max_attempts=1 re-queues the batch at once
        await buffer.flush()
        assert buffer.failures == 1 and buffer.upserted_points == 3
        assert await buffer.store.count() == 3
        stored = await buffer.store.get_item("x")
        assert stored is not None and np.allclose(stored.vectors["unified"], new, atol=1e-6)

    client = buffered(tmp_path, body, faults={"gate": gate, "fail_first": 1}, max_batch=2, max_attempts=1)
    assert client.upsert_sizes == [2, 1]  # x (new) and y re-queued first, then z


def test_buffer_retries_with_the_async_client(tmp_path: Path) -> None:
    client = FaultyAsyncClient(fail_first=2, location=":memory:")

    async def scenario() -> None:
        async with QdrantStore.from_client(client, dim=DIM) as store:
            await store.ensure_collections()
            async with UpsertBuffer(store, backoff_base_s=0.001, backoff_cap_s=0.01) as buf:
                for record in random_items(5):
                    await buf.add(record)
            # Leaving the block closed (drained) the buffer.
            assert (buf.retries, buf.upserted_points, client.upsert_calls) == (2, 5, 3)
            assert await store.count() == 5

    run(scenario())


def test_buffer_full_makes_add_wait_instead_of_dropping(tmp_path: Path) -> None:
    gate = threading.Event()

    async def body(buffer: UpsertBuffer, client: FaultyClient) -> None:
        records = random_items(5)
        for record in records[:2]:  # a full batch: taken by the flusher, stuck at the gate
            await buffer.add(record)
        await wait_until(lambda: client.upsert_calls == 1)
        for record in records[2:4]:  # fills the buffer (max_pending=2)
            await buffer.add(record)
        blocked = asyncio.create_task(buffer.add(records[4]))
        await asyncio.sleep(0.2)
        assert not blocked.done()  # back-pressure: the producer waits
        assert buffer.pending == 4
        gate.set()
        await asyncio.wait_for(blocked, 3)
        await buffer.flush()
        assert buffer.upserted_points == 5 and await buffer.store.count() == 5

    buffered(tmp_path, body, faults={"gate": gate}, max_batch=2, max_pending=2)


def test_buffer_close_drains_and_then_refuses(tmp_path: Path) -> None:
    async def body(buffer: UpsertBuffer, client: FaultyClient) -> None:
        for record in random_items(7):
            await buffer.add(record)
        assert buffer.upserted_points == 0  # nothing due yet
        await buffer.close()
        assert buffer.upserted_points == 7 and buffer.pending == 0
        assert await buffer.store.count() == 7
        with pytest.raises(RuntimeError, match="closed"):
            await buffer.add(random_items(1, seed=9)[0])

    buffered(tmp_path, body, max_batch=1000, max_delay_ms=60_000)


def test_buffer_close_times_out_when_qdrant_stays_down(tmp_path: Path) -> None:
    async def body(buffer: UpsertBuffer, client: FaultyClient) -> None:
        for record in random_items(3):
            await buffer.add(record)
        with pytest.raises(TimeoutError, match="3 items not written"):
            await buffer.close(timeout=0.3)
        assert buffer.failures >= 1 and buffer.upserted_points == 0

    buffered(tmp_path, body, faults={"fail_first": 10**9}, max_attempts=2)
