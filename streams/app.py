"""The Faust application: topics, the session table and the ``sessionize`` agent.

``sessionize`` reads raw click records, each one event or a packed record of many
(onevec.models.clickstream.packed), validates every event (bad input goes to the dead-letter
topic with the original bytes and a reason; a packed record's other events are kept), applies
good events to the changelogged session table
and emits one training example per event plus a record for every session that closes.
Delivery is at-least-once (Tansu refuses idempotent producers), so every consumer downstream
treats a repeated example as harmless.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar, cast

import faust
import tenacity
from faust.types import TP, EventT, StreamT, TopicT

from onevec.models.catalog import load_attributes, validate_catalog_record
from onevec.models.clickstream.events import Event, Rejection, ValidationLimits, session_key, validate_event
from onevec.models.clickstream.examples import ExampleRecord, decode_examples, encode_example_chunks
from onevec.models.clickstream.packed import (
    PACK_FORMAT,
    PACK_HEADER,
    PACK_SLOTS,
    input_position,
    pack_format,
    pack_lines,
    unpack,
)
from onevec.models.clickstream.sessions import ClosedSession, Example, SessionBook, SessionWindow
from onevec.monitoring import metrics
from onevec.streams.kafka.emitted import emitted_header, read_emitted_upto
from onevec.streams.kafka.faust_fixes import accept_gap, seek_back
from onevec.streams.kafka.input_watch import InputWatch, Verdict, first_offset_from, start_offsets
from onevec.streams.kafka.producer import DEFAULT_PACK_BYTES, key_partition
from onevec.streams.kafka.resend import resend_until_acknowledged
from onevec.streams.kafka.session_table import ChangelogBatchStore
from onevec.streams.kafka.topics import bootstrap_servers
from onevec.streams.learner.checkpoints import (
    CheckpointStreamError,
    ExpectedOffsets,
    checkpoint_coverage,
    read_committed_gap,
    read_examples,
    stream_identity,
)
from onevec.streams.learner.learner import Learner
from onevec.streams.learner.queue import ExamplesBatch
from onevec.streams.qdrant import CollectionSchemaError, QdrantStore
from onevec.streams.settings import Settings

__all__ = ["OnevecApp"]

_P = ParamSpec("_P")
_R = TypeVar("_R")
log = logging.getLogger(__name__)

REASON_HEADER = "onevec-reason"
DETAIL_HEADER = "onevec-detail"
INDEX_HEADER = "onevec-pack-index"  # a dead letter's line in its packed record
LAG_INTERVAL_SECONDS = 2.0  # how often consumer lag per stage is measured


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One record to produce (see :meth:`OnevecApp.deliver`)."""

    topic: TopicT
    value: Any
    key: bytes | None = None
    partition: int | None = None
    headers: list[tuple[str, bytes]] | None = None
    value_serializer: str | None = None  # None: the topic's own


