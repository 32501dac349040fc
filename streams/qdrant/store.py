"""The Qdrant store: creates and checks the collections, writes points, answers lookups.

One async store serves the whole worker (Faust agents, aiohttp handlers, the learner's upsert
buffers). A URL selects a Qdrant server, reached with ``AsyncQdrantClient``. Without one, an
embedded engine runs at ``path``: the Qdrant engine itself (qdrant-edge, HNSW and payload
indexes, in a child process: see edge.py) or qdrant-client's local mode (brute force; the only
one in memory, when ``path`` is None). The store calls an embedded engine through a *blocking*
client on one dedicated thread: local mode's async client computes on the calling thread, so a
256-point upsert in ``path`` mode (350-450 ms here) was all a stalled event loop (Faust
heartbeats, HTTP handlers); on the thread the loop stalled at most ~35 ms.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, ParamSpec, Self, TypeVar, cast

from qdrant_client import AsyncQdrantClient, QdrantClient, models

from onevec.streams.qdrant.edge import EdgeProcess
from onevec.streams.qdrant.points import (
    COLLECTION_VECTORS,
    ITEM_VECTORS,
    SESSION_VECTOR,
    USER_VECTOR,
    CollectionKind,
    ItemHit,
    PointRow,
    StoredItem,
    StoredSession,
    StoredUser,
    collection_vectors,
    payload_filter,
    point_id,
    stored_session,
    stored_user,
)
from onevec.streams.settings import Settings

__all__ = ["CollectionSchemaError", "Engine", "ItemNotFound", "QdrantStore"]

# The embedded engine at a path: qdrant-edge, or qdrant-client's local mode.
Engine = Literal["edge", "local"]

_P = ParamSpec("_P")
_R = TypeVar("_R")


class CollectionSchemaError(RuntimeError):
    """An existing collection's vectors do not match what this store was configured for."""


class ItemNotFound(KeyError):
    """The item id has no point in the items collection."""


class _ThreadedClient:
    """A blocking client (qdrant-client local mode, or qdrant-edge) behind the async client's
    methods, every call run on one dedicated thread.

    One thread serialises the calls: local mode is not thread-safe, and calls keep the order in
    which they were issued even when an awaiting coroutine is cancelled. The methods are bound
    from the client instance, so a subclass or a wrapper of it (fault injection in tests) is
    what gets called.
    """

    def __init__(self, client: QdrantClient | EdgeProcess) -> None:
        self._client = client
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onevec-qdrant")
        self.collection_exists = self._on_thread(client.collection_exists)
        self.create_collection = self._on_thread(client.create_collection)
        self.get_collection = self._on_thread(client.get_collection)
        self.upsert = self._on_thread(client.upsert)
        self.delete = self._on_thread(client.delete)
        self.retrieve = self._on_thread(client.retrieve)
        self.query_points = self._on_thread(client.query_points)
        self.count = self._on_thread(client.count)

    def _on_thread(self, method: Callable[_P, _R]) -> Callable[_P, Coroutine[Any, Any, _R]]:
        async def call(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            bound = functools.partial(method, *args, **kwargs)
            return await asyncio.get_running_loop().run_in_executor(self._thread, bound)

        return call

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._client.close)
        self._thread.shutdown(wait=False)


def _local_client(path: Path | None) -> QdrantClient:
    if path is None:
        return QdrantClient(location=":memory:")
    path.mkdir(parents=True, exist_ok=True)
    # Every call goes through the store's one thread, so sqlite's same-thread check (the
    # client is made on another thread) only gets in the way.
    return QdrantClient(path=str(path), force_disable_check_same_thread=True)


