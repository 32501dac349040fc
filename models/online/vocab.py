"""A growing string -> row map: no fixed vocabulary, no hashing, so no collisions."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["Vocabulary"]


class Vocabulary:
    """Assigns rows 0, 1, 2, ... to keys in order of first appearance.

    Rows are never reused or reordered, so a row index stays valid for the life of a model
    and a checkpoint restores exactly the same map.
    """

    def __init__(self) -> None:
        self._keys: list[str] = []
        self._rows: dict[str, int] = {}
        self.generation = 0  # counts loads: rows only ever grow between two of them

    def index(self, key: str) -> int:
        """The row of ``key``, adding it if new. Keys are strings: any other id (an int item
        id of a user's own records) is the row of its ``str``."""
        if not isinstance(key, str):
            key = str(key)
        row = self._rows.get(key)
        if row is None:
            row = len(self._keys)
            self._rows[key] = row
            self._keys.append(key)
        return row

    def index_many(self, keys: list[str]) -> list[int]:
        """The rows of ``keys``, adding the new ones in order of first appearance (one pass of
        C-level dict lookups; a method call per key was most of a batch's preparation)."""
        try:
            rows = list(map(self._rows.get, keys))
        except TypeError:  # an unhashable id (e.g. a list inside a foreign record): its str
            keys = [key if isinstance(key, str) else str(key) for key in keys]
            rows = list(map(self._rows.get, keys))
        if None in rows:
            rows = [row if row is not None else self.index(key) for key, row in zip(keys, rows, strict=True)]
        return rows  # type: ignore[return-value]

    def get(self, key: str) -> int | None:
        """The row of ``key``, or None if it was never added."""
        return self._rows.get(key)

    @property
    def lookup(self) -> Callable[[str], int | None]:
        """:meth:`get` as the key -> row map's own ``dict.get``: one C call per key where
        :meth:`get` is a Python call, for ``map`` over many keys (keys must be str)."""
        return self._rows.get

    def rows(self, keys: Sequence[str]) -> np.ndarray:
        """The rows of ``keys`` as an int64 array, -1 for a key never added (nothing is added)."""
        found = map(self._rows.get, keys)
        return np.array([-1 if row is None else row for row in found], dtype=np.int64)

    def key(self, row: int) -> str:
        return self._keys[row]

    def keys_at(self, rows: Sequence[int]) -> list[str]:
        """The keys of ``rows``, in that order (no method call per row)."""
        keys = self._keys
        return [keys[row] for row in rows]

    def slice(self, start: int, stop: int) -> list[str]:
        """The keys of rows ``[start, stop)``."""
        return self._keys[start:stop]

    def keys(self) -> list[str]:
        """All keys, in row order (a copy)."""
        return list(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def state_dict(self) -> dict[str, Any]:
        # The row order is the whole state; a plain list is JSON-friendly.
        return {"keys": list(self._keys)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        keys = list(state["keys"])
        if len(set(keys)) != len(keys):
            raise ValueError("vocabulary state has duplicate keys")
        self._keys = keys
        self._rows = {key: row for row, key in enumerate(keys)}
        self.generation += 1
