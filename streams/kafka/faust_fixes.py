"""Targeted corrections to faust-streaming 0.15.3 (and to its use against Tansu), applied
when the app is built.

1. Records fetched before a seek. After a rebalance Faust resumes the input partitions and then
   seeks them to their committed offsets (``Recovery.on_recovery_completed``, the path of every
   app with a table, as ours). The consumer thread reads Faust's set of active partitions while
   Faust changes it, so a batch fetched around that time can carry records from the position
   before the seek (seen: 300 records of a paused partition, fetched just before its seek).
   Delivered after the seek landed, they run past the sought offset: Faust marks the offsets in
   between as a gap (done), drops the records fetched again from the sought offset as already
   read, and its commit moves past records nobody processed. Seen here: two workers, B joins
   and A leaves, 7-18 of 3,000 events (runs of 5-8 offsets on a few partitions) never reached
   the examples topic, in about 1 run of 5. So each batch remembers how many seeks its
   partitions had when it was fetched, and stops delivering a partition's records once that
   partition has been sought again: the seek moved the fetch position back, so the same
   records are fetched again. (Swapping the seek and the resume in ``on_recovery_completed``
   also closed the window, but a worker restarted after kill -9 then sometimes never fetched
   again: 1 run of 4 stalled. With this correction alone, on 2026-11-30 and 12-01: 24 of 24
   rebalance runs lost nothing, 25 kill -9 runs restarted and fetched; one of those lost
   learned state through a learner bug, since fixed:
   ``onevec.streams.learner.checkpoints.checkpoint_coverage``.)
2. Against Tansu (the embedded broker), ``ListOffsets(latest)`` answers the base offset of a
   partition's last *record batch* + 1, not the offset after its last record (measured: 13
   records in two batches of 10 and 3 report an end offset of 11). Faust's table recovery
   reads each changelog partition up to that "highwater", so the tail of the last batch
   would be lost on a restart. ``Recovery._build_highwaters`` is corrected by reading that
   last batch and taking its last offset. (Before this correction the worker's producer sent
   one record per batch, which made every send a broker round trip.)
3. Faust creates its worker consumer with ``fetch_max_wait_ms=1500``. Against Tansu, aiokafka's
   fetch is then answered only when that wait expires, even when a record arrives meanwhile
   (measured: a click took 1.2 s to reach Qdrant on an idle worker, 0.75 s of it the examples
   hop; kafka-python's fetch against the same broker returns within 5 ms). Against Tansu the
   wait is ``tansu_fetch_max_wait_ms`` (100 ms): the same click then takes 0.3 s.
4. The offset a record fetched before a seek leaves behind. Faust's fetch loop drops a
   record below the partition's read offset as already read, and sets the read offset to each
   record's offset once the record is handed on, which can take a while (the stream's queue is
   held while the flow is suspended). A seek (the post-recovery seek above, after Faust has
   resumed the partitions and handed out records fetched from the old position) resets the
   read offset; the record in flight then overwrites it with its own, higher offset, and the
   records fetched again from the sought offset up to it are dropped. When the copies fetched
   before the seek were not processed either, those events are lost, and Faust's commit,
   which allows a one-offset hole at the head of a partition, moves past them. Seen (traced
   with Faust's dev log): a graceful restart lost 6 events, offsets 1080-1085 of a partition,
   all dropped as already read by the restarted worker (1 of 84 runs); in 2 of 8 traced
   restarts that lost nothing, 23 and 91 records fetched again were dropped the same way. So
   the read offset of a record fetched before its partition's last seek is not taken, and a
   seek sets the read offset as it happens: it stays where the seek put it.
5. A partition with no committed offset is not sought at all. Faust drops the records it
   fetched but had not handed on when a rebalance starts (its fetch loop stops on the flow stop
   or the new generation) and relies on the post-recovery ``seek_to_committed`` to fetch them
   again; aiokafka's ``seek_to_committed`` only seeks partitions whose committed offset is above
   0, so such a partition keeps the position after the dropped records, which are then never
   processed. Seen in the chaos soak (three kills in six seconds): clicks partition 0 had never
   had a commit land; the restarted worker fetched offsets 742-832, dropped them in the next
   rebalance and sat at position 833 with 759 events unsessionized (the soak failed 3 of 4
   runs on 2026-12-05/06). So each input partition without a committed offset is sought to its
   first offset (the consumer's ``earliest`` policy); a sessionizer flags the copies it has
   seen. Changelog partitions are left to the table recovery, which positions them itself.
6. Any other jump over offsets of an input partition. Whatever moves the fetch position past
   records that were never handed on (a seek that did not happen, a failed ``committed``
   request in the middle of ``seek_to_committed``, a position reset), Faust sees a record
   beyond the read offset as a "gap" (it exists for compacted topics and transaction markers,
   neither of which onevec's input topics have) and its commit moves past the missing records.
   Seen in a full-size chaos soak (20 kills): one worker, after a rebalance, handed on clicks
   8314-8331 of a partition and then 8925 onwards, and 8332-8924 (and 593 records of a second
   partition at the same moment) never reached the examples topic; three single offsets of a
   third partition were skipped the same way, the one-offset hole after a seek that Faust's
   read offset cannot see (it holds the sought offset, then the last record's). So the fetcher
   keeps, for each input partition, the offset the next record handed on must have (set by
   every seek, advanced by every record handed on); a record beyond it is not handed on, the
   partition is sought back to the missing offset and the records are fetched again, with a
   WARNING line and a metric. If the same offset is missing again right after that seek, the
   broker has no record there (a position reset after retention, say): the jump is accepted,
   counted and logged.
7. The commit's one-offset hole at the head of a partition. Faust holds a partition's commit
   back while the lowest acknowledged offset is more than one past the committed offset (the
   next to read), so exactly one offset missing at the head is committed past: when the record
   at the committed offset was dropped unprocessed (fetched before a rebalance, say), the
   commit moves beyond it and nothing reads it again. Seen: a graceful restart lost the event
   at offset 450 of a partition whose committed offset at the restart was 450 (1 of 3 looped
   runs of tests/streams/test_restart.py, under load). So an input partition's commit is held
   back until its head record itself is acknowledged; a seek back (rebalance, correction 6)
   delivers it again. Changelog partitions keep Faust's rule.
8. Gaps on input partitions are onevec's to declare. Faust's fetch loop records a gap whenever
   a record's offset runs past its partition's read offset, and counts a gap as acknowledged,
   so its commit passes the offsets in it. After a seek back (correction 6, or the sessionize
   agent's own check, ``onevec.streams.kafka.input_watch``) the records fetched before the seek
   that are still handed on run past the sought offset and would open such a gap over the very
   records fetched again. So on input topics Faust records no gap; a jump onevec accepts (the
   broker holds nothing there) is recorded with :func:`accept_gap`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Collection, Iterator, Mapping
from typing import Any, cast

from aiokafka import AIOKafkaConsumer
from aiokafka.consumer.fetcher import Fetcher
from faust.tables.recovery import Recovery
from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.types import TP
from faust.types.transports import ConsumerT
from kafka import TopicPartition

from onevec.monitoring.metrics import INPUT_OFFSET_GAPS
from onevec.streams.kafka.topics import plain_consumer
from onevec.streams.settings import Settings

__all__ = ["accept_gap", "apply_faust_fixes", "last_record_offsets", "seek_back", "seek_uncommitted_to_start"]

log = logging.getLogger(__name__)

_ORIGINAL_BUILD_HIGHWATERS = Recovery._build_highwaters
_ORIGINAL_CREATE_WORKER_CONSUMER = AIOKafkaConsumerThread._create_worker_consumer


class _SeekState:
    """Per fetcher, by partition: how many seeks so far, the offset of the last one, the seek
    count when the record last handed to Faust's fetch loop was fetched, the offset the next
    record handed on must have, and where a jump was last fetched again; and Faust's read
    offsets, once the fetcher has fetched for them."""

    def __init__(self) -> None:
        self.seeks: dict[Any, int] = {}
        self.targets: dict[Any, int] = {}
        self.handed_out: dict[Any, int] = {}
        self.read_offsets: _SeekAwareReadOffsets | None = None
        self.next_offsets: dict[Any, int] = {}
        self.refetched_from: dict[Any, tuple[int, int]] = {}  # (offset, seek count after)

    def stale(self, tp: Any) -> bool:
        """The record last handed out for ``tp`` was fetched before its last seek."""
        seeks = self.seeks.get(tp, 0)
        return self.handed_out.get(tp, seeks) != seeks


def _seek_state(fetcher: Fetcher) -> _SeekState:
    state = getattr(fetcher, "_onevec_seeks", None)
    if state is None:
        state = fetcher._onevec_seeks = _SeekState()
    return cast(_SeekState, state)


_fetcher_seek_to = Fetcher.seek_to


def _seek_to_counted(self: Fetcher, tp: Any, offset: int) -> None:
    state = _seek_state(self)
    state.seeks[tp] = state.seeks.get(tp, 0) + 1
    state.targets[tp] = offset
    state.next_offsets[tp] = offset
    _fetcher_seek_to(self, tp, offset)
    if state.read_offsets is not None:
        # At once, not when Faust's seek returns to the event loop: the other partitions' seeks
        # come first, and records fetched again meanwhile would be dropped below the old offset.
        state.read_offsets[tp] = offset


class _UntilSought(list):
    """A partition's fetched records that stop at the partition's next seek."""

    def __init__(self, records: list[Any], state: _SeekState, tp: Any) -> None:
        super().__init__(records)
        self._state, self._tp, self._mark = state, tp, state.seeks.get(tp, 0)

    def __iter__(self) -> Iterator[Any]:
        for record in list.__iter__(self):
            if self._state.seeks.get(self._tp, 0) != self._mark:
                return  # sought since the fetch: the position moved back, these come again
            self._state.handed_out[self._tp] = self._mark
            yield record


class _SeekAwareReadOffsets(defaultdict[Any, int | None]):
    """Faust's read offsets (``Consumer._read_offset``), which ignore the offset of a record
    fetched before its partition's last seek. Seeks write theirs with ``update`` (or, for one
    partition, the sought offset itself), so they always land."""

    state: _SeekState | None = None  # the fetcher's, once it fetched

    def __setitem__(self, tp: Any, offset: int | None) -> None:
        state = self.state
        if offset is not None and state is not None and offset != state.targets.get(tp) and state.stale(tp):
            return  # where the seek put the partition stands: these offsets are fetched again
        super().__setitem__(tp, offset)


_consumer_init = Consumer.__init__


def _consumer_init_seek_aware(self: Consumer, *args: Any, **kwargs: Any) -> None:
    _consumer_init(self, *args, **kwargs)
    self._read_offset = _SeekAwareReadOffsets(lambda: None)


_fetch_records = AIOKafkaConsumerThread._fetch_records


async def _fetch_records_until_sought(
    self: AIOKafkaConsumerThread,
    consumer: Any,
    active_partitions: Any,
    timeout: float | None = None,
    max_records: int | None = None,
) -> Any:
    # Runs on the consumer thread, like the seeks: no seek can fall between the fetcher handing
    # the records out and the mark taken here.
    records = await _fetch_records(
        self, consumer, active_partitions, timeout=timeout, max_records=max_records
    )
    state = _seek_state(consumer._fetcher)
    read_offsets = self.consumer._read_offset
    if isinstance(read_offsets, _SeekAwareReadOffsets):
        read_offsets.state, state.read_offsets = state, read_offsets
    return {tp: _UntilSought(batch, state, tp) for tp, batch in records.items()}


_getmany = Consumer.getmany


async def _getmany_without_jumps(self: Consumer, timeout: float) -> AsyncIterator[tuple[TP, Any]]:
    thread = cast(AIOKafkaConsumerThread, self._thread)  # type: ignore[attr-defined]
    state = _seek_state(thread._ensure_consumer()._fetcher)
    changelogs = self.app.tables.changelog_topics
    async for tp, message in _getmany(self, timeout):
        expected = state.next_offsets.get(tp)
        if expected is not None and message.offset > expected and tp.topic not in changelogs:
            where = f"{tp.topic}:{tp.partition}: records {expected}-{message.offset - 1}"
            if state.refetched_from.get(tp) != (expected, state.seeks.get(tp, 0)):
                INPUT_OFFSET_GAPS.labels("refetched").inc()
                log.warning("%s were passed over; fetching them again", where)
                # On the consumer thread, as every other seek; it also ends this batch for tp.
                await thread.call_thread(_seek, thread._ensure_consumer(), tp, expected)
                state.refetched_from[tp] = (expected, state.seeks.get(tp, 0))
                continue
            INPUT_OFFSET_GAPS.labels("accepted").inc()
            log.warning("%s are not on the broker; reading on from %d", where, message.offset)
            await accept_gap(self, tp, expected, message.offset)
        if expected is None or message.offset >= expected:
            state.next_offsets[tp] = message.offset + 1
        yield tp, message


async def _seek(consumer: AIOKafkaConsumer, tp: Any, offset: int) -> None:
    consumer.seek(tp, offset)


async def seek_back(consumer: ConsumerT, tp: TP, offset: int) -> None:
    """Seek an input partition of Faust's ``consumer`` to ``offset`` (on the consumer thread, as
    every other seek) and make sure it is fetched (Faust may have left it out of its active
    partitions)."""
    thread = cast(AIOKafkaConsumerThread, cast(Consumer, consumer)._thread)  # type: ignore[attr-defined]
    await thread.call_thread(_seek, thread._ensure_consumer(), tp, offset)
    consumer.resume_partitions({tp})


_add_gap = Consumer._add_gap


async def _add_gap_on_changelogs(self: Consumer, tp: TP, offset_from: int, offset_to: int) -> None:
    if tp.topic in self.app.tables.changelog_topics:
        await _add_gap(self, tp, offset_from, offset_to)


async def accept_gap(consumer: ConsumerT, tp: TP, start: int, end: int) -> None:
    """Let the commit of input partition ``tp`` pass offsets ``[start, end)``, which the broker
    does not hold."""
    if end > start:
        await _add_gap(cast(Consumer, consumer), tp, start, end - 1)


_new_offset = Consumer._new_offset


def _new_offset_without_head_hole(self: Consumer, tp: TP) -> int | None:
    acked, committed = self._acked[tp], self._committed_offset[tp]
    # Gaps (compacted changelogs, or a jump correction 6 accepted) are Faust's to fill first.
    if acked and committed and not self._gap[tp] and tp.topic not in self.app.tables.changelog_topics:
        if min(acked) > committed:
            return None  # the record at the committed offset is not acknowledged yet
    return _new_offset(self, tp)


_ORIGINAL_SEEK_TO_COMMITTED = AIOKafkaConsumerThread.seek_to_committed


async def seek_uncommitted_to_start(
    consumer: AIOKafkaConsumer, committed: Mapping[Any, int | None], leave: Collection[str]
) -> list[Any]:
    """Seek each partition of ``committed`` that has no committed offset (None or 0) to its
    first offset, except partitions of the topics in ``leave``; returns the partitions sought."""
    uncommitted = [tp for tp, offset in committed.items() if not offset and tp.topic not in leave]
    if uncommitted:
        for tp, offset in (await consumer.beginning_offsets(uncommitted)).items():
            consumer.seek(tp, offset)
    return uncommitted


async def _seek_to_committed_or_start(self: AIOKafkaConsumerThread) -> Mapping[TP, int]:
    committed = await _ORIGINAL_SEEK_TO_COMMITTED(self)
    changelogs = self.app.tables.changelog_topics
    sought = await self.call_thread(seek_uncommitted_to_start, self._ensure_consumer(), committed, changelogs)
    if sought:
        log.info("no committed offset: reading %s from the start", sorted(sought))
    return committed


def last_record_offsets(
    settings: Settings, batch_starts: Mapping[TP, int], timeout: float = 10.0
) -> dict[TP, int]:
    """The offset of the last record of each partition, given where its last record batch
    starts (Tansu's end offset - 1): that batch is read and its last offset taken. A
    partition whose batch cannot be read in ``timeout`` keeps the offset it was given."""
    result = dict(batch_starts)
    wanted = {TopicPartition(tp.topic, tp.partition): tp for tp, start in batch_starts.items() if start >= 0}
    if not wanted:
        return result
    consumer = plain_consumer(settings)
    try:
        consumer.assign(list(wanted))
        for ktp, tp in wanted.items():
            consumer.seek(ktp, batch_starts[tp])
        missing = set(wanted)
        stop = time.monotonic() + timeout
        while missing and time.monotonic() < stop:
            for ktp, records in consumer.poll(timeout_ms=500).items():
                if records:
                    tp = wanted[ktp]
                    result[tp] = max(result[tp], *(r.offset for r in records))
                    missing.discard(ktp)
                    consumer.pause(ktp)  # later batches (written meanwhile) are not ours to count
        if missing:
            log.warning("could not read the last batch of %s; their highwaters may be short", missing)
    finally:
        consumer.close()
    return result


def _tansu_build_highwaters(settings: Settings) -> Any:
    async def build_highwaters(
        self: Recovery, consumer: Any, tps: set[TP], destination: Any, title: str
    ) -> None:
        await _ORIGINAL_BUILD_HIGHWATERS(self, consumer, tps, destination, title)
        # Faust keeps "end offset - 1", which Tansu makes the start of the last batch.
        starts = {tp: destination[tp] for tp in tps if tp in destination}
        corrected = await asyncio.to_thread(last_record_offsets, settings, starts)
        moved = {tp: (starts[tp], offset) for tp, offset in corrected.items() if offset != starts[tp]}
        if moved:
            self.log.info("Tansu highwaters corrected (batch start -> last record): %r", moved)
        for tp, offset in corrected.items():
            destination[tp] = offset  # a Counter: update() would add, not replace

    return build_highwaters


def _worker_consumer_with_fetch_wait(fetch_max_wait_ms: int) -> Any:
    def create(self: AIOKafkaConsumerThread, transport: Any) -> Any:
        consumer = _ORIGINAL_CREATE_WORKER_CONSUMER(self, transport)
        consumer._fetch_max_wait_ms = fetch_max_wait_ms  # read when the consumer starts its fetcher
        return consumer

    return create


def apply_faust_fixes(settings: Settings | None = None) -> None:
    Fetcher.seek_to = _seek_to_counted
    Consumer.__init__ = _consumer_init_seek_aware  # type: ignore[method-assign]
    AIOKafkaConsumerThread._fetch_records = _fetch_records_until_sought  # type: ignore[method-assign]
    AIOKafkaConsumerThread.seek_to_committed = _seek_to_committed_or_start  # type: ignore[method-assign]
    Consumer.getmany = _getmany_without_jumps  # type: ignore[method-assign]
    Consumer._new_offset = _new_offset_without_head_hole  # type: ignore[method-assign]
    Consumer._add_gap = _add_gap_on_changelogs  # type: ignore[method-assign]
    if settings is not None and (settings.embedded or settings.tansu):
        Recovery._build_highwaters = _tansu_build_highwaters(settings)  # type: ignore[method-assign]
        AIOKafkaConsumerThread._create_worker_consumer = _worker_consumer_with_fetch_wait(  # type: ignore[method-assign]
            settings.tansu_fetch_max_wait_ms
        )
    else:
        Recovery._build_highwaters = _ORIGINAL_BUILD_HIGHWATERS  # type: ignore[method-assign]
        AIOKafkaConsumerThread._create_worker_consumer = _ORIGINAL_CREATE_WORKER_CONSUMER  # type: ignore[method-assign]
