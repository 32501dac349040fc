"""The changelogged Faust table of session states, as the store of a :class:`SessionBook`.

Faust changelogs a table key on every ``table[key] = value``, which must happen inside the
per-event iteration of a stream (Faust takes the partition from the current event). The
``sessionize`` agent works on micro-batches instead, so this store reads and writes the
table's data directly and remembers which keys changed; :meth:`flush` then sends one
changelog record per changed key (its final state, or a tombstone), to the partition the
state belongs to. A session touched by 20 events of a batch costs one changelog record, not 20.

Crash safety is Faust's: the changelog records go through Faust's producer, which is flushed
before any input offset is committed, and recovery rebuilds the table from the changelog.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import Any

from faust.types import TableT

__all__ = ["ChangelogBatchStore"]


class ChangelogBatchStore(MutableMapping[str, dict[str, Any]]):
    """A session table as a plain mapping; changes reach the changelog on :meth:`flush`.

    Every state :class:`SessionBook` stores (open session or tombstone) carries its
    ``partition``, which is where its changelog record goes.
    """

    def __init__(self, table: TableT) -> None:
        self.table = table
        self._dirty: dict[str, int] = {}  # key -> partition of its changelog record

    @property
    def _data(self) -> MutableMapping[str, Any]:
        return self.table.data

    def __getitem__(self, key: str) -> dict[str, Any]:
        return self._data[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key, default)

    def __setitem__(self, key: str, value: dict[str, Any]) -> None:
        self._data[key] = value
        self._dirty[key] = int(value["partition"])

    def __delitem__(self, key: str) -> None:
        partition = int(self._data[key]["partition"])
        del self._data[key]
        self._dirty[key] = partition

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    @property
    def pending(self) -> int:
        return len(self._dirty)

    def flush(self) -> int:
        """Queue one changelog record per key changed since the last flush; returns how many.
        (Faust's producer sends them in the background and flushes before every commit.)"""
        dirty, self._dirty = self._dirty, {}
        for key, partition in dirty.items():
            value = self._data.get(key)
            if value is None:
                # A tombstone record, as Faust's own __delitem__ sends it.
                self.table.send_changelog(partition, key, None, value_serializer="raw")
            else:
                self.table.send_changelog(partition, key, value)
        return len(dirty)
