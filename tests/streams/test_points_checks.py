"""Point ids and payload checks built for speed (a first publish builds a million points) must
give what the plain library calls give: ``str(uuid.uuid5(...))`` for ids, ``json.dumps``'s verdict
for payloads."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pytest

from onevec.streams.qdrant import ItemRecord, build_item_points, point_id

DIM = 8
NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "onevec:qdrant-point-id")


@pytest.mark.parametrize("key", ["sku-1", "", "42", "Größe=XL", "名前", "a" * 300, "x:y:z"])
@pytest.mark.parametrize("kind", ["item", "session", "user"])
def test_point_ids_are_the_uuid5_of_kind_and_key(kind: str, key: str) -> None:
    assert point_id(kind, key) == str(uuid.uuid5(NAMESPACE, f"{kind}:{key}"))  # type: ignore[arg-type]


def _circular() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


def _nested(depth: int) -> list[Any]:
    value: list[Any] = ["leaf"]
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("attributes", "plain"),
    [
        ({"genre": ["Comedy", "Drama"], "year": 1995, "price": 9.5, "new": True, "note": None}, True),
        ({"sizes": ("S", "M"), "dims": {"w": 1, "h": [2.0, 3]}}, True),
        ({1: "int key", 2.5: "float key"}, True),  # json.dumps converts such keys
        ({"price": np.float64(9.5)}, True),  # a float subclass: json.dumps takes it
        ({"deep": _nested(40)}, True),  # deeper than the fast check looks: json.dumps decides
        ({"price": float("nan")}, False),
        ({"price": [1.0, float("inf")]}, False),
        ({"year": np.int64(1995)}, False),
        ({"tags": {"a", "b"}}, False),
        ({"when": {"at": object()}}, False),
        ({(1, 2): "tuple key"}, False),
        ({"loop": _circular()}, False),
    ],
)
def test_attributes_are_accepted_exactly_when_json_takes_them(
    attributes: dict[Any, Any], plain: bool
) -> None:
    record = ItemRecord("i", {"behaviour": np.ones(DIM, dtype=np.float32)}, attributes)
    built = build_item_points([record], DIM)
    assert (len(built.points), len(built.rejected)) == ((1, 0) if plain else (0, 1))
    if not plain:
        assert "not plain JSON" in built.rejected[0][1]


def test_bad_vectors_are_rejected_alone_among_many() -> None:
    """SYNTHETIC: 1,000 unit vectors, a few of them broken: exactly those are rejected, each with
    its reason, and every other point keeps its vector as float32 values."""
    rng = np.random.default_rng(0)
    unified = rng.normal(size=(1000, DIM)).astype(np.float32)
    unified /= np.linalg.norm(unified, axis=1, keepdims=True)
    unified[7, 3] = np.nan
    unified[500] *= 2
    vectors: list[dict[str, Any]] = [{"unified": row} for row in unified]
    vectors[900] = {"unified": unified[900][:-1]}
    records = [ItemRecord(f"i{n}", found) for n, found in enumerate(vectors)]
    built = build_item_points(records, DIM)
    reasons = dict(built.rejected)
    assert set(reasons) == {"i7", "i500", "i900"}
    assert "NaN" in reasons["i7"] and "norm 2.0000" in reasons["i500"] and "shape" in reasons["i900"]
    kept = {key: point for key, point in built.points}
    assert len(kept) == 997 and kept["i3"].id == point_id("item", "i3")
    assert kept["i3"].vector["unified"] == unified[3].tolist()