class OnevecApp:
    """Holds the Faust app and everything its agents share, built from one Settings."""

    def __init__(self, settings: Settings, broker_url: str | None = None) -> None:
        self.settings = settings
        servers = ";".join(f"kafka://{s}" for s in bootstrap_servers(settings, broker_url))
        self.faust = faust.App(
            settings.group_id,
            broker=servers,
            store="memory://",
            autodiscover=False,
            datadir=str(settings.data_dir / "faust"),
            web_bind=settings.bind_host,
            web_host=settings.bind_host,
            web_port=settings.web_port,
            # The one body limit (Settings.max_http_body_bytes), also aiohttp's own (1 MiB otherwise).
            web_application_options={"client_max_size": settings.max_http_body_bytes},
            topic_partitions=settings.partitions,
            topic_replication_factor=settings.replication_factor,
            consumer_auto_offset_reset="earliest",
            table_cleanup_interval=3600.0,
            broker_credentials=broker_credentials(settings),
            **settings.faust_broker_options,
        )
        self.limits = ValidationLimits(
            max_event_bytes=settings.max_event_bytes,
            min_event_time=settings.min_event_time,
            max_clock_skew_seconds=settings.max_clock_skew_seconds,
            timestamp_unit=settings.timestamp_unit,
        )
        raw: dict[str, Any] = {
            "key_type": bytes,
            "value_type": bytes,
            "key_serializer": "raw",
            "value_serializer": "raw",
        }
        self.clicks = self.faust.topic(settings.clicks_topic, **raw)
        self.dlq = self.faust.topic(settings.dlq_topic, **raw)
        # Raw bytes: decode_examples reads them, so a record that is not JSON is dead-lettered
        # like any other foreign record instead of being dropped by Faust's deserializer.
        self.examples = self.faust.topic(settings.examples_topic, value_serializer="raw")
        self.sessions_closed = self.faust.topic(settings.sessions_topic, value_serializer="json")
        self.catalog = self.faust.topic(settings.catalog_topic, **raw)
        # Which half of the pipeline this process runs (Settings.role): each part below
        # exists only in the role that uses it, so a learn worker never joins the session
        # table's changelog and an ingest worker never opens Qdrant.
        self.session_table: Any = None
        self.learner: Learner | None = None
        self.partitions: set[int] = set()
        # Set once the learner has created the collections and published (or reopened) the catalogue: the
        # catalogue agent writes, and the lookups answer, only after that.
        self.store_ready = asyncio.Event()
        self.stream_bound = asyncio.Event()  # the checkpoint's offsets checked against this stream
        # Set once the examples committed after the checkpoint are learned: until then the learn
        # agent takes nothing, so the group's committed offsets (where that gap ends) stay put.
        self.gap_learned = asyncio.Event()
        # The partitions a worker reports as its own (readiness): its first stage's input.
        self.input_topic = settings.clicks_topic if settings.runs_sessions else settings.examples_topic
        if settings.runs_sessions:
            self.session_table = self.faust.Table(
                "sessions",
                default=None,
                partitions=settings.partitions,
                # JSON keys: str keys come back as str after changelog recovery (raw gives bytes).
                schema=faust.Schema(key_serializer="json", value_serializer="json"),
            )
            self.session_store = ChangelogBatchStore(self.session_table)
            self.book = SessionBook(
                self.session_store,
                SessionWindow(
                    gap=settings.session_gap_seconds,
                    max_items=settings.max_session_items,
                    max_open=settings.max_open_sessions,
                ),
            )
            self.watch = InputWatch()
            self.faust.agent(self.clicks, name="sessionize")(self._sessionize)
            self.faust.timer(interval=LAG_INTERVAL_SECONDS)(self._refetch_stalled)
        if settings.runs_learner:
            self.store = QdrantStore.from_settings(settings)  # ONEVEC_QDRANT_ENGINE picks the embedded engine
            attributes = load_attributes(settings.catalog) if settings.catalog else {}
            self.learner = Learner(settings, self.store, attributes)
            self.learner.restore()
            self.faust.agent(self.examples, name="learn")(self._learn)
            self.faust.agent(self.catalog, name="catalog")(self._catalog)
            self.faust.task(self._run_learner)
        self.faust.timer(interval=LAG_INTERVAL_SECONDS)(self._report_lag)
        # Faust's signal stubs want (sender, *, signal); it calls receivers with keywords.
        self.faust.on_before_shutdown.connect(self._on_shutdown)  # type: ignore[arg-type]
        self.faust.on_partitions_assigned.connect(self._on_assigned)  # type: ignore[arg-type]
        self.faust.on_partitions_revoked.connect(self._on_revoked)  # type: ignore[arg-type]

    @property
    def running_learner(self) -> Learner:
        """The learner, in a worker whose role runs one (its agents exist only then)."""
        if self.learner is None:
            raise RuntimeError(f"a worker of role {self.settings.role!r} runs no learner")
        return self.learner

    def dead_letter(
        self, key: bytes | None, value: bytes, rejection: Rejection, stage: str, index: int | None = None
    ) -> Outgoing:
        """The dead-letter record of a rejected input (counted here): its original bytes, and
        the reason, detail and stage as headers; with ``index``, the line of a packed record
        it was (its other lines were kept)."""
        metrics.EVENTS_REJECTED.labels(stage=stage, reason=rejection.reason).inc()
        headers = [
            (REASON_HEADER, rejection.reason.encode()),
            (DETAIL_HEADER, rejection.detail.encode()),
            ("onevec-stage", stage.encode()),
        ]
        if index is not None:
            headers.append((INDEX_HEADER, str(index).encode()))
        return Outgoing(self.dlq, value, key, headers=headers)

    async def send_dead_letter(
        self, key: bytes | None, value: bytes, rejection: Rejection, stage: str
    ) -> None:
        """Send a rejected input to the dead-letter topic and wait until it is written."""
        await self.deliver([self.dead_letter(key, value, rejection, stage)])

    def packed_clicks(self, accepted: Sequence[tuple[bytes, Event]]) -> list[Outgoing]:
        """Validated events as packed clicks records (HTTP ingestion): each event's bytes as
        received (not encoded again), packed per partition its session key hashes to, the
        partition a single-event record with that key would go to."""
        lines: dict[int, list[bytes]] = {}
        for raw, event in accepted:
            partition = key_partition(session_key(event).encode(), self.settings.partitions)
            lines.setdefault(partition, []).append(raw)
        return [
            Outgoing(self.clicks, value, partition=partition, headers=[(PACK_HEADER, PACK_FORMAT)])
            for partition, raws in lines.items()
            for value in pack_lines(raws, DEFAULT_PACK_BYTES)
        ]

    async def _sessionize(self, stream: StreamT[bytes]) -> None:
        # Micro-batches: the session table is written through a ChangelogBatchStore (one
        # changelog record per changed session per batch) and examples go out as one record
        # per partition, instead of two produce calls per event. Acks are manual (noack_take):
        # a batch's records are acked only once everything it produced was acknowledged by the
        # broker, so a crash or a shutdown mid-batch leaves them to be delivered again (Faust's
        # take_events would ack them even when the batch failed).
        settings = self.settings
        async for records in stream.noack_take(  # type: ignore[attr-defined]  # Stream's, not in StreamT
            settings.sessionize_batch_size, within=settings.sessionize_batch_within_seconds
        ):
            # A packed record holds many events: a take is sessionized in batches of whole
            # records of about sessionize_batch_size events each.
            for batch in _batches(cast(Sequence[EventT[bytes]], records), settings.sessionize_batch_size):
                started = time.perf_counter()
                self.watch.batch_started()
                try:
                    count = await self._sessionize_batch(batch)
                finally:
                    self.watch.batch_done()
                for record in batch:
                    await stream.ack(record)
                metrics.PROCESSING_SECONDS.labels(stage="sessionize").observe(time.perf_counter() - started)
                metrics.BATCH_EVENTS.labels(stage="sessionize").observe(count)

    async def _sessionize_batch(self, records: Sequence[EventT[bytes]]) -> int:
        """Validate, apply to the sessions, send; returns the number of events once every
        record the batch produced is acknowledged by the broker."""
        outgoing: list[Outgoing] = []
        examples: dict[int, list[ExampleRecord]] = {}
        sources: dict[int, list[int]] = {}  # per partition, the clicks offset of each example
        accepted: Counter[str] = Counter()
        duplicates = count = 0
        passed: Counter[str] = Counter()
        partitions = {record.message.partition for record in records}
        await self._read_emitted(partitions)
        await self._read_starts(partitions)
        for record in records:
            message = record.message
            partition, offset = message.partition, message.offset
            verdict = self.watch.verdict(partition, offset)
            if verdict != "take":
                behind = offset < self.watch.expected(partition)  # known: an unknown one is taken
                if not await self._after_jump(partition, offset, verdict):
                    # Acked with the batch, unprocessed: taken before, or to be fetched again.
                    passed["read_again" if behind else "awaiting_refetch"] += 1
                    continue
            self.watch.taken(partition, offset)
            raw = record.value if isinstance(record.value, bytes) else b""
            pack = pack_format(message.headers)
            if pack is not None and pack != PACK_FORMAT:
                count += 1
                rejection = Rejection("bad_pack", f"unknown {PACK_HEADER} format {pack[:40]!r}")
                outgoing.append(self.dead_letter(record.key, raw, rejection, stage="stream"))
                continue
            for index, line in ((0, raw),) if pack is None else unpack(raw):
                count += 1
                result = self._apply(line, partition, offset, index)
                if isinstance(result, Rejection):
                    packed_at = None if pack is None else index
                    outgoing.append(self.dead_letter(record.key, line, result, "stream", packed_at))
                    continue
                example, closed = result
                accepted[example.event_type] += 1
                duplicates += example.duplicate
                # The click's Kafka timestamp rides along: the learner's freshness clock starts there.
                example_record = example.to_dict()
                example_record["ingested_at"] = message.timestamp
                examples.setdefault(partition, []).append(example_record)
                sources.setdefault(partition, []).append(offset)
                for session in closed:
                    metrics.SESSIONS_CLOSED.labels(reason=session.reason).inc()
                    outgoing.append(
                        Outgoing(self.sessions_closed, session.to_dict(), session.session_id.encode())
                    )
        # The examples first, then the session updates; the batch returns (and its input is
        # acked) once both are acknowledged. In this order a crash leaves the restored table at
        # or behind what went out, never ahead: an event read again whose example is out is
        # applied again from the exact state before it (flagged), and no example that never went
        # out has to be rebuilt from a table that moved on and kept only its last items.
        await self._send_examples(outgoing, examples, sources)
        await self.session_store.flush()
        if passed:
            for reason, number in passed.items():
                metrics.INPUT_RECORDS_PASSED.labels(reason=reason).inc(number)
            log.warning(
                "clicks records passed over in a batch, to be read again or taken before: %s", dict(passed)
            )
        for event_type, number in accepted.items():
            metrics.EVENTS_ACCEPTED.labels(event_type=event_type).inc(number)
        metrics.EVENTS_DUPLICATE.inc(duplicates)
        metrics.EXAMPLES_EMITTED.inc(sum(accepted.values()))
        metrics.SESSIONS_OPEN.set(self.book.open_sessions())
        return count

    async def _send_examples(
        self,
        outgoing: list[Outgoing],
        examples: dict[int, list[ExampleRecord]],
        sources: dict[int, list[int]],
    ) -> None:
        """Deliver the batch's other records and its examples records (with the header each
        partition's record claims)."""
        # A partition's examples records go out one round at a time (most batches have one):
        # a record's header claims the clicks records before it, so it is sent only once they
        # are acknowledged, never reordered ahead of one that failed and is sent again.
        rounds: list[list[Outgoing]] = [outgoing]
        claims: list[dict[int, int]] = [{}]  # per round, the header each partition's record carries
        emitted = self.book.emitted_upto
        for partition, batch in examples.items():
            upto, offsets, end = emitted.get(partition, -1), sources[partition], 0
            chunks = encode_example_chunks(batch, self.settings.examples_record_max_bytes)
            for number, (value, size) in enumerate(chunks):
                end += size
                upto = max(upto, _claim(offsets, end))
                if number == len(rounds):
                    rounds.append([])
                    claims.append({})
                rounds[number].append(
                    Outgoing(
                        self.examples,
                        value,
                        partition=partition,
                        headers=[emitted_header(upto)],
                        value_serializer="raw",
                    )
                )
                claims[number][partition] = upto
        for round_records, claimed in zip(rounds, claims, strict=True):
            await self.deliver(round_records)
            emitted.update(claimed)

    async def _read_starts(self, partitions: set[int]) -> None:
        """Once per assignment of a clicks partition, before its first event: the offset its
        records start at (see onevec.streams.kafka.input_watch)."""
        unknown = self.watch.unknown(partitions)
        if unknown:
            starts = await self._read_retrying(start_offsets, self.settings, self.input_topic, unknown)
            for partition, offset in starts.items():
                self.watch.start(partition, offset)

    async def _after_jump(self, partition: int, offset: int, verdict: Verdict) -> bool:
        """Whether a record past its partition's next offset is sessionized now: only if the
        broker holds nothing in between. Otherwise the consumer is sought back to the missing
        records and this one is passed over, to come again after them."""
        if verdict == "pass":
            return False
        topic, expected = self.input_topic, self.watch.expected(partition)
        where = f"{topic}:{partition}: records {expected}-{offset - 1}"
        tp = TP(topic, partition)
        first = await asyncio.to_thread(first_offset_from, self.settings, topic, partition, expected)
        if first is not None and first >= offset:
            metrics.INPUT_OFFSET_GAPS.labels("accepted").inc()
            log.warning("%s are not on the broker; reading on from %d", where, offset)
            await accept_gap(self.faust.consumer, tp, expected, offset)
            self.watch.accept(partition, offset)
            return True
        metrics.INPUT_OFFSET_GAPS.labels("refetched").inc()
        log.warning("%s never reached the sessionizer; fetching them again", where)
        await seek_back(self.faust.consumer, tp, expected)
        self.watch.sought(partition)
        return False

    async def _refetch_stalled(self) -> None:
        """Seek back a clicks partition whose records stopped reaching the sessionizer while the
        broker holds more (see onevec.streams.kafka.input_watch)."""
        consumer = self.faust.consumer
        ends = {
            tp.partition: end
            for tp in consumer.assignment()
            if tp.topic == self.input_topic and (end := consumer.highwater(tp)) is not None
        }
        for partition in self.watch.stalled(ends):
            expected = self.watch.expected(partition)
            metrics.INPUT_OFFSET_GAPS.labels("stalled").inc()
            log.warning(
                "%s:%d: no record reached the sessionizer lately although the broker holds more "
                "(end offset %d); fetching from %d again",
                self.input_topic,
                partition,
                ends[partition],
                expected,
            )
            await seek_back(consumer, TP(self.input_topic, partition), expected)
            self.watch.sought(partition)

    async def _read_emitted(self, partitions: set[int]) -> None:
        """Once per assignment of a clicks partition, before its first event: how far its
        examples reached the topic (the session book reconciles its table against it)."""
        unknown = sorted(partitions - self.book.emitted_upto.keys())
        if not unknown:
            return
        # Until it is read, the batch waits (nothing of it is acked): deciding without it would
        # flag events whose examples never went out, or write a header that goes backwards.
        upto = await self._read_retrying(read_emitted_upto, self.settings, unknown)
        # A last record without the header (an older onevec) leaves the partition to the
        # table's rules for this batch; its first record here starts the headers.
        self.book.emitted_upto.update({p: offset for p, offset in upto.items() if offset is not None})

    def _apply(
        self, raw: bytes, partition: int, offset: int, index: int
    ) -> tuple[Example, list[ClosedSession]] | Rejection:
        """One click (line ``index`` of the record at ``offset``): validated, then applied to its
        session; a rejection says why not."""
        if index >= PACK_SLOTS:
            return Rejection("bad_pack", f"a packed record holds at most {PACK_SLOTS} lines")
        try:
            event = validate_event(raw, self.limits)
            if isinstance(event, Rejection):
                return event
            return self.book.process(event, partition, input_position(offset, index))
        except Exception as error:  # noqa: BLE001 - a bug must not stop the stream
            log.exception("sessionize failed on partition %d offset %d line %d", partition, offset, index)
            return Rejection("internal_error", f"sessionize failed: {error!r}")

    async def deliver(self, records: list[Outgoing], timeout: float | None = None) -> None:
        """Send the records and return once the broker acknowledged every one. A record whose
        send failed (broker unreachable, request timed out) is sent again after a backoff, for
        as long as it takes: an agent waits meanwhile (back-pressure) instead of acking input
        whose output was never written. With ``timeout``, TimeoutError after that many seconds
        (records already acknowledged stay written)."""
        async with asyncio.timeout(timeout):
            await self._deliver(records)

    async def _deliver(self, records: list[Outgoing]) -> None:
        await resend_until_acknowledged(self._send_all, records)

    async def _send_all(self, records: list[Outgoing]) -> list[Outgoing]:
        """Send the records; returns those not acknowledged."""
        # Handed to the producer one by one, in order (a partition's records keep their
        # order), then all acknowledgements awaited together.
        futures = [await self._send(r) for r in records]
        results = await asyncio.gather(*futures, return_exceptions=True)
        failed = [(r, e) for r, e in zip(records, results, strict=True) if isinstance(e, Exception)]
        for record, _ in failed:
            metrics.PRODUCE_RETRIES.labels(topic=record.topic.get_topic_name()).inc()
        if failed:
            log.warning("%d records not acknowledged (%r); sending them again", len(failed), failed[0][1])
        return [record for record, _ in failed]

    async def _send(self, record: Outgoing) -> Awaitable[Any]:
        """Hand a record to the producer; returns its acknowledgement (a failure to hand it
        over comes back as a failed acknowledgement, to be retried like one)."""
        try:
            return await record.topic.send(
                key=record.key,
                value=record.value,
                partition=record.partition,
                headers=record.headers,
                value_serializer=record.value_serializer,
                force=True,  # now, not attached to the current event's commit: we wait for it here
            )
        except Exception as error:  # noqa: BLE001 - e.g. the producer is reconnecting
            failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            failed.set_exception(error)
            return failed

    async def _learn(self, stream: StreamT[bytes]) -> None:
        # Records taken now would be acked and committed, moving the end of the gap the learner
        # reads after its checkpoint: the records in between would be learned twice.
        await self.gap_learned.wait()
        expected = ExpectedOffsets(self.running_learner.checkpoints)
        async for event in stream.events():
            message = event.message
            source = f"{message.topic}:{message.partition}"
            if hole := expected.take(source, message.offset):
                await self._learn_skipped(source, *hole)
            try:
                raw = event.value if isinstance(event.value, bytes) else b""
                examples = decode_examples(raw)
            except ValueError as error:
                # Only onevec writes this topic: a foreign record is dead-lettered (counted, with
                # its original bytes and the reason), not learned and not a stop.
                log.error("examples record %s:%d dead-lettered: %s", message.partition, message.offset, error)
                rejection = Rejection("bad_examples_record", str(error))
                await self.send_dead_letter(message.key, raw, rejection, stage="learn")
                continue
            await self.running_learner.submit(ExamplesBatch(source, message.offset, examples))

    async def _catalog(self, stream: StreamT[bytes]) -> None:
        """New or changed catalogue records (compacted topic, key item_id): encoded with the
        static encoders and upserted at once; bad records go to the dead-letter topic."""
        async for event in stream.events():
            if event.value is None:
                # A tombstone: the item left the catalogue, its static vectors go (docs/static.md).
                if event.key:
                    await self.store_ready.wait()
                    await self.running_learner.remove_catalog(bytes(event.key).decode("utf-8", "replace"))
                continue
            raw = event.value if isinstance(event.value, bytes) else b""
            # Decoding an inline image (base64, pillow) is CPU work: off the event loop.
            result = await asyncio.to_thread(validate_catalog_record, raw, self.settings.max_http_body_bytes)
            if isinstance(result, Rejection):
                await self.send_dead_letter(event.key, raw, result, stage="catalog")
                continue
            await self.store_ready.wait()
            if await self.running_learner.upsert_catalog(result):
                metrics.CATALOG_ITEMS_ENCODED.inc()

    async def _run_learner(self) -> None:
        # Until Qdrant answers, the lookups answer 503 and the worker does not report ready; the
        # examples wait in their topic. (Without the retry, a learner started before its Qdrant
        # server never started.) A schema mismatch is a configuration error: not retried.
        starting = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_not_exception_type((CollectionSchemaError, CheckpointStreamError)),
            wait=tenacity.wait_random_exponential(multiplier=0.5, max=10.0),
            before_sleep=lambda state: log.warning(
                "learner start: Qdrant not available (%r); again in %.1f s",
                state.outcome.exception() if state.outcome else None,
                state.upcoming_sleep,
            ),
        )
        async for attempt in starting:
            with attempt:
                await self._bind_checkpoint_to_stream()
                await self.store.ensure_collections()
                # Reopens the store a restarted learner's checkpoint vouches for; otherwise
                # aligns to it and publishes every item (Learner.open_serving).
                await self.running_learner.open_serving()
        self.store_ready.set()
        await self._learn_since_checkpoint()
        await self.running_learner.run()

    async def _bind_checkpoint_to_stream(self) -> None:
        """Before any example is taken: do the restored offsets belong to this stream? If not,
        they are dropped (the model is kept), or the worker stops when the settings refuse."""
        if self.stream_bound.is_set():
            return
        identity = await asyncio.to_thread(stream_identity, self.settings)
        try:
            self.running_learner.checkpoints.bind_stream(identity)
        except CheckpointStreamError as error:
            log.error("%s", error)
            await self.faust.crash(error)
            raise
        self.stream_bound.set()

    async def _learn_since_checkpoint(self) -> None:
        """Examples the agent had already taken (committed) but the lost process never put
        into a checkpoint: read them directly, from the checkpoint's offsets to the group's
        committed ones, and learn them before the live stream. No learned state is lost."""
        covered = checkpoint_coverage(self.settings, self.running_learner.checkpoints.offsets)
        missed: list[ExamplesBatch] = await self._read_retrying(read_committed_gap, self.settings, covered)
        if missed:
            log.warning("learning %d examples records taken after the last checkpoint", len(missed))
            await self.running_learner.learn_records(missed)
        self.gap_learned.set()

    async def _learn_skipped(self, source: str, start: int, end: int) -> None:
        """Examples records ``[start, end)`` of ``source`` this learner never learned, which its
        consumer started past (taken by a lost process after its last checkpoint): read from the
        broker and queued before the live stream, or no learned state would be lost for good."""
        log.warning(
            "%s: learning examples records %d-%d, taken but never learned here", source, start, end - 1
        )
        # The group's committed offsets said less than its consumer did (seen after a kill -9:
        # "none committed" while the restarted consumer started past the lost worker's commits).
        # Until the hole is read whole, the agent takes nothing more: the live examples wait.
        batches: list[ExamplesBatch] = await self._read_retrying(
            read_examples, self.settings, source, start, end
        )
        for batch in batches:
            await self.running_learner.submit(batch)

    async def _read_retrying(self, read: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
        """A read from the broker on a thread, retried until it succeeds: what the group will
        not deliver again is learned late rather than never, and a batch waits for what it
        needs instead of deciding without it."""
        reading = tenacity.AsyncRetrying(
            wait=tenacity.wait_random_exponential(multiplier=0.5, max=10.0),
            before_sleep=lambda state: log.warning(
                "%s failed (%s); again in %.1f s",
                getattr(read, "__name__", "a read"),
                state.outcome.exception() if state.outcome else None,
                state.upcoming_sleep,
            ),
        )
        result: _R = await reading(asyncio.to_thread, read, *args, **kwargs)
        return result

    async def _report_lag(self) -> None:
        """Consumer lag per stage, from the partitions' end offsets: sessionize against the
        group's committed offsets, learn against what the learner has really learned (the
        queue in between counts as lag)."""
        consumer = self.faust.consumer
        committed = self.faust.monitor.tp_committed_offsets
        # Only the stages this worker runs: a split deployment's other worker reports the rest.
        lag = ({"sessionize": 0} if self.settings.runs_sessions else {}) | (
            {"learn": 0} if self.settings.runs_learner else {}
        )
        for tp in consumer.assignment():
            end = consumer.highwater(tp)
            if end is None:
                continue
            if tp.topic == self.settings.clicks_topic:
                done, stage = committed.get(tp) or 0, "sessionize"
            elif tp.topic == self.settings.examples_topic and self.learner is not None:
                done, stage = self.learner.offsets.get(f"{tp.topic}:{tp.partition}", -1) + 1, "learn"
            else:
                continue
            lag[stage] += max(0, end - done)
        for stage, value in lag.items():
            metrics.CONSUMER_LAG.labels(stage=stage).set(value)

    async def _on_shutdown(self, sender: Any, **_: Any) -> None:
        if self.learner is not None:
            await self.learner.close()

    async def _on_assigned(self, sender: Any, assigned: set[Any], **_: Any) -> None:
        self.partitions |= {tp.partition for tp in assigned if tp.topic == self.input_topic}
        # Readiness (what WorkerProcess.wait_ready waits for) is reported once Faust has
        # restored the tables and sought the streams to their committed offsets.
        recovery = self.faust.tables.recovery  # type: ignore[attr-defined]  # TableManager's, not in TableManagerT
        recovery.completed.clear()
        asyncio.ensure_future(self._report_partitions_when_ready(recovery))

    async def _report_partitions_when_ready(self, recovery: Any) -> None:
        await recovery.completed.wait()
        if self.learner is not None:
            await self.store_ready.wait()  # ready includes lookups that answer (not 503)
        metrics.WORKER_PARTITIONS.set(len(self.partitions))

    async def _on_revoked(self, sender: Any, revoked: set[Any], **_: Any) -> None:
        for tp in revoked:
            if tp.topic == self.input_topic:
                self.partitions.discard(tp.partition)
                if self.settings.runs_sessions:
                    self.book.forget_partition(tp.partition)
                    self.watch.forget(tp.partition)
        metrics.WORKER_PARTITIONS.set(len(self.partitions))


def _batches(records: Sequence[EventT[bytes]], events: int) -> Iterator[Sequence[EventT[bytes]]]:
    """Consecutive runs of whole records of about ``events`` events each (a packed record counts
    its lines; one record above the size is a run of its own)."""
    start = size = 0
    for end, record in enumerate(records):
        value = record.value if isinstance(record.value, bytes) else b""
        lines = value.count(b"\n") + 1 if pack_format(record.message.headers) is not None else 1
        if size and size + lines > events:
            yield records[start:end]
            start, size = end, 0
        size += lines
    if start < len(records):
        yield records[start:]


def _claim(offsets: list[int], end: int) -> int:
    """What an examples record holding the examples before ``end`` (of clicks ``offsets``, in
    the order taken) claims: its highest clicks record, or the one before that when a later
    example belongs to the same record (a packed record's examples in two records).

    The highest, not the last: after a seek back a batch goes back to records it took before
    (each seek goes to the next offset not yet out, or below it, so what went out stays one
    run). Claiming the last record there made the next batch send the records between it and
    the highest again as first-time examples, unflagged."""
    highest = max(offsets[:end])
    return highest - 1 if highest in offsets[end:] else highest


def broker_credentials(settings: Settings) -> faust.types.auth.CredentialsT | None:
    """The Kafka security settings as Faust credentials (None: plaintext, Faust's default)."""
    context = settings.kafka_ssl_context()
    if settings.kafka_security_protocol.startswith("SASL"):
        password = settings.kafka_sasl_password
        # With an ssl_context Faust speaks SASL_SSL, without one SASL_PLAINTEXT.
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=password.get_secret_value() if password else "",
            ssl_context=context,
            mechanism=settings.kafka_sasl_mechanism,
        )
    return faust.SSLCredentials(context) if context is not None else None
