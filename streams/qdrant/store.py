"""Qdrant sink and lookups for onevec item and session vectors.

Two collections (names optionally prefixed, e.g. one prefix per test or per model family):

* ``items``: one point per item with the named vectors ``unified``, ``behaviour``, ``text`` and
  ``image`` (each ``dim`` wide; a point holds only the sources the item really has) and the
  payload ``{item_id, attributes, model_version, updated_at, event_count}``.
* ``sessions``: one point per live session with the vector ``session`` and the payload
  ``{session_id, user_id, updated_at, items}``.

Point ids are UUID5 of the item/session id (:func:`point_id`), so every write is an idempotent
overwrite: Kafka delivery is at-least-once and a redelivered record rewrites the same point.

The Qdrant logic is written once, as *plans*: generators that yield the client calls they need
(:class:`_Call`) and receive each call's result, i.e. the requests are built by pure code and
the I/O is done by a small driver. :class:`QdrantStore` drives plans with a blocking
``QdrantClient`` (CLI, tests); :class:`AsyncQdrantStore` drives the same plans from the event
loop (Faust agents, aiohttp handlers). :class:`UpsertBuffer` batches item writes for the
learner: coalescing, size/time flushes, retries with backoff and back-pressure.

Local mode vs server: a URL selects a Qdrant server (``AsyncQdrantClient`` for the async store).
Without one, qdrant-client's local mode runs at ``path`` (``:memory:`` when ``path`` is None).
Local mode is brute force and its async client computes on the calling thread, so the async
store runs a blocking local client on one dedicated worker thread instead: a 256-point upsert
in ``path`` mode took 350-450 ms here, all of it a stalled event loop (Faust heartbeats,
HTTP handlers); on the worker thread the loop stalled at most ~35 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import logging
import math
import random
import re
import time
import uuid
from collections.abc import Callable, Collection, Generator, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NamedTuple, Protocol, Self, TypeVar

import numpy as np
from qdrant_client import AsyncQdrantClient, QdrantClient, models

from onevec.monitoring import metrics

__all__ = [
    "ITEM_VECTORS",
    "SESSION_VECTOR",
    "VECTOR_DISTANCES",
    "AsyncQdrantStore",
    "CollectionKind",
    "CollectionSchemaError",
    "ItemHit",
    "ItemNotFound",
    "ItemRecord",
    "PointRow",
    "UpsertBuffer",
    "QdrantStore",
    "SessionRecord",
    "StoredItem",
    "backoff_delay",
    "build_item_points",
    "build_session_points",
    "payload_filter",
    "point_id",
]

log = logging.getLogger(__name__)

CollectionKind = Literal["items", "sessions"]

ITEM_VECTORS: tuple[str, ...] = ("unified", "behaviour", "text", "image")
SESSION_VECTOR = "session"

# Decode the way each vector was trained (WWW'23 "homogeneous configuration"):
# * behaviour (BPR-MF / skip-gram) and session vectors are trained as inner products with item
#   vectors, and their norm carries signal (popularity, confidence): Dot keeps it. Cosine
#   would make Qdrant renormalise the vectors on write and change the ranking.
# * unified is the fused vector, L2-normalised by the fuser, so Dot == cosine on it; Dot keeps
#   the stored vector identical to what the model produced (drift / Procrustes read it back),
#   and build_item_points() rejects a unified vector that is not unit length so the two cannot
#   silently diverge. Session vectors query this space by inner product (recommend()).
# * text (denoising autoencoder codes) and image (Siamese/triplet on normalised embeddings)
#   compare directions only: Cosine, whatever norm the encoder happens to emit.
VECTOR_DISTANCES: Mapping[str, models.Distance] = {
    "unified": models.Distance.DOT,
    "behaviour": models.Distance.DOT,
    "text": models.Distance.COSINE,
    "image": models.Distance.COSINE,
    SESSION_VECTOR: models.Distance.DOT,
}

_UNIT_NORM_TOLERANCE = 1e-3
# Fixed namespace: changing it would orphan every stored point.
_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "onevec:qdrant-point-id")
_INT_LITERAL = re.compile(r"-?\d{1,18}")  # fits Qdrant's int64 payload integers
_ATTRIBUTE_NAME = re.compile(r"[^.\[\]\s]+")  # '.' and '[]' would address a different path

_T = TypeVar("_T")


class CollectionSchemaError(RuntimeError):
    """An existing collection's vectors do not match what this store was configured for."""


class ItemNotFound(KeyError):
    """The item id has no point in the items collection."""


@dataclass(frozen=True, slots=True)
class ItemRecord:
    """The complete state of one item point.

    ``vectors`` holds only the sources the item really has (a new item may have text and
    image but no behaviour yet). An upsert replaces the whole point, so a source missing here
    is removed from the point: the single writer of an item always sends everything it has.
    """

    item_id: str
    vectors: Mapping[str, Sequence[float] | np.ndarray]
    attributes: Mapping[str, Any] = field(default_factory=dict)
    model_version: int = 0
    updated_at: float = 0.0
    event_count: int = 0


