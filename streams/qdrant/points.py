"""What onevec writes to Qdrant: the collections' vectors, the records, and their validated points.

Three collections (names optionally prefixed, e.g. one prefix per test or per model family):

* ``items``: one point per item with the named vectors ``unified``, ``behaviour``, ``text`` and
  ``image`` (each ``dim`` wide; a point holds only the sources the item really has) and the
  payload ``{item_id, attributes, model_version, updated_at, event_count}``.
* ``sessions``: one point per live session with the vector ``session`` and the payload
  ``{session_id, user_id, updated_at, items}``.
* ``users``: one point per user the learner's history holds, with the vector ``user`` (the
  session encoder over the user's newest items, so it queries item vectors the way a session
  vector does) and the payload ``{user_id, session_id, updated_at, items, counts, ago}``: the
  user's latest session and their history as of it, as parallel lists (the items they had, each
  one's decayed count, and how many sessions ago they last had it).

Point ids are UUID5 of the item/session/user id (:func:`point_id`), so every write is an idempotent
overwrite: Kafka delivery is at-least-once and a redelivered record rewrites the same point.

Everything here is pure: no client, no I/O.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np
from qdrant_client import models

from onevec.models.online.user_history import Had, Recalled

__all__ = [
    "COLLECTION_VECTORS",
    "ITEM_VECTORS",
    "SESSION_VECTOR",
    "USER_VECTOR",
    "VECTOR_DISTANCES",
    "BuiltPoints",
    "CollectionKind",
    "ItemHit",
    "ItemRecord",
    "PointRow",
    "SessionRecord",
    "StoredItem",
    "StoredSession",
    "StoredUser",
    "UserRecord",
    "build_item_points",
    "item_payload",
    "build_session_points",
    "build_user_points",
    "collection_vectors",
    "payload_filter",
    "point_id",
    "stored_session",
    "stored_user",
]

CollectionKind = Literal["items", "sessions", "users"]

ITEM_VECTORS: tuple[str, ...] = ("unified", "behaviour", "text", "image")
SESSION_VECTOR = "session"
USER_VECTOR = "user"
COLLECTION_VECTORS: Mapping[CollectionKind, tuple[str, ...]] = {
    "items": ITEM_VECTORS,
    "sessions": (SESSION_VECTOR,),
    "users": (USER_VECTOR,),
}

# Decode the way each vector was trained (WWW'23 "homogeneous configuration"):
# * behaviour (BPR-MF / skip-gram) and session vectors are trained as inner products with item
#   vectors, and their norm carries signal (popularity, confidence): Dot keeps it. Cosine
#   would make Qdrant renormalise the vectors on write and change the ranking.
# * unified is the fused vector, L2-normalised by the fuser, so Dot == cosine on it; Dot keeps
#   the stored vector identical to what the model produced (drift / Procrustes read it back),
#   and build_item_points() rejects a unified vector that is not unit length so the two cannot
#   silently diverge. Session and user vectors query the behaviour space by inner product.
# * text (denoising autoencoder codes) and image (Siamese/triplet on normalised embeddings)
#   compare directions only: Cosine, whatever norm the encoder happens to emit.
VECTOR_DISTANCES: Mapping[str, models.Distance] = {
    "unified": models.Distance.DOT,
    "behaviour": models.Distance.DOT,
    "text": models.Distance.COSINE,
    "image": models.Distance.COSINE,
    SESSION_VECTOR: models.Distance.DOT,
    USER_VECTOR: models.Distance.DOT,
}

_UNIT_NORM_TOLERANCE = 1e-3
# Fixed namespace: changing it would orphan every stored point.
_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "onevec:qdrant-point-id").bytes
_INT_LITERAL = re.compile(r"-?\d{1,18}")  # fits Qdrant's int64 payload integers
_ATTRIBUTE_NAME = re.compile(r"[^.\[\]\s]+")  # '.' and '[]' would address a different path

VectorValues = Sequence[float] | np.ndarray


def collection_vectors(kind: CollectionKind, dim: int) -> dict[str, models.VectorParams]:
    """The named vectors of a collection, ``dim`` wide, each with its distance."""
    return {
        name: models.VectorParams(size=dim, distance=VECTOR_DISTANCES[name])
        for name in COLLECTION_VECTORS[kind]
    }


@dataclass(frozen=True, slots=True)
class ItemRecord:
    """The complete state of one item point.

    ``vectors`` holds only the sources the item really has (a new item may have text and
    image but no behaviour yet). An upsert replaces the whole point, so a source missing here
    is removed from the point: the single writer of an item always sends everything it has.
    """

    item_id: str
    vectors: Mapping[str, VectorValues]
    attributes: Mapping[str, Any] = field(default_factory=dict)
    model_version: int = 0
    updated_at: float = 0.0
    event_count: int = 0


@dataclass(frozen=True, slots=True)
class SessionRecord:
    session_id: str
    vector: VectorValues
    user_id: str | None = None
    updated_at: float = 0.0
    items: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class UserRecord:
    """One user's point: their vector and their history as of ``session_id``, their latest
    session (``UserHistory.recall_arrays``: the items they had, each one's decayed count and the
    sessions since they last had it)."""

    user_id: str
    vector: VectorValues
    session_id: str | None = None
    updated_at: float = 0.0
    history: Recalled = field(default_factory=lambda: Recalled.of({}))


class PointRow(NamedTuple):
    """A validated point ready to be written: what :func:`build_item_points` and
    :func:`build_session_points` make. Lighter than a pydantic ``PointStruct`` (same field
    names); the store writes rows in column form (``models.Batch``)."""

    id: str
    vector: dict[str, list[float]]
    payload: dict[str, Any]


class BuiltPoints(NamedTuple):
    """The outcome of validating records: their points, and the records rejected with a reason."""

    points: list[tuple[str, PointRow]]  # (item or session id, point)
    rejected: list[tuple[str, str]]  # (item or session id, reason)

    def all_or_error(self) -> list[PointRow]:
        """Every point, or ValueError naming the first rejected record: nothing is written
        when one record is bad."""
        if self.rejected:
            key, reason = self.rejected[0]
            raise ValueError(f"{key!r}: {reason}")
        return [point for _, point in self.points]


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


@dataclass(frozen=True, slots=True)
class StoredSession:
    """A live session as Qdrant holds it: its vector, its user and its items, oldest first."""

    session_id: str
    vector: list[float]
    user_id: str | None
    items: list[str]


@dataclass(frozen=True, slots=True)
class StoredUser:
    """A user as Qdrant holds them: their vector, latest session and history as of it."""

    user_id: str
    vector: list[float]
    session_id: str | None
    updated_at: float
    history: dict[str, Had]


def point_id(kind: Literal["item", "session", "user"], key: str) -> str:
    """Deterministic point id, so a redelivered record overwrites instead of duplicating: the
    UUID5 of ``kind:key`` in onevec's namespace, the very string ``str(uuid.uuid5(...))`` gives,
    built from its SHA-1 without a ``UUID`` object (a third of the cost; a first publish of a
    million items makes a million ids, and a cache of them would not fit a sweep either)."""
    digest = bytearray(hashlib.sha1(_ID_NAMESPACE + f"{kind}:{key}".encode(), usedforsecurity=False).digest())
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # the RFC 4122 variant
    h = digest[:16].hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _plain_json(value: Any, depth: int = 0) -> bool:
    """True when ``value`` is built of str, int, bool, None, finite floats, lists, tuples and
    dicts with str keys only, which ``json.dumps`` always takes; False means "not sure" (other
    types, deep nesting). Read without encoding: ``json.dumps`` of each item's attributes was
    most of a first publish (27 of 74 s at 1M items, profiled)."""
    kind = type(value)
    if kind is dict:
        return all(type(name) is str for name in value) and _plain_elements(value.values(), depth)
    if kind is list or kind is tuple:
        return _plain_elements(value, depth)
    return (
        kind is str
        or kind is int
        or kind is bool
        or value is None
        or (kind is float and math.isfinite(value))
    )


def _plain_elements(elements: Iterable[Any], depth: int) -> bool:
    # Strings and ints (most attribute values) are taken in this loop, without a call each.
    for element in elements:
        kind = type(element)
        if not (kind is str or kind is int) and (
            depth >= _PLAIN_DEPTH or not _plain_json(element, depth + 1)
        ):
            return False
    return True


_PLAIN_DEPTH = 16  # deeper payloads (or a list holding itself) are left to json.dumps


def _check_attributes(key: str, attributes: Mapping[str, Any]) -> None:
    # A server only takes JSON (numpy scalars and NaN are not). Catching it here, before the
    # record is accepted, keeps a bad payload from failing its whole batch on every retry.
    if _plain_json(attributes):
        return
    try:
        json.dumps({"attributes": attributes}, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{key!r}: payload is not plain JSON: {exc}") from exc


def _checked_rows(
    name: str, keys: Sequence[str], arrays: Sequence[VectorValues], dim: int, unit: bool = False
) -> tuple[list[list[float] | None], dict[str, str]]:
    """Each vector as a float list, checked on one stacked matrix (shape, finite, unit norm
    when ``unit``); None and a reason where a vector is bad."""
    values = [np.asarray(a, dtype=np.float32) for a in arrays]  # Qdrant stores float32 anyway
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
    off_unit = (
        finite & (np.abs(norms - 1.0) > _UNIT_NORM_TOLERANCE) if unit else np.zeros(len(good), dtype=bool)
    )
    # Checked on the matrix; only the bad rows are visited one by one.
    for index in np.flatnonzero(~finite | off_unit).tolist():
        if not finite[index]:
            # One NaN would make every search that touches this point meaningless.
            reason = f"vector {name!r} contains NaN or infinity"
        else:
            reason = (
                f"vector {name!r} has norm {norms[index]:.4f}; it must be L2-normalised (the "
                "collection uses Dot, which equals cosine only on unit vectors)"
            )
        rejected[keys[good[index]]] = reason
    for index, row, ok in zip(good, matrix.tolist(), (finite & ~off_unit).tolist(), strict=True):
        if ok:
            rows[index] = row
    return rows, rejected


def build_item_points(records: Sequence[ItemRecord], dim: int) -> BuiltPoints:
    """Validate item records and turn them into points. The vector checks run on stacked
    matrices; a bad record is rejected alone, the others still get their points."""
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
        updated_at = float(record.updated_at)
        try:
            _check_attributes(record.item_id, record.attributes)
            if not math.isfinite(updated_at):
                raise ValueError(f"{record.item_id!r}: updated_at is not finite")
        except ValueError as error:
            rejected[record.item_id] = str(error)
            continue
        points.append(
            (record.item_id, PointRow(point_id("item", record.item_id), vectors, item_payload(record)))
        )
    return BuiltPoints(points, list(rejected.items()))


def item_payload(record: ItemRecord) -> dict[str, Any]:
    """An item point's payload (build_item_points checks the record first)."""
    return {
        "item_id": record.item_id,
        "attributes": dict(record.attributes),
        "model_version": int(record.model_version),
        "updated_at": float(record.updated_at),
        "event_count": int(record.event_count),
    }