class QdrantStore:
    """The ``items``, ``sessions`` and ``users`` collections of one Qdrant, from the event loop.

    ``url`` (non-empty) selects a Qdrant server and ``api_key`` authenticates to it; otherwise
    the embedded ``engine`` at ``path``, or local mode in memory when ``path`` is None
    (``api_key`` is then unused, so one settings file can switch modes by its URL alone).
    """

    def __init__(
        self,
        *,
        dim: int,
        url: str | None = None,
        api_key: str | None = None,
        https: bool | None = None,
        path: Path | None = None,
        collection_prefix: str = "",
        engine: Engine = "local",
    ) -> None:
        client: AsyncQdrantClient | _ThreadedClient
        if url:
            client = AsyncQdrantClient(url=url, api_key=api_key, https=https)
        elif path is not None and engine == "edge":
            client = _ThreadedClient(EdgeProcess(path))
        else:
            client = _ThreadedClient(_local_client(path))
        self._attach(client, dim, collection_prefix)

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        """The store a worker with these settings writes: its server, or its embedded engine at
        ``qdrant_path`` (in memory without one)."""
        return cls(
            dim=settings.model_dim,
            url=settings.qdrant_url or None,
            api_key=settings.qdrant_api_key.get_secret_value() if settings.qdrant_api_key else None,
            https=settings.qdrant_https,
            path=settings.qdrant_path,
            engine=settings.qdrant_engine,
        )

    @classmethod
    def from_client(
        cls,
        client: AsyncQdrantClient | QdrantClient | EdgeProcess,
        *,
        dim: int,
        collection_prefix: str = "",
    ) -> Self:
        """Wrap an existing client (custom timeouts, gRPC, a tuned embedded engine, a test double
        around one); a blocking one is run on the store's thread."""
        store = cls.__new__(cls)
        store._attach(
            client if isinstance(client, AsyncQdrantClient) else _ThreadedClient(client),
            dim,
            collection_prefix,
        )
        return store

    def _attach(self, client: AsyncQdrantClient | _ThreadedClient, dim: int, collection_prefix: str) -> None:
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim = dim
        self.collections: dict[CollectionKind, str] = {
            kind: f"{collection_prefix}{kind}" for kind in COLLECTION_VECTORS
        }
        self._client = client

    async def ensure_collections(self) -> None:
        """Create the collections if absent; raise CollectionSchemaError on mismatch."""
        for kind, name in self.collections.items():
            vectors = collection_vectors(kind, self.dim)
            if not await self._client.collection_exists(name):
                try:
                    await self._client.create_collection(name, vectors_config=vectors)
                except Exception:
                    # N workers start together: another one may have created it between our
                    # check and our create. Then validate theirs below; otherwise the error is real.
                    if not await self._client.collection_exists(name):
                        raise
            # Validate even what we just created: it is what the server actually made.
            _check_schema(name, vectors, await self._client.get_collection(name))

    async def collections_exist(self) -> bool:
        """Whether every collection is there (a reader that must not create them asks first)."""
        return all([await self._client.collection_exists(name) for name in self.collections.values()])

    async def upsert_points(self, collection: CollectionKind, points: Sequence[PointRow]) -> int:
        """Write points built (and so validated) by build_item_points or build_session_points.

        When it returns, the points are applied and searchable (``wait=True``), which is what
        a buffer's flush promises."""
        for batch in _as_batches(points):
            await self._client.upsert(self.collections[collection], batch, wait=True)
        return len(points)

    async def delete_items(self, item_ids: Sequence[str]) -> None:
        """Remove item points (idempotent: an absent id is not an error). The points are gone
        when it returns (a catalogue tombstone is final)."""
        selector = models.PointIdsList(points=[point_id("item", i) for i in item_ids])
        await self._client.delete(self.collections["items"], points_selector=selector, wait=True)

    async def similar(
        self,
        item_id: str,
        k: int = 10,
        filter: Mapping[str, str] | None = None,
        using: str = "unified",
    ) -> list[ItemHit]:
        """Nearest items to ``item_id`` (never itself); [] when it lacks the ``using`` vector."""
        if k < 1:
            raise ValueError(f"k must be positive, got {k}")
        if using not in ITEM_VECTORS:
            raise ValueError(f"using must be one of {ITEM_VECTORS}, got {using!r}")
        own_id = point_id("item", item_id)
        found = await self._client.retrieve(
            self.collections["items"], ids=[own_id], with_payload=False, with_vectors=[using]
        )
        if not found:
            raise ItemNotFound(item_id)
        vector = _dense_vectors(found[0]).get(using)
        if vector is None:
            return []  # e.g. no image: the item has no neighbours in that space
        # Search by the stored vector rather than by point id so "item lacks this vector"
        # behaves the same on a server and in local mode; the item itself is excluded by the
        # filter so it does not take one of the k places.
        response = await self._client.query_points(
            self.collections["items"],
            query=vector,
            using=using,
            query_filter=payload_filter(filter, exclude_point_ids=[own_id]),
            limit=k,
            with_payload=True,
        )
        return [_hit(point) for point in response.points]

    async def rank_items(
        self, vector: Sequence[float], limit: int, using: str = "behaviour"
    ) -> list[ItemHit]:
        """The ``limit`` items of the largest inner product with ``vector`` (a session or user
        vector) in the ``using`` space. Unfiltered on purpose: local mode evaluates a point-id
        filter point by point in Python (``has_id`` over 50 ids: 74 ms at 10,000 items against
        7 ms unfiltered), so callers over-fetch and drop what they exclude."""
        if using not in ITEM_VECTORS:
            raise ValueError(f"using must be one of {ITEM_VECTORS}, got {using!r}")
        if limit < 1:
            return []
        response = await self._client.query_points(
            self.collections["items"], query=list(vector), using=using, limit=limit, with_payload=True
        )
        return [_hit(point) for point in response.points]

    async def get_items(self, item_ids: Sequence[str], using: str = "behaviour") -> list[StoredItem]:
        """The items among ``item_ids`` that have the ``using`` vector, with it and their payload
        (one request, by point id)."""
        if not item_ids:
            return []
        found = await self._client.retrieve(
            self.collections["items"],
            ids=[point_id("item", i) for i in item_ids],
            with_payload=True,
            with_vectors=[using],
        )
        stored = [(record, _dense_vectors(record)) for record in found]
        return [
            StoredItem(str((record.payload or {})["item_id"]), vectors, dict(record.payload or {}))
            for record, vectors in stored
            if using in vectors
        ]

    async def get_session(self, session_id: str) -> StoredSession | None:
        found = await self._get("sessions", point_id("session", session_id), SESSION_VECTOR)
        return None if found is None else stored_session(session_id, *found)

    async def get_user(self, user_id: str) -> StoredUser | None:
        found = await self._get("users", point_id("user", user_id), USER_VECTOR)
        return None if found is None else stored_user(user_id, *found)

    async def _get(
        self, collection: CollectionKind, point: str, vector: str
    ) -> tuple[list[float], dict[str, Any]] | None:
        """One point's vector and payload, None when absent."""
        found = await self._client.retrieve(
            self.collections[collection], ids=[point], with_payload=True, with_vectors=[vector]
        )
        if not found:
            return None
        return _dense_vectors(found[0])[vector], dict(found[0].payload or {})

    async def get_item(self, item_id: str) -> StoredItem | None:
        found = await self._client.retrieve(
            self.collections["items"], ids=[point_id("item", item_id)], with_payload=True, with_vectors=True
        )
        if not found:
            return None
        return StoredItem(
            item_id=item_id, vectors=_dense_vectors(found[0]), payload=dict(found[0].payload or {})
        )

    async def count(self, collection: CollectionKind = "items") -> int:
        result = await self._client.count(self.collections[collection], exact=True)
        return int(result.count)

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def _check_schema(
    name: str, expected: Mapping[str, models.VectorParams], info: models.CollectionInfo
) -> None:
    found = info.config.params.vectors
    if not isinstance(found, Mapping):
        raise CollectionSchemaError(
            f"Qdrant collection {name!r} has an unnamed vector; onevec expects named vectors "
            f"{sorted(expected)}. Use another collection_prefix or delete the collection."
        )
    problems = []
    for vname, params in expected.items():
        have = found.get(vname)
        if have is None:
            problems.append(f"vector {vname!r} is missing")
        elif have.size != params.size or have.distance != params.distance:
            problems.append(
                f"vector {vname!r} has size {have.size} / {have.distance.value}, "
                f"expected size {params.size} / {params.distance.value}"
            )
    if problems:
        raise CollectionSchemaError(
            f"Qdrant collection {name!r} does not match this store: {'; '.join(problems)}. "
            "Its vectors come from another model configuration: use another collection_prefix "
            "or delete the collection."
        )


def _as_batches(points: Sequence[PointRow]) -> list[models.Batch]:
    """The points in column form, one batch per set of named vectors (an upsert replaces each
    point whole, so a batch must not give a point a vector it lacks). qdrant-client inspects
    every element of a point list; a columnar batch is written ~20% faster in local mode."""
    groups: dict[tuple[str, ...], list[PointRow]] = {}
    for point in points:
        groups.setdefault(tuple(sorted(point.vector)), []).append(point)
    return [
        models.Batch.model_construct(
            ids=[p.id for p in group],
            vectors={name: [p.vector[name] for p in group] for name in names},
            payloads=[p.payload for p in group],
        )
        for names, group in groups.items()
    ]


def _dense_vectors(record: models.Record) -> dict[str, list[float]]:
    # onevec writes named dense vectors only (see points.py).
    vectors = record.vector if isinstance(record.vector, dict) else {}
    return {name: list(cast(list[float], values)) for name, values in vectors.items()}


def _hit(point: models.ScoredPoint) -> ItemHit:
    payload = dict(point.payload or {})
    return ItemHit(item_id=str(payload["item_id"]), score=point.score, payload=payload)