class PointRow(NamedTuple):
    """A validated point ready to be written: what :func:`build_item_points` and
    :func:`build_session_points` make. Lighter than a pydantic ``PointStruct`` (same field
    names); the sink writes rows in column form (``models.Batch``)."""

    id: str
    vector: dict[str, list[float]]
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class SessionRecord:
    session_id: str
    vector: Sequence[float] | np.ndarray
    user_id: str | None = None
    updated_at: float = 0.0
    items: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class ItemHit:
    item_id: str
    score: float
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StoredItem:
    item_id: str
    vectors: dict[str, list[float]]
    payload: dict[str, Any]


@functools.lru_cache(maxsize=1 << 16)
def point_id(kind: Literal["item", "session"], key: str) -> str:
    """Deterministic point id, so a redelivered record overwrites instead of duplicating.
    (Cached: the learner re-publishes the same items over and over.)"""
    return str(uuid.uuid5(_ID_NAMESPACE, f"{kind}:{key}"))


# --- pure request builders ---------------------------------------------------------------


def _as_vector(name: str, values: Sequence[float] | np.ndarray, dim: int) -> list[float]:
    array = np.asarray(values, dtype=np.float32)  # Qdrant stores float32 anyway
    if array.shape != (dim,):
        raise ValueError(f"vector {name!r} has shape {array.shape}, expected ({dim},)")
    if not np.isfinite(array).all():
        # One NaN would make every search that touches this point meaningless.
        raise ValueError(f"vector {name!r} contains NaN or infinity")
    return array.tolist()