def build_session_points(records: Sequence[SessionRecord], dim: int) -> BuiltPoints:
    """Validate session records and turn them into points."""
    payloads = [
        {
            "session_id": r.session_id,
            "user_id": r.user_id,
            "updated_at": float(r.updated_at),
            "items": [str(item) for item in r.items],
        }
        for r in records
    ]
    keys = [r.session_id for r in records]
    return _single_vector_points("session", SESSION_VECTOR, keys, [r.vector for r in records], payloads, dim)


def build_user_points(records: Sequence[UserRecord], dim: int) -> BuiltPoints:
    """Validate user records and turn them into points (a user's history as parallel lists)."""
    payloads = [
        {
            "user_id": r.user_id,
            "session_id": r.session_id,
            "updated_at": float(r.updated_at),
            "items": [str(item) for item in r.history.items],
            "counts": r.history.counts.tolist(),
            "ago": r.history.ago.tolist(),
        }
        for r in records
    ]
    keys = [r.user_id for r in records]
    return _single_vector_points("user", USER_VECTOR, keys, [r.vector for r in records], payloads, dim)


def _single_vector_points(
    kind: Literal["session", "user"],
    name: str,
    keys: Sequence[str],
    vectors: Sequence[VectorValues],
    payloads: Sequence[dict[str, Any]],
    dim: int,
) -> BuiltPoints:
    """Points of one named vector each; a record whose vector or numbers are not finite is
    rejected alone (Qdrant takes no NaN, and one would fail its whole batch on every retry)."""
    rows, rejected = _checked_rows(name, keys, vectors, dim)
    points = []
    for key, row, payload in zip(keys, rows, payloads, strict=True):
        if row is None:
            continue
        numbers = [payload["updated_at"], *payload.get("counts", ())]
        if not all(math.isfinite(number) for number in numbers):
            rejected[key] = "updated_at or a history count is not finite"
            continue
        points.append((key, PointRow(point_id(kind, key), {name: row}, payload)))
    return BuiltPoints(points, list(rejected.items()))


def stored_session(session_id: str, vector: list[float], payload: Mapping[str, Any]) -> StoredSession:
    """A session point read back (see :func:`build_session_points`)."""
    user_id = payload.get("user_id")
    items = [str(item) for item in payload.get("items", [])]
    return StoredSession(session_id, vector, None if user_id is None else str(user_id), items)


def stored_user(user_id: str, vector: list[float], payload: Mapping[str, Any]) -> StoredUser:
    """A user point read back (see :func:`build_user_points`)."""
    history = {
        str(item): Had(float(count), int(ago))
        for item, count, ago in zip(payload["items"], payload["counts"], payload["ago"], strict=True)
    }
    session = payload.get("session_id")
    updated_at = float(payload["updated_at"])
    return StoredUser(user_id, vector, None if session is None else str(session), updated_at, history)


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
