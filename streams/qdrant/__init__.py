"""The Qdrant side of a worker: item and session points, the store, the batching upsert buffer."""

from onevec.streams.qdrant.store import (
    ITEM_VECTORS,
    SESSION_VECTOR,
    VECTOR_DISTANCES,
    CollectionKind,
    CollectionSchemaError,
    ItemHit,
    ItemNotFound,
    ItemRecord,
    PointRow,
    SessionRecord,
    StoredItem,
    UpsertBuffer,
    backoff_delay,
    build_item_points,
    build_session_points,
    payload_filter,
    point_id,
)
from onevec.streams.qdrant.store import AsyncQdrantStore as QdrantStore

__all__ = [
    "ITEM_VECTORS",
    "SESSION_VECTOR",
    "VECTOR_DISTANCES",
    "CollectionKind",
    "CollectionSchemaError",
    "ItemHit",
    "ItemNotFound",
    "ItemRecord",
    "PointRow",
    "QdrantStore",
    "SessionRecord",
    "StoredItem",
    "UpsertBuffer",
    "backoff_delay",
    "build_item_points",
    "build_session_points",
    "payload_filter",
    "point_id",
]