def _check_payload(key: str, payload: Mapping[str, Any]) -> None:
    # A server only takes JSON (numpy scalars and NaN are not). Catching it here, before the
    # record is accepted, keeps a bad payload from failing its whole batch on every retry.
    try:
        json.dumps(payload, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{key!r}: payload is not plain JSON: {exc}") from exc


# Attribute mappings already found to be plain JSON, by identity (the object is kept, so its
# id cannot be reused while cached): an item's attributes are re-published with every vector
# update, and json.dumps of each was half the cost of building a point.
_CHECKED_ATTRIBUTES: dict[int, Mapping[str, Any]] = {}
_CHECKED_ATTRIBUTES_MAX = 1 << 20


def _check_attributes(key: str, attributes: Mapping[str, Any]) -> None:
    if _CHECKED_ATTRIBUTES.get(id(attributes)) is attributes:
        return
    _check_payload(key, {"attributes": attributes})
    if len(_CHECKED_ATTRIBUTES) >= _CHECKED_ATTRIBUTES_MAX:
        _CHECKED_ATTRIBUTES.clear()
    _CHECKED_ATTRIBUTES[id(attributes)] = attributes


def _checked_rows(
    name: str, keys: Sequence[str], arrays: Sequence[Any], dim: int, unit: bool = False
) -> tuple[list[list[float] | None], dict[str, str]]:
    """Each vector as a float list, checked on one stacked matrix (shape, finite, unit norm
    when ``unit``); None and a reason where a vector is bad."""
    values = [np.asarray(a, dtype=np.float32) for a in arrays]
    rows: list[list[float] | None] = [None] * len(values)
    rejected = {
        keys[i]: f"vector {name!r} has shape {v.shape}" for i, v in enumerate(values) if v.shape != (dim,)
    }
    good = [i for i, v in enumerate(values) if v.shape == (dim,)]
    if not good:
        return rows, rejected
    matrix = np.array([values[i] for i in good])
    finite = np.isfinite(matrix).all(axis=1)
    norms = np.linalg.norm(matrix.astype(np.float64), axis=1)
    for i, row, ok, norm in zip(good, matrix.tolist(), finite, norms, strict=True):
        if not ok:
            rejected[keys[i]] = f"vector {name!r} contains NaN or infinity"
        elif unit and abs(norm - 1.0) > _UNIT_NORM_TOLERANCE:
            rejected[keys[i]] = (
                f"vector {name!r} has norm {norm:.4f}; it must be L2-normalised (the collection "
                "uses Dot, which equals cosine only on unit vectors)"
            )
        else:
            rows[i] = row
    return rows, rejected


def build_item_points(
    records: Sequence[ItemRecord], dim: int
) -> tuple[list[tuple[str, PointRow]], list[tuple[str, str]]]:
    """Validate item records and turn them into points: ``(points as (item id, point), rejected
    as (item id, reason))``. The vector checks run on stacked matrices; a bad record is rejected
    alone, the others still get their points."""
    rejected: dict[str, str] = {}
    lists: list[dict[str, list[float]]] = [{} for _ in records]
    for name in sorted({name for r in records for name in r.vectors}):
        positions = [i for i, r in enumerate(records) if name in r.vectors]
        keys = [records[i].item_id for i in positions]
        if name not in ITEM_VECTORS:
            rejected.update((key, f"unknown vector name {name!r}") for key in keys)
            continue
        arrays = [records[i].vectors[name] for i in positions]
        rows, bad = _checked_rows(name, keys, arrays, dim, unit=name == "unified")
        for key, reason in bad.items():
            rejected.setdefault(key, reason)
        for i, row in zip(positions, rows, strict=True):
            if row is not None:
                lists[i][name] = row
    points = []
    for record, vectors in zip(records, lists, strict=True):
        if record.item_id in rejected:
            continue
        if not vectors:
            rejected[record.item_id] = "no vector"
            continue
        payload = {
            "item_id": record.item_id,
            "attributes": dict(record.attributes),
            "model_version": int(record.model_version),
            "updated_at": float(record.updated_at),
            "event_count": int(record.event_count),
        }
        try:
            _check_attributes(record.item_id, record.attributes)
            if not math.isfinite(payload["updated_at"]):
                raise ValueError(f"{record.item_id!r}: updated_at is not finite")
        except ValueError as error:
            rejected[record.item_id] = str(error)
            continue
        points.append((record.item_id, PointRow(point_id("item", record.item_id), vectors, payload)))
    return points, list(rejected.items())


def build_session_points(
    records: Sequence[SessionRecord], dim: int
) -> tuple[list[tuple[str, PointRow]], list[tuple[str, str]]]:
    """Validate session records and turn them into points: ``(points as (session id, point),
    rejected as (session id, reason))``."""
    keys = [r.session_id for r in records]
    rows, rejected = _checked_rows(SESSION_VECTOR, keys, [r.vector for r in records], dim)
    points = []
    for record, row in zip(records, rows, strict=True):
        if row is None:
            continue
        payload = {
            "session_id": record.session_id,
            "user_id": record.user_id,
            "updated_at": float(record.updated_at),
            "items": [str(item) for item in record.items],
        }
        if not math.isfinite(payload["updated_at"]):
            rejected[record.session_id] = "updated_at is not finite"
            continue
        points.append(
            (
                record.session_id,
                PointRow(point_id("session", record.session_id), {SESSION_VECTOR: row}, payload),
            )
        )
    return points, list(rejected.items())


def _all_or_error(built: tuple[list[tuple[str, PointRow]], list[tuple[str, str]]]) -> list[PointRow]:
    """The points of a build, or ValueError naming the first rejected record: nothing is
    written when one record is bad."""
    points, rejected = built
    if rejected:
        key, reason = rejected[0]
        raise ValueError(f"{key!r}: {reason}")
    return [point for _, point in points]


def _attribute_condition(key: str, value: str) -> models.Condition:
    if not _ATTRIBUTE_NAME.fullmatch(key):
        raise ValueError(f"filter key {key!r} is not a plain attribute name")
    path = f"attributes.{key}"
    # MatchValue on a list attribute matches when any element equals the value, so
    # genre=Comedy finds ["Comedy", "Drama"] too.
    as_text = models.FieldCondition(key=path, match=models.MatchValue(value=value))
    if not _INT_LITERAL.fullmatch(value):
        return as_text
    # Filters arrive as strings (query strings, CLI flags) but numeric attributes such as a
    # release year are stored as ints, and Qdrant matches types strictly: accept either.
    as_int = models.FieldCondition(key=path, match=models.MatchValue(value=int(value)))
    return models.Filter(should=[as_text, as_int])


def payload_filter(
    attributes: Mapping[str, str] | None, exclude_point_ids: Collection[str] = ()
) -> models.Filter | None:
    """Filter on item attributes (all must match) minus the given point ids; None if empty."""
    must = [_attribute_condition(k, v) for k, v in (attributes or {}).items()]
    must_not: list[models.Condition] = (
        [models.HasIdCondition(has_id=list(exclude_point_ids))] if exclude_point_ids else []
    )
    if not must and not must_not:
        return None
    return models.Filter(must=must or None, must_not=must_not or None)


def backoff_delay(attempt: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Full-jitter exponential backoff before retry number ``attempt`` (1-based).

    Jitter spreads the retries of several workers that failed together (a Qdrant restart),
    so they do not hit the server again in lockstep.
    """
    return rng.uniform(0.0, min(cap_s, base_s * 2 ** (attempt - 1)))


def _hit(point: models.ScoredPoint) -> ItemHit:
    payload = dict(point.payload or {})
    return ItemHit(item_id=str(payload["item_id"]), score=point.score, payload=payload)


# --- plans: the Qdrant logic, independent of sync/async I/O -------------------------------

_ClientMethod = Literal[
    "collection_exists",
    "create_collection",
    "get_collection",
    "upsert",
    "retrieve",
    "query_points",
    "count",
]


@dataclass(frozen=True, slots=True)
class _Call:
    """One qdrant-client method call; the same names exist on QdrantClient and the async one."""

    method: _ClientMethod
    kwargs: Mapping[str, Any]


# A plan yields calls, is sent each call's result (or thrown its exception), returns T.
_Plan = Generator[_Call, Any, _T]


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


def _ensure_plan(schemas: Mapping[str, Mapping[str, models.VectorParams]]) -> _Plan[None]:
    for name, vectors in schemas.items():
        if not (yield _Call("collection_exists", {"collection_name": name})):
            try:
                yield _Call("create_collection", {"collection_name": name, "vectors_config": vectors})
            except Exception:
                # N workers start together: another one may have created it between our check
                # and our create. Then validate theirs below; otherwise the error is real.
                if not (yield _Call("collection_exists", {"collection_name": name})):
                    raise
        # Validate even what we just created: it is what the server actually made.
        _check_schema(name, vectors, (yield _Call("get_collection", {"collection_name": name})))


def _as_batches(points: Sequence[models.PointStruct | PointRow]) -> list[models.Batch]:
    """The points in column form, one batch per set of named vectors (an upsert replaces each
    point whole, so a batch must not give a point a vector it lacks). qdrant-client inspects
    every element of a point list; a columnar batch is written ~20% faster in local mode."""
    groups: dict[tuple[str, ...], list[models.PointStruct | PointRow]] = {}
    for point in points:
        groups.setdefault(tuple(sorted(point.vector)), []).append(point)  # type: ignore[arg-type]
    return [
        models.Batch.model_construct(
            ids=[p.id for p in group],
            vectors={name: [p.vector[name] for p in group] for name in names},  # type: ignore[index]
            payloads=[p.payload for p in group],
        )
        for names, group in groups.items()
    ]


def _upsert_plan(collection: str, points: Sequence[models.PointStruct | PointRow]) -> _Plan[int]:
    for batch in _as_batches(points):
        # wait=True: when the call returns the points are applied and searchable, which is
        # what a flush promises.
        yield _Call("upsert", {"collection_name": collection, "points": batch, "wait": True})
    return len(points)


def _search_plan(
    collection: str, vector: list[float], using: str, k: int, query_filter: models.Filter | None
) -> _Plan[list[ItemHit]]:
    response = yield _Call(
        "query_points",
        {
            "collection_name": collection,
            "query": vector,
            "using": using,
            "query_filter": query_filter,
            "limit": k,
            "with_payload": True,
        },
    )
    return [_hit(p) for p in response.points]


def _drive_sync(plan: _Plan[_T], client: QdrantClient) -> _T:
    reply: Any = None
    error: Exception | None = None
    while True:
        try:
            call = plan.throw(error) if error is not None else plan.send(reply)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        try:
            reply, error = getattr(client, call.method)(**call.kwargs), None
        except Exception as exc:  # handed to the plan, which decides whether it is fatal
            reply, error = None, exc


async def _drive_async(plan: _Plan[_T], invoker: _Invoker) -> _T:
    reply: Any = None
    error: Exception | None = None
    while True:
        try:
            call = plan.throw(error) if error is not None else plan.send(reply)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        try:
            reply, error = await invoker.call(call), None
        except Exception as exc:
            reply, error = None, exc


class _Invoker(Protocol):
    async def call(self, call: _Call) -> Any: ...

    async def close(self) -> None: ...


class _AsyncClientInvoker:
    """Runs calls on an AsyncQdrantClient (server mode)."""

    def __init__(self, client: AsyncQdrantClient) -> None:
        self.client = client

    async def call(self, call: _Call) -> Any:
        return await getattr(self.client, call.method)(**call.kwargs)

    async def close(self) -> None:
        await self.client.close()


class _ThreadInvoker:
    """Runs calls of a blocking QdrantClient (local mode) on one dedicated thread.

    One thread serialises every call: local mode is not thread-safe, and calls keep the order
    in which they were issued even when an awaiting coroutine is cancelled.
    """

    def __init__(self, client: QdrantClient) -> None:
        self.client = client
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onevec-qdrant")

    async def call(self, call: _Call) -> Any:
        method = functools.partial(getattr(self.client, call.method), **call.kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._thread, method)

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self.client.close)
        self._thread.shutdown(wait=False)


# --- stores -------------------------------------------------------------------------------


class _StoreBase:
    """Configuration and plans shared by the sync and async stores."""

    def __init__(self, *, dim: int, collection_prefix: str) -> None:
        if dim < 1:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim = dim
        self.collections: dict[CollectionKind, str] = {
            "items": f"{collection_prefix}items",
            "sessions": f"{collection_prefix}sessions",
        }

    def _vector_params(self, name: str) -> models.VectorParams:
        return models.VectorParams(size=self.dim, distance=VECTOR_DISTANCES[name])

    def _ensure_collections_plan(self) -> _Plan[None]:
        return _ensure_plan(
            {
                self.collections["items"]: {n: self._vector_params(n) for n in ITEM_VECTORS},
                self.collections["sessions"]: {SESSION_VECTOR: self._vector_params(SESSION_VECTOR)},
            }
        )

    def _upsert_items_plan(self, records: Iterable[ItemRecord]) -> _Plan[int]:
        return _upsert_plan(
            self.collections["items"], _all_or_error(build_item_points(list(records), self.dim))
        )

    def _upsert_sessions_plan(self, records: Iterable[SessionRecord]) -> _Plan[int]:
        points = _all_or_error(build_session_points(list(records), self.dim))
        return _upsert_plan(self.collections["sessions"], points)

    def _delete_items_plan(self, item_ids: Sequence[str]) -> _Plan[None]:
        # wait=True: the points are gone when the call returns (a catalogue tombstone is final).
        selector = models.PointIdsList(points=[point_id("item", i) for i in item_ids])
        kwargs = {"collection_name": self.collections["items"], "points_selector": selector, "wait": True}
        yield _Call("delete", kwargs)

    def _similar_plan(
        self, item_id: str, k: int, filter: Mapping[str, str] | None, using: str
    ) -> _Plan[list[ItemHit]]:
        _check_query(k, using)
        own_id = point_id("item", item_id)
        records = yield _Call(
            "retrieve",
            {
                "collection_name": self.collections["items"],
                "ids": [own_id],
                "with_payload": False,
                "with_vectors": [using],
            },
        )
        if not records:
            raise ItemNotFound(item_id)
        vector = (records[0].vector or {}).get(using)
        if vector is None:
            return []  # e.g. no image: the item has no neighbours in that space
        # Search by the stored vector rather than by point id so "item lacks this vector"
        # behaves the same on a server and in local mode; the item itself is excluded by the
        # filter so it does not take one of the k places.
        query_filter = payload_filter(filter, exclude_point_ids=[own_id])
        return (yield from _search_plan(self.collections["items"], vector, using, k, query_filter))

    def _recommend_plan(
        self,
        vector: Sequence[float] | np.ndarray,
        k: int,
        exclude_ids: Iterable[str],
        filter: Mapping[str, str] | None,
        using: str,
    ) -> _Plan[list[ItemHit]]:
        _check_query(k, using)
        query = _as_vector("query", vector, self.dim)
        excluded = [point_id("item", i) for i in exclude_ids]
        query_filter = payload_filter(filter, exclude_point_ids=excluded)
        return (yield from _search_plan(self.collections["items"], query, using, k, query_filter))

    def _get_item_plan(self, item_id: str) -> _Plan[StoredItem | None]:
        records = yield _Call(
            "retrieve",
            {
                "collection_name": self.collections["items"],
                "ids": [point_id("item", item_id)],
                "with_payload": True,
                "with_vectors": True,
            },
        )
        if not records:
            return None
        vectors = {name: list(v) for name, v in (records[0].vector or {}).items()}
        return StoredItem(item_id=item_id, vectors=vectors, payload=dict(records[0].payload or {}))

    def _count_plan(self, collection: CollectionKind) -> _Plan[int]:
        name = self.collections[collection]
        result = yield _Call("count", {"collection_name": name, "exact": True})
        return int(result.count)


def _check_query(k: int, using: str) -> None:
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")
    if using not in ITEM_VECTORS:
        raise ValueError(f"using must be one of {ITEM_VECTORS}, got {using!r}")


def _local_client(path: Path | None) -> QdrantClient:
    if path is None:
        return QdrantClient(location=":memory:")
    path.mkdir(parents=True, exist_ok=True)
    # The async store calls it from its worker thread; every call goes through that one
    # thread, so sqlite's same-thread check only gets in the way.
    return QdrantClient(path=str(path), force_disable_check_same_thread=True)


class QdrantStore(_StoreBase):
    """Blocking store for the CLI and tests.

    ``url`` (non-empty) selects a Qdrant server and ``api_key`` authenticates to it; otherwise
    local mode at ``path``, or in memory when ``path`` is None (``api_key`` is then unused, so
    one settings file can switch modes by its URL alone).
    """

    def __init__(
        self,
        *,
        dim: int,
        url: str | None = None,
        api_key: str | None = None,
        path: Path | None = None,
        collection_prefix: str = "",
    ) -> None:
        super().__init__(dim=dim, collection_prefix=collection_prefix)
        self.client = QdrantClient(url=url, api_key=api_key) if url else _local_client(path)

    @classmethod
    def from_client(cls, client: QdrantClient, *, dim: int, collection_prefix: str = "") -> Self:
        """Wrap an existing client (custom timeouts, gRPC, or a test double around one)."""
        store = cls.__new__(cls)
        _StoreBase.__init__(store, dim=dim, collection_prefix=collection_prefix)
        store.client = client
        return store

    def _run(self, plan: _Plan[_T]) -> _T:
        return _drive_sync(plan, self.client)

    def ensure_collections(self) -> None:
        """Create ``items`` and ``sessions`` if absent; raise CollectionSchemaError on mismatch."""
        self._run(self._ensure_collections_plan())

    def upsert_items(self, records: Iterable[ItemRecord]) -> int:
        return self._run(self._upsert_items_plan(records))

    def upsert_sessions(self, records: Iterable[SessionRecord]) -> int:
        return self._run(self._upsert_sessions_plan(records))

    def delete_items(self, item_ids: Sequence[str]) -> None:
        """Remove item points (idempotent: an absent id is not an error)."""
        self._run(self._delete_items_plan(item_ids))

    def similar(
        self,
        item_id: str,
        k: int = 10,
        filter: Mapping[str, str] | None = None,
        using: str = "unified",
    ) -> list[ItemHit]:
        """Nearest items to ``item_id`` (never itself); [] when it lacks the ``using`` vector."""
        return self._run(self._similar_plan(item_id, k, filter, using))

    def recommend(
        self,
        vector: Sequence[float] | np.ndarray,
        k: int = 10,
        exclude_ids: Iterable[str] = (),
        filter: Mapping[str, str] | None = None,
        using: str = "unified",
    ) -> list[ItemHit]:
        """Items with the highest score against ``vector`` (e.g. a live session vector)."""
        return self._run(self._recommend_plan(vector, k, exclude_ids, filter, using))

    def get_item(self, item_id: str) -> StoredItem | None:
        return self._run(self._get_item_plan(item_id))

    def count(self, collection: CollectionKind = "items") -> int:
        return self._run(self._count_plan(collection))

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncQdrantStore(_StoreBase):
    """Event-loop store for Faust agents and aiohttp handlers; same arguments as QdrantStore.

    Server mode uses ``AsyncQdrantClient``; local mode runs a blocking client on one worker
    thread (see the module docstring for why).
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
    ) -> None:
        super().__init__(dim=dim, collection_prefix=collection_prefix)
        self._invoker: _Invoker = (
            _AsyncClientInvoker(AsyncQdrantClient(url=url, api_key=api_key, https=https))
            if url
            else _ThreadInvoker(_local_client(path))
        )

    @classmethod
    def from_client(
        cls, client: AsyncQdrantClient | QdrantClient, *, dim: int, collection_prefix: str = ""
    ) -> Self:
        """Wrap an existing client; a blocking one is run on the store's worker thread."""
        store = cls.__new__(cls)
        _StoreBase.__init__(store, dim=dim, collection_prefix=collection_prefix)
        store._invoker = (
            _ThreadInvoker(client) if isinstance(client, QdrantClient) else _AsyncClientInvoker(client)
        )
        return store

    async def _run(self, plan: _Plan[_T]) -> _T:
        return await _drive_async(plan, self._invoker)

    async def upsert_points(self, collection: CollectionKind, points: Sequence[PointRow]) -> int:
        """Write points already built (and so validated) by build_item_points or
        build_session_points, e.g. off the event loop by the learner."""
        return await self._run(_upsert_plan(self.collections[collection], points))

    async def ensure_collections(self) -> None:
        """Create ``items`` and ``sessions`` if absent; raise CollectionSchemaError on mismatch."""
        await self._run(self._ensure_collections_plan())

    async def upsert_items(self, records: Iterable[ItemRecord]) -> int:
        return await self._run(self._upsert_items_plan(records))

    async def upsert_sessions(self, records: Iterable[SessionRecord]) -> int:
        return await self._run(self._upsert_sessions_plan(records))

    async def similar(
        self,
        item_id: str,
        k: int = 10,
        filter: Mapping[str, str] | None = None,
        using: str = "unified",
    ) -> list[ItemHit]:
        """Nearest items to ``item_id`` (never itself); [] when it lacks the ``using`` vector."""
        return await self._run(self._similar_plan(item_id, k, filter, using))

    async def recommend(
        self,
        vector: Sequence[float] | np.ndarray,
        k: int = 10,
        exclude_ids: Iterable[str] = (),
        filter: Mapping[str, str] | None = None,
        using: str = "unified",
    ) -> list[ItemHit]:
        """Items with the highest score against ``vector`` (e.g. a live session vector)."""
        return await self._run(self._recommend_plan(vector, k, exclude_ids, filter, using))

    async def delete_items(self, item_ids: Sequence[str]) -> None:
        """Remove item points (idempotent: an absent id is not an error)."""
        await self._run(self._delete_items_plan(item_ids))

    async def get_item(self, item_id: str) -> StoredItem | None:
        return await self._run(self._get_item_plan(item_id))

    async def count(self, collection: CollectionKind = "items") -> int:
        return await self._run(self._count_plan(collection))

    async def close(self) -> None:
        await self._invoker.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


# --- batching writer ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Pending:
    seq: int  # the oldest add() folded into this entry: flush() waits until it is written
    since: float  # loop time of that add(): the time-based flush deadline runs from here
    point: PointRow


class UpsertBuffer:
    """Batches upserts into one collection (items, or live sessions): coalesces, flushes on
    size or age, retries, applies back-pressure.

    * ``add()`` keeps only the latest point per key (item or session id: the last one added
      wins); a coalesced entry keeps its original age, so a hot key cannot postpone its flush.
    * A batch is written when ``max_batch`` items are pending or the oldest pending record is
      ``max_delay_ms`` old. Batches are written one at a time, on purpose: two batches in
      flight could land two versions of one item in the wrong order.
    * A failed upsert is retried with full-jitter exponential backoff. After ``max_attempts``
      the batch counts as one failure and goes back into the buffer (behind any newer version
      of the same items) and is tried again: nothing is dropped.
    * At most ``max_pending`` items wait (plus one batch in flight); when full, ``add()``
      awaits, which stalls the calling agent and so the Kafka consumer: back-pressure.

    Counters for the metrics module: ``upserted_points``, ``coalesced``, ``retries`` (failed
    calls retried within a batch's attempts), ``failures`` (batches that used up
    ``max_attempts``), ``last_error``, and the ``pending`` property.
    """

    def __init__(
        self,
        store: AsyncQdrantStore,
        *,
        collection: CollectionKind = "items",
        max_batch: int = 256,
        max_delay_ms: float = 500.0,
        max_pending: int = 10_000,
        max_attempts: int = 6,
        backoff_base_s: float = 0.1,
        backoff_cap_s: float = 10.0,
        rng: random.Random | None = None,
    ) -> None:
        if min(max_batch, max_pending, max_attempts) < 1:
            raise ValueError("max_batch, max_pending and max_attempts must be positive")
        if max_delay_ms < 0 or backoff_base_s < 0 or backoff_cap_s < 0:
            raise ValueError("delays must not be negative")
        self.store = store
        self.collection = collection
        self.max_batch = max_batch
        self.max_delay_s = max_delay_ms / 1000.0
        self.max_pending = max_pending
        # A full buffer is due at once even when max_pending < max_batch.
        self._batch_trigger = min(max_batch, max_pending)
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self._rng = rng or random.Random()

        self.upserted_points = 0
        # Called with the item ids of every batch Qdrant accepted (the learner's freshness clock).
        self.on_written: Callable[[list[str]], None] | None = None
        self.coalesced = 0
        self.retries = 0
        self.failures = 0
        self.last_error: Exception | None = None

        self._pending: dict[str, _Pending] = {}  # insertion order = age order
        self._inflight: dict[str, _Pending] = {}
        self._seq = 0
        self._flush_waiters = 0
        self._urgent = False  # write what is pending without waiting for its age (add_points now=True)
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()  # something changed that may make a batch due
        self._space = asyncio.Event()  # the flusher took a batch out of _pending
        self._progress = asyncio.Event()  # a batch was written or re-queued

    @property
    def pending(self) -> int:
        """Items accepted but not yet written (waiting or in flight)."""
        return len(self._pending) + len(self._inflight)

    async def add(self, record: ItemRecord) -> None:
        """Accept an item record; awaits while the buffer is full. Raises ValueError on a bad
        record."""
        # Validate now, so a bad record fails its producer instead of poisoning a batch.
        point = _all_or_error(build_item_points([record], self.store.dim))[0]
        await self.add_points([(record.item_id, point)])

    async def add_points(self, points: Sequence[tuple[str, PointRow]], now: bool = False) -> None:
        """Accept (key, point) pairs already built by :func:`build_item_points` or
        :func:`build_session_points` (e.g. on the learner thread); awaits while the buffer is
        full. ``now``: these points are a complete batch of their own (a learner round), so
        they are written without waiting for ``max_delay_ms``; points added while a write is in
        flight still join the next batch."""
        self._check_open()
        loop = asyncio.get_running_loop()
        for item_id, point in points:
            while len(self._pending) >= self.max_pending and item_id not in self._pending:
                self._wake.set()
                self._space.clear()
                await self._space.wait()
                self._check_open()
            self._seq += 1
            old = self._pending.get(item_id)
            if old is None:
                self._pending[item_id] = _Pending(self._seq, loop.time(), point)
            else:
                self.coalesced += 1
                self._pending[item_id] = replace(old, point=point)
            if self._task is None:
                self._task = loop.create_task(self._run(), name=f"onevec-{self.collection}-upsert-buffer")
            if len(self._pending) == 1 or len(self._pending) >= self._batch_trigger:
                self._wake.set()  # start the age timer, or the batch is full
        if now and points:
            self._urgent = True
            self._wake.set()

    async def flush(self) -> None:
        """Write everything added before this call (retrying as configured) and return."""
        target = self._seq
        self._flush_waiters += 1
        self._wake.set()
        try:
            while any(e.seq <= target for e in self._entries()):
                self._check_alive()
                self._progress.clear()
                await self._progress.wait()
        finally:
            self._flush_waiters -= 1

    async def close(self, timeout: float | None = None) -> None:
        """Drain and stop; TimeoutError after ``timeout`` s says how many items were not written.

        Without a timeout it keeps retrying for as long as Qdrant keeps failing: nothing is
        dropped silently.

        Idempotent: once the flusher has stopped (drained, or stopped by a timeout that was
        already reported), close() returns at once.
        """
        self._closing = True
        self._wake.set()
        self._space.set()  # adders blocked on a full buffer must see the close
        if self._task is None or self._task.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)
        except TimeoutError:
            unwritten = self.pending
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            raise TimeoutError(
                f"UpsertBuffer.close: {unwritten} items not written after {timeout}s "
                f"(last error: {self.last_error!r})"
            ) from None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _entries(self) -> Iterable[_Pending]:
        return itertools.chain(self._pending.values(), self._inflight.values())

    def _check_alive(self) -> None:
        if self._task is not None and self._task.done():
            # Only a bug or a timed-out close() ends the flusher with work left.
            cause = None if self._task.cancelled() else self._task.exception()
            raise RuntimeError("UpsertBuffer flusher is not running") from cause

    def _check_open(self) -> None:
        if self._closing:
            raise RuntimeError("UpsertBuffer is closed")
        self._check_alive()

    def _due_in(self) -> float:
        """Seconds until the next batch is due (inf: nothing pending)."""
        if not self._pending:
            return math.inf
        if self._closing or self._flush_waiters or self._urgent or len(self._pending) >= self._batch_trigger:
            return 0.0
        oldest = next(iter(self._pending.values()))
        return oldest.since + self.max_delay_s - asyncio.get_running_loop().time()

    async def _run(self) -> None:
        try:
            while self._pending or not self._closing:
                wait = self._due_in()
                if wait > 0:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(None if math.isinf(wait) else wait):
                            await self._wake.wait()
                    continue
                keys = list(itertools.islice(self._pending, self.max_batch))
                batch = {key: self._pending.pop(key) for key in keys}
                self._urgent = self._urgent and bool(self._pending)
                self._space.set()
                await self._write(batch)
                self._progress.set()
        finally:
            # Wake every waiter so none hangs on a flusher that is gone.
            self._space.set()
            self._progress.set()

    async def _write(self, batch: dict[str, _Pending]) -> None:
        points = [entry.point for entry in batch.values()]
        self._inflight = batch
        try:
            for attempt in range(1, self.max_attempts + 1):
                started = time.perf_counter()
                try:
                    await self.store.upsert_points(self.collection, points)
                except Exception as exc:
                    metrics.UPSERT_ERRORS.labels(collection=self.collection).inc()
                    # Records were validated in add(), so this is the server or the network
                    # (timeouts, 5xx, restarts): worth retrying.
                    self.last_error = exc
                    if attempt < self.max_attempts:
                        self.retries += 1
                        await asyncio.sleep(self._backoff(attempt))
                else:
                    metrics.UPSERT_SECONDS.labels(collection=self.collection).observe(
                        time.perf_counter() - started
                    )
                    self.upserted_points += len(points)
                    if self.on_written is not None:
                        self.on_written(list(batch))
                    return
            self.failures += 1
            log.warning(
                "Qdrant upsert of %d %s failed %d times (%r); re-queued",
                len(points),
                self.collection,
                self.max_attempts,
                self.last_error,
            )
            self._requeue(batch)
        finally:
            self._inflight = {}
        # Only after a re-queue: pause before the next round instead of hammering a server
        # that has just failed max_attempts times.
        await asyncio.sleep(self._backoff(self.max_attempts))

    def _requeue(self, batch: dict[str, _Pending]) -> None:
        merged: dict[str, _Pending] = {}
        for key, failed in batch.items():
            newer = self._pending.pop(key, None)
            if newer is None:
                merged[key] = failed
            else:
                # Keep the newer vectors but the older seq/age, so flush() and the age
                # deadline still cover the write that failed.
                self.coalesced += 1
                merged[key] = replace(failed, point=newer.point)
        merged.update(self._pending)  # failed entries are the oldest: they go first
        self._pending = merged

    def _backoff(self, attempt: int) -> float:
        return backoff_delay(attempt, self.backoff_base_s, self.backoff_cap_s, self._rng)
