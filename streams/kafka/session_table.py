"""The changelogged Faust table of session states, as the store of a :class:`SessionBook`.

Faust changelogs a table key on every ``table[key] = value``, which must happen inside the
per-event iteration of a stream (Faust takes the partition from the current event). The
``sessionize`` agent works on micro-batches instead, so this store reads and writes the
table's data directly and remembers which keys changed; :meth:`flush` then sends one
changelog record per changed key (its final state, or a tombstone), to the partition the
state belongs to. A session touched by 20 events of a batch costs one changelog record, not 20.

Crash safety: :meth:`flush` returns only once the broker acknowledged every changelog record
(a failed one is sent again), and the agent acks a batch's input records only after that, so no
committed input offset is ahead of the table's changelog; recovery rebuilds the table from it.
Faust's own flush before a commit is not enough: it stops draining its send buffer when one
record takes longer than 0.1 s to hand over (``Producer.flush_atmost``), so under load a commit
could land while a batch's changelog records still sat in that buffer, and a kill -9 then lost
the session updates of events whose offsets were committed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, MutableMapping
from typing import Any

from faust.types import TableT

from onevec.monitoring import metrics
from onevec.streams.kafka.resend import resend_until_acknowledged

__all__ = ["ChangelogBatchStore"]

log = logging.getLogger(__name__)


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

    async def flush(self) -> int:
        """Send one changelog record per key changed since the last flush and return how many,
        once the broker acknowledged every one. A record that failed is sent again (the key's
        state as it is now) after a backoff, for as long as it takes: the agent waits meanwhile
        instead of acking input whose session updates are not written."""
        dirty, self._dirty = self._dirty, {}
        await resend_until_acknowledged(self._send_all, dirty)
        return len(dirty)

    async def _send_all(self, keys: dict[str, int]) -> dict[str, int]:
        """Send the keys' records; returns those not acknowledged."""
        acks = [self._send(key, partition) for key, partition in keys.items()]
        results = await asyncio.gather(*acks, return_exceptions=True)
        failed = {
            key: partition
            for (key, partition), result in zip(keys.items(), results, strict=True)
            if isinstance(result, BaseException)
        }
        if failed:
            error = next(r for r in results if isinstance(r, BaseException))
            log.warning(
                "%d session changelog records not acknowledged (%r); sending them again", len(failed), error
            )
            topic = self.table.changelog_topic.get_topic_name()
            metrics.PRODUCE_RETRIES.labels(topic=topic).inc(len(failed))
        return failed

    async def _send(self, key: str, partition: int) -> None:
        """Hand the key's record to Faust's producer and wait for the broker's acknowledgement
        (the future it returns resolves then)."""
        value = self._data.get(key)
        if value is None:
            # A tombstone record, as Faust's own __delitem__ sends it.
            await self.table.send_changelog(partition, key, None, value_serializer="raw")
        else:
            await self.table.send_changelog(partition, key, value)
