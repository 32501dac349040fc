"""The learner's batching writer: coalesces upserts, flushes on size or age, retries with
backoff, re-queues failed batches and applies back-pressure."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Self

import tenacity

from onevec.monitoring import metrics
from onevec.streams.qdrant.points import CollectionKind, ItemRecord, PointRow, build_item_points
from onevec.streams.qdrant.store import QdrantStore

__all__ = ["UpsertBuffer"]

log = logging.getLogger(__name__)


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
    * A failed upsert is retried with full-jitter exponential backoff (several workers that
      failed together, e.g. at a Qdrant restart, do not retry in lockstep). After
      ``max_attempts`` the batch counts as one failure and goes back into the buffer (behind
      any newer version of the same items) and is tried again: nothing is dropped.
    * At most ``max_pending`` items wait (plus one batch in flight); when full, ``add()``
      awaits, which stalls the calling agent and so the Kafka consumer: back-pressure.

    Counters for the metrics module: ``upserted_points``, ``coalesced`` (adds folded into a
    pending write of the same item), ``retries`` (failed
    calls retried within a batch's attempts), ``failures`` (batches that used up
    ``max_attempts``), ``last_error``, and the ``pending`` property.
    """

    def __init__(
        self,
        store: QdrantStore,
        *,
        collection: CollectionKind = "items",
        max_batch: int = 256,
        max_delay_ms: float = 500.0,
        max_pending: int = 10_000,
        max_attempts: int = 6,
        backoff_base_s: float = 0.1,
        backoff_cap_s: float = 10.0,
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
        self._wait = tenacity.wait_random_exponential(multiplier=backoff_base_s, max=backoff_cap_s)

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
        point = build_item_points([record], self.store.dim).all_or_error()[0]
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
        # Records were validated in add(), so a failure is the server or the network
        # (timeouts, 5xx, restarts): worth retrying.
        attempts = tenacity.AsyncRetrying(
            stop=tenacity.stop_after_attempt(self.max_attempts),
            wait=self._wait,
            before_sleep=self._count_retry,
            reraise=True,
        )
        self._inflight = batch
        try:
            async for attempt in attempts:
                with attempt:
                    await self._upsert(points)
        except Exception:
            self.failures += 1
            log.warning(
                "Qdrant upsert of %d %s failed %d times (%r); re-queued",
                len(points),
                self.collection,
                self.max_attempts,
                self.last_error,
            )
            self._requeue(batch)
            # Pause before the next round (drawn like a retry after the last attempt) instead
            # of hammering a server that has just failed max_attempts times.
            pause = self._wait(attempt.retry_state)
        else:
            self.upserted_points += len(points)
            if self.on_written is not None:
                self.on_written(list(batch))
            return
        finally:
            self._inflight = {}
        await asyncio.sleep(pause)

    async def _upsert(self, points: list[PointRow]) -> None:
        started = time.perf_counter()
        try:
            await self.store.upsert_points(self.collection, points)
        except Exception as exc:
            metrics.UPSERT_ERRORS.labels(collection=self.collection).inc()
            self.last_error = exc
            raise
        metrics.UPSERT_SECONDS.labels(collection=self.collection).observe(time.perf_counter() - started)

    def _count_retry(self, retry_state: tenacity.RetryCallState) -> None:
        self.retries += 1

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
