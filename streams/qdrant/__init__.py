"""The Qdrant side of a worker: item and session points (points), the store (store), the
batching upsert buffer (buffer)."""

from onevec.streams.qdrant.buffer import UpsertBuffer
from onevec.streams.qdrant.points import (
    COLLECTION_VECTORS,
    ITEM_VECTORS,
    SESSION_VECTOR,
    VECTOR_DISTANCES,
    BuiltPoints,
    CollectionKind,
    ItemHit,
    ItemRecord,
    PointRow,
    SessionRecord,
    StoredItem,
    build_item_points,
    build_session_points,
    collection_vectors,
    payload_filter,
    point_id,
)
from onevec.streams.qdrant.store import CollectionSchemaError, ItemNotFound, QdrantStore

__all__ = [
    "COLLECTION_VECTORS",
    "ITEM_VECTORS",
    "SESSION_VECTOR",
    "VECTOR_DISTANCES",
    "BuiltPoints",
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
    "build_item_points",
    "build_session_points",
    "collection_vectors",
    "payload_filter",
    "point_id",
]
