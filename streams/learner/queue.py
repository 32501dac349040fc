"""The queue between the ``learn`` agent and the learner thread, bounded in examples.

Records vary from one example to a whole sessionize micro-batch, so the bound counts examples,
not records: a learner that falls behind back-pressures the agent (and so the Kafka consumer)
instead of buffering without limit.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from onevec.models.clickstream.examples import ExampleRecord

__all__ = ["ExampleQueue", "ExamplesBatch"]


@dataclass(frozen=True, slots=True)
class ExamplesBatch:
    """One examples-topic record: where it was read ("topic:partition", offset) and its examples."""

    source: str
    offset: int
    examples: list[ExampleRecord]


class ExampleQueue:
    """``put`` waits while ``max_examples`` are queued; ``take_round`` takes a learning round."""

    def __init__(self, max_examples: int, batch_size: int, round_examples: int, batch_within_seconds: float):
        self.max_examples = max_examples
        self.batch_size = batch_size
        self.round_examples = round_examples
        self.batch_within_seconds = batch_within_seconds
        self.examples = 0  # queued, not yet taken
        self._queue: asyncio.Queue[ExamplesBatch] = asyncio.Queue()
        self._space = asyncio.Event()

    def empty(self) -> bool:
        return self._queue.empty()

    async def put(self, batch: ExamplesBatch) -> None:
        """Queue one record; waits while the queue holds a full backlog."""
        while self.examples >= self.max_examples:
            self._space.clear()
            await self._space.wait()
        self.examples += len(batch.examples)
        self._queue.put_nowait(batch)

    async def get(self) -> ExamplesBatch:
        """The next record (what a round starts from); not yet counted as taken."""
        return await self._queue.get()

    async def take_round(self, first: ExamplesBatch) -> list[ExamplesBatch]:
        """Records for one learning round, starting at ``first``: what is queued, up to
        ``round_examples``; it waits (at most ``batch_within_seconds``) only to fill one batch.
        (Batching here, not with Faust's take(), which holds a partial batch until another
        record arrives.) The taken records free their space in the queue."""
        records = [first]
        size = len(first.examples)
        deadline = time.monotonic() + self.batch_within_seconds
        while size < self.round_examples:
            try:
                record = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or size >= self.batch_size:
                    break
                try:
                    record = await asyncio.wait_for(self._queue.get(), timeout=remaining)
                except TimeoutError:
                    break
            records.append(record)
            size += len(record.examples)
        self.examples -= size
        self._space.set()
        return records
