"""The online learner of a worker: micro-batches of training examples in, vectors in Qdrant out.

Torch steps run on one dedicated thread, never on the event loop, so Kafka heartbeats and HTTP
stay responsive; a bounded queue between the ``learn`` agent and that thread back-pressures
the agent when training falls behind instead of buffering without limit.

Each micro-batch is first *scored* (prequential, test-then-train: the live model ranks the
next item of every example before it learns from it), then trained on; the items whose
vectors changed are fused with their static sources and upserted, batched, to Qdrant, and
the sessions of the batch get fresh live session vectors. Checkpoints (weights, optimiser
state, id maps) record the example offsets they cover; on start the learner restores the
last one and the worker first learns the examples taken after those offsets, so a crash
loses no learned state.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from onevec.models.alignment import linear_cka, procrustes
from onevec.models.catalog import attribute_tokens, load_attributes  # noqa: F401 - re-export until callers move
from onevec.models.fusion import click_scaled_weights, fuse_batch
from onevec.models.online.trainer import OnlineTrainer
from onevec.models.ranking import PrequentialScore, target_ranks
from onevec.models.static.bundle import CatalogJournal, StaticModels, StaticVectors, load_bundle
from onevec.monitoring import metrics
from onevec.monitoring.drift import DriftConfig, DriftMonitor
from onevec.streams.qdrant import (
    ItemRecord,
    PointRow,
    QdrantStore,
    SessionRecord,
    UpsertBuffer,
    build_item_points,
    build_session_points,
)
from onevec.streams.settings import Settings

if TYPE_CHECKING:
    from onevec.models.catalog import CatalogItem

__all__ = ["Learner"]

log = logging.getLogger(__name__)

DRIFT_UPDATE_SECONDS = 1.0  # how often the drift monitor takes the queued vector updates
IDLE_TICK_SECONDS = 1.0  # without examples, upkeep (sweep, drift, checkpoint) runs this often


# One examples record: ("topic:partition", offset, its examples).
Record = tuple[str, int, list[dict[str, Any]]]


@dataclass
class Published:
    """What one learning round hands to Qdrant, built on the learner thread (validation,
    fusion and point building are per-item work that would otherwise stall the event loop)."""

    loss: float
    items: list[tuple[str, PointRow]]
    sessions: list[tuple[str, PointRow]]


class Learner:
    def __init__(
        self,
        settings: Settings,
        store: QdrantStore,
        attributes: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        if settings.learner_torch_threads:
            torch.set_num_threads(settings.learner_torch_threads)  # process-wide, see Settings
            # numpy's BLAS too (prequential ranks, drift sums): its pool spinning for cores the
            # event loop and torch hold made a 256 x 1,682 product 2x slower on an idle machine.
            threadpool_limits(settings.learner_torch_threads, user_api="blas")
        self.trainer = OnlineTrainer(settings.model_config_for_training())
        self.attributes = attributes or {}
        for item_id, attrs in self.attributes.items():
            self.trainer.set_attributes(item_id, attribute_tokens(attrs))
        self.buffer, self.session_buffer = (
            UpsertBuffer(
                store,
                collection=collection,
                max_batch=settings.upsert_batch_points,
                max_delay_ms=settings.upsert_interval_ms,
                max_pending=settings.upsert_max_pending_points,
            )
            for collection in ("items", "sessions")
        )
        # Read at scrape time: while Qdrant is down the learner blocks in buffer.add().
        metrics.UPSERT_BUFFER_PENDING.set_function(lambda: self.buffer.pending)
        metrics.UPSERT_BUFFER_RETRIES.set_function(lambda: self.buffer.retries)
        metrics.UPSERT_BUFFER_FAILED_BATCHES.set_function(lambda: self.buffer.failures)
        # Bounded in examples (records vary from one example to a whole micro-batch): a learner
        # that falls behind back-pressures the agent instead of buffering.
        self.queue: asyncio.Queue[Record] = asyncio.Queue()
        self.queued_examples = 0
        self.max_queued_examples = settings.learner_queue_batches * settings.learner_batch_size
        self._space = asyncio.Event()
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onevec-learner")
        self.score = PrequentialScore()
        self._rng = random.Random(settings.model_seed)  # which examples prequential scoring samples
        self.event_counts: Counter[str] = Counter()
        self.offsets: dict[str, int] = {}
        self.checkpoint_path = settings.data_dir / "checkpoints" / "learner.pt"
        self._last_checkpoint = time.monotonic()
        self._dirty = False
        self._runner: asyncio.Task[None] | None = None
        self._busy = False  # the runner is between taking a batch and finishing it
        self.published: dict[str, np.ndarray] = {}  # unit vector last sent to Qdrant, per item
        self.stale = np.zeros(0, dtype=bool)  # per item row: moved, not clicked, not yet published
        self._last_sweep = time.monotonic()
        self._sweeping = False  # a sweep is spread over rounds (see _due_items)
        self._sweep_from = 0
        self._last_drift = 0.0
        self.rotation: np.ndarray | None = None  # onto the serving version, see align_to_serving
        # Static sources per item (docs/static.md): the built bundle's vectors, plus the items
        # the catalogue agent encoded since (journalled beside the checkpoint, restored on start).
        self.static_models: StaticModels | None = None
        self.static = StaticVectors()
        self.catalog_vectors = CatalogJournal(settings.data_dir / "checkpoints" / "catalog-vectors.pt")
        self._load_static()
        self.drift = DriftMonitor(
            DriftConfig.from_settings(settings),
            settings.model_dim,
            self.attributes,
            settings.predictability_labels,
        )
        # Click times (ingest, event) per item not yet visible in Qdrant, for the freshness histogram.
        self.unseen_clicks: dict[str, list[tuple[float | None, float | None]]] = {}
        self.buffer.on_written = self._observe_freshness

    # -- lifecycle ---------------------------------------------------------------------

    def restore(self) -> dict[str, int]:
        """Load the last checkpoint, if any; return the example offsets it covers."""
        if not self.checkpoint_path.exists():
            return {}
        self.offsets = self.trainer.load_checkpoint(self.checkpoint_path)
        log.warning("restored checkpoint %s (%d steps)", self.checkpoint_path, self.trainer.steps)
        metrics.CHECKPOINT_RESTORES.inc()
        return dict(self.offsets)

    async def align_to_serving(self, max_anchors: int = 5000) -> float | None:
        """Rotate this model onto the vectors already served from Qdrant (a previous version).

        Fits an orthogonal Procrustes rotation on the items present in both and applies it to
        every item and session vector from now on. Inner products are unchanged, so ranking is
        exactly the model's; consumers that keep raw coordinates see no random rotation.
        Returns the linear CKA between the versions on the anchors (None without anchors).
        """
        ids = self.trainer.item_encoder.item_ids()[:max_anchors]
        stored = [await self.store.get_item(item_id) for item_id in ids]
        anchors = [
            (i, s.vectors["behaviour"])
            for i, s in zip(ids, stored, strict=True)
            if s and "behaviour" in s.vectors
        ]
        if len(anchors) < self.settings.model_dim:
            return None  # too few shared items to fit a rotation: serve the model as it is
        new = await self._in_thread(self.trainer.encode_items, [i for i, _ in anchors])
        old = np.asarray([v for _, v in anchors], dtype=np.float32)
        self.rotation = procrustes(new, old).astype(np.float32)
        cka = linear_cka(new, old)
        log.warning("aligned to the serving version on %d anchors (CKA %.3f)", len(anchors), cka)
        return cka

    async def publish_all(self) -> None:
        """Send every known item to Qdrant: after a restart the serving store may be empty
        (in-memory local mode) or hold an older version."""
        published = await self._in_thread(self._published_catalogue)
        await self.buffer.add_points(published.items)

    def _published_catalogue(self) -> Published:
        """On the learner thread: every known item, and the catalogue items the behaviour
        model never met (static sources only)."""
        ids = self.trainer.item_encoder.item_ids()
        self.trainer.item_encoder.changed_rows()  # drained: every item is published here
        items = self._material_changes(ids, set(ids))
        known = set(ids)
        unseen = {item_id: None for item_id in self.static.ids() if item_id not in known}
        return self._published(0.0, items | unseen, {}, {})

    def _load_static(self) -> None:
        bundle = load_bundle(self.settings.static_path)
        if bundle is not None:
            self.static_models, self.static = bundle
            if self.static_models.dim != self.settings.model_dim:
                raise ValueError(
                    f"static bundle {self.static_models.version} is {self.static_models.dim}-d, "
                    f"the model is {self.settings.model_dim}-d: rebuild it with --dim"
                )
            log.warning("static bundle %s: %d items", self.static_models.version, len(self.static))
        self.catalog_vectors.load()
        self.catalog_vectors.apply_to(self.static)

    async def upsert_catalog(self, item: CatalogItem) -> bool:
        """A new or changed catalogue record: encode it with the static encoders and upsert the
        item at once, so it has a unified vector before its first click. Returns False when the
        item has no source at all (no known token, no image, unknown to the behaviour model):
        its point, if any, is deleted, so stale text/image vectors are not served."""
        behaviour = await self._in_thread(self._apply_catalog_record, item)
        return await self._write_catalog_item(item.item_id, behaviour)

    async def remove_catalog(self, item_id: str) -> None:
        """A tombstone: the item leaves the catalogue. Its static sources and attributes go;
        the point keeps only behaviour if the model knows the item, else it is deleted."""
        behaviour = await self._in_thread(self._apply_catalog_removal, item_id)
        await self._write_catalog_item(item_id, behaviour)

    async def _write_catalog_item(self, item_id: str, behaviour: np.ndarray | None) -> bool:
        records = self._item_records({item_id: behaviour}, time.time())
        if not records:  # no source at all
            # A pending upsert of the item is written first, or it could land after the delete.
            await self.buffer.flush()
            await self.store.delete_items([item_id])
            return False
        await self.buffer.add(records[0])
        metrics.ITEMS_UPSERTED.set(self.buffer.upserted_points)
        return True

    def _apply_catalog_removal(self, item_id: str) -> np.ndarray | None:
        self.static.set(item_id, {})
        self.catalog_vectors.record(item_id, {})  # durable before the tombstone's offset commits
        self.attributes.pop(item_id, None)
        if self.trainer.item_encoder.item_vocab.get(item_id) is None:
            return None
        return self._served(self.trainer.encode_items([item_id]))[0]

    def _apply_catalog_record(self, item: CatalogItem) -> np.ndarray | None:
        """On the learner thread: the item's static sources, attributes and attribute tokens
        replaced by the record's; returns its behaviour vector if the model knows the item."""
        sources = {}
        if self.static_models is not None:
            sources = self.static_models.encode([item.document], [item.image])[0]
        self.static.set(item.item_id, sources)
        self.catalog_vectors.record(item.item_id, sources)  # durable before the offset commits
        self._dirty = True  # set_attributes below changes the model too
        self.attributes[item.item_id] = dict(item.attributes)
        tokens = attribute_tokens(item.attributes)
        if tokens:
            self.trainer.set_attributes(item.item_id, tokens)
        if self.trainer.item_encoder.item_vocab.get(item.item_id) is None:
            return None
        return self._served(self.trainer.encode_items([item.item_id]))[0]

    def _item_records(self, items: dict[str, np.ndarray | None], now: float) -> list[ItemRecord]:
        """The whole points of these items (item -> behaviour vector, None if the model does not
        know it): behaviour and static sources, fused over the sources each really has, in one
        batch. An item with no source at all gets no record."""
        ids = list(items)
        sources = [self.static.sources(item_id) for item_id in ids]
        for found, behaviour in zip(sources, items.values(), strict=True):
            if behaviour is not None:
                found["behaviour"] = behaviour
        counts = [self.event_counts[item_id] for item_id in ids]
        unified = self.unified(sources, np.asarray(counts, dtype=np.float64))
        # An all-zero row: nothing known about the item yet (a catalogue item with no attribute
        # token and no click has a zero vector). Not an error, and nothing to publish.
        known = np.abs(unified).max(axis=1) > 0 if len(unified) else np.zeros(0, dtype=bool)
        version = self.trainer.steps
        return [
            ItemRecord(
                item_id=item_id,
                vectors={"unified": fused, **found},
                attributes=self.attributes.get(item_id, {}),
                model_version=version,
                updated_at=now,
                event_count=count,
            )
            for item_id, found, fused, count, usable in zip(ids, sources, unified, counts, known, strict=True)
            if usable
        ]

    async def checkpoint(self) -> None:
        await self._in_thread(self._save_checkpoint)

    def _save_checkpoint(self) -> None:
        self.trainer.save_checkpoint(self.checkpoint_path, self.offsets)
        self.catalog_vectors.compact()
        self._last_checkpoint = time.monotonic()
        self._dirty = False
        metrics.CHECKPOINTS_WRITTEN.inc()

    async def close(self, drain_seconds: float = 20.0) -> None:
        """Stop learning, drain the sink, write a last checkpoint.

        Examples already queued are learned first (for at most ``drain_seconds``): the group has
        committed their offsets, so a worker that takes these partitions over would start after
        them and nobody would learn them (measured: 2 items never reached Qdrant in a two-worker
        rebalance). Whatever is left after that is not covered by the checkpoint, so a restart
        of this worker learns it."""
        if self._runner is not None:
            deadline = time.monotonic() + drain_seconds
            while (self._busy or not self.queue.empty()) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        await self.buffer.close(timeout=30)
        try:
            await self.session_buffer.close(timeout=10)
        except TimeoutError as error:  # live session vectors are rewritten by the next event
            log.warning("%s", error)
        await self.checkpoint()
        self.thread.shutdown(wait=True)

    # -- the work ----------------------------------------------------------------------

    async def submit(self, record: Record) -> None:
        """Queue one examples record; waits while the queue holds a full backlog."""
        tp, offset, examples = record
        if offset <= self.offsets.get(tp, -1):
            # Redelivered after a restart or rebalance, and already learned (it is covered by the
            # restored checkpoint or an earlier batch): learning it twice would overweight it.
            return
        while self.queued_examples >= self.max_queued_examples:
            self._space.clear()
            await self._space.wait()
        self.queued_examples += len(examples)
        self.queue.put_nowait(record)

    async def run(self) -> None:
        self._runner = asyncio.current_task()
        while True:
            try:
                first = await asyncio.wait_for(self.queue.get(), timeout=IDLE_TICK_SECONDS)
            except TimeoutError:
                try:
                    await self._idle()
                except Exception:  # noqa: BLE001 - e.g. Qdrant down: the next tick tries again
                    log.exception("idle upkeep failed")
                continue
            self._busy = True
            try:
                records = await self._fill_batch(first)
                self.queued_examples -= sum(len(examples) for _, _, examples in records)
                self._space.set()
                metrics.LEARNER_QUEUE.set(self.queued_examples)
                await self._process(records)
            except Exception:  # noqa: BLE001 - a bad batch must not stop learning
                log.exception("learner step failed; batch skipped")
                metrics.LEARNER_ERRORS.inc()
            finally:
                self._busy = False

    async def _idle(self) -> None:
        """No examples for a tick: what rounds otherwise do on the way. Items that only moved
        are still swept into Qdrant when due, drift windows still close, and what was learned
        since the last checkpoint goes to disk once ``checkpoint_interval_seconds`` passed."""
        published = await self._in_thread(self._upkeep)
        if published.items:
            await self._upsert(published, [])
        interval = self.settings.checkpoint_interval_seconds
        if self._dirty and time.monotonic() - self._last_checkpoint >= interval:
            await self.checkpoint()

    def _upkeep(self) -> Published:
        """On the learner thread: the due sweep and the drift update, without a training step."""
        items = self._material_changes(*self._due_items(set(), len(self.trainer.item_encoder.item_vocab)))
        self._update_drift()
        return self._published(0.0, items, {}, {})

    def _update_drift(self) -> None:
        # At most once a second, not per step: the alignment sums take the queued updates in
        # one batch (they are linear, so nothing is lost) and the gauges are scraped no faster.
        if time.monotonic() - self._last_drift >= DRIFT_UPDATE_SECONDS:
            self.drift.after_step(self.published, self.event_counts)
            self._last_drift = time.monotonic()

    async def _fill_batch(self, first: Record) -> list[Record]:
        """Records for one learning round: what is queued, until ``learner_batch_size``
        examples, waiting at most ``learner_batch_within_seconds`` for more. (Batching here,
        not with Faust's take(), which holds a partial batch until another record arrives.)"""
        records = [first]
        size = len(first[2])
        batch = self.settings.learner_batch_size
        deadline = time.monotonic() + self.settings.learner_batch_within_seconds
        while size < self.settings.learner_round_examples:
            try:
                record = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or size >= batch:  # waits only to fill one batch
                    break
                try:
                    record = await asyncio.wait_for(self.queue.get(), timeout=remaining)
                except TimeoutError:
                    break
            records.append(record)
            size += len(record[2])
        return records

    async def learn_records(self, records: list[Record]) -> None:
        """Learn examples records directly, for records that do not come through the queue
        (those taken after the last checkpoint). They are a backlog, so they go in rounds as
        large as a queued backlog makes (see :meth:`_fill_batch`)."""
        group: list[Record] = []
        size = 0
        for record in records:
            group.append(record)
            size += len(record[2])
            if size >= self.settings.learner_round_examples:
                await self._process(group)
                group, size = [], 0
        if group:
            await self._process(group)

    async def _process(self, records: list[Record]) -> None:
        examples = [example for _, _, batch in records for example in batch]
        started = time.perf_counter()
        published = await self._in_thread(self._learn, examples)
        metrics.TRAIN_STEP_SECONDS.observe(time.perf_counter() - started)
        metrics.TRAIN_LOSS.set(published.loss)
        metrics.EXAMPLES_LEARNED.inc(len(examples))
        metrics.MODEL_VERSION.set(self.trainer.steps)
        metrics.ITEMS_KNOWN.set(len(self.published))
        for tp, offset, _ in records:
            self.offsets[tp] = max(offset, self.offsets.get(tp, -1))
        await self._upsert(published, examples)
        self._dirty = True
        if time.monotonic() - self._last_checkpoint > self.settings.checkpoint_interval_seconds:
            await self.checkpoint()

    def _learn(self, examples: list[dict[str, Any]]) -> Published:
        """On the learner thread: micro-batches of about ``learner_batch_size`` examples, each
        scored and learned; then, once per round, the points of what changed."""
        # A round is whole records (their offsets are what a checkpoint covers), so it rarely
        # is a multiple of the batch size. Equal steps, as many as full batches would make:
        # a small remainder step would move the model as far as a full one (the loss is a
        # mean), and such extra steps made a stationary replay look like drift.
        steps = max(1, round(len(examples) / self.settings.learner_batch_size))
        bounds = np.linspace(0, len(examples), steps + 1).round().astype(int)
        known_before = len(self.trainer.item_encoder.item_vocab)
        losses = [self._step(examples[start:end]) for start, end in itertools.pairwise(bounds.tolist())]
        for example in examples:
            if not example.get("duplicate"):
                self.event_counts[example["item_id"]] += 1
        # Sessions and items are encoded once per round, after its last step: a round's points
        # carry the latest vectors only, and the drift monitor sees exactly what Qdrant gets.
        sessions = {e["session_id"]: [*e["prefix"], e["item_id"]] for e in examples}
        session_vectors = self._served(self.trainer.encode_sessions(list(sessions.values())))
        clicked = {e["item_id"] for e in examples}
        items = self._material_changes(*self._due_items(clicked, known_before))
        self._update_drift()
        users = {e["session_id"]: e["user_id"] for e in examples}
        live = zip(sessions.items(), session_vectors, strict=True)
        return self._published(
            float(np.mean(losses)) if losses else 0.0,
            items,
            {sid: (kept, vector) for (sid, kept), vector in live},
            users,
        )

    def _published(
        self,
        loss: float,
        items: dict[str, np.ndarray | None],
        sessions: dict[str, tuple[list[str], np.ndarray]],
        users: dict[str, str],
    ) -> Published:
        now = time.time()
        dim = self.settings.model_dim
        item_points, rejected = build_item_points(self._item_records(items, now), dim)
        for item_id, reason in rejected:  # e.g. a NaN vector: that item is skipped, not the batch
            metrics.UPSERT_ERRORS.labels(collection="items").inc()
            log.error("item %r not published: %s", item_id, reason)
        keep = self.settings.max_session_items
        session_records = [
            SessionRecord(
                session_id=sid, vector=vector, user_id=users.get(sid), updated_at=now, items=kept[-keep:]
            )
            for sid, (kept, vector) in sessions.items()
        ]
        session_points, rejected = build_session_points(session_records, dim)
        for sid, reason in rejected:
            metrics.UPSERT_ERRORS.labels(collection="sessions").inc()
            log.error("session %r not published: %s", sid, reason)
        return Published(loss=loss, items=item_points, sessions=session_points)

    def _step(self, examples: list[dict[str, Any]]) -> float:
        """Learn (train) and score (test) with the model as it was before the step; runs on
        the learner thread. Returns the step's loss."""
        # The training forward pass computes every prefix's session vector with the model as
        # it was before the step: scoring reuses those and the item vectors taken before it.
        fresh = [e for e in examples if not e.get("duplicate")]  # the rows of those vectors
        known_before = len(self.trainer.item_encoder.item_vocab)
        rate = self.settings.prequential_sample_rate
        budget = self.settings.prequential_item_budget
        # Whole steps are sampled above the budget: an unscored step needs no item matrix.
        scored = []
        if known_before <= budget or self._rng.random() < budget / known_before:
            scored = [
                i for i, e in enumerate(fresh) if e.get("prefix") and (rate >= 1 or self._rng.random() < rate)
            ]
        matrix = self.trainer.item_encoder.item_matrix().numpy() if scored and known_before else None
        step = self.trainer.learn_with_sessions(examples)
        prefixes = [fresh[i]["prefix"] for i in scored]
        ranks = target_ranks(
            self.trainer,
            prefixes,
            [fresh[i]["item_id"] for i in scored],
            sessions=step.sessions[scored],
            matrix=matrix,
            exclude=self.trainer.prefix_pairs(step, scored, prefixes),
        )
        for rank in ranks:
            self.score.add(rank)
        metrics.PREQUENTIAL_SCORED.set(self.score.scored)
        metrics.PREQUENTIAL_HITS.set(self.score.hits)
        metrics.PREQUENTIAL_RR.set(self.score.reciprocal_rank)
        self.drift.observe_step(step.loss, [rank is not None for rank in ranks], len(examples))
        return step.loss

    def _due_items(self, clicked: set[str], known_before: int) -> tuple[list[str], set[str]]:
        """(items to consider publishing, items to publish whatever they moved).

        Clicked items and items new to the model go out at once: that is the freshness users
        see. Every step also moves items nobody clicked (through a shared attribute token or a
        sampled negative), on MovieLens nearly every item every step; those are collected and
        swept once per ``upsert_refresh_seconds``, so the sink writes each of them at most that
        often instead of once per step."""
        encoder = self.trainer.item_encoder
        vocab = encoder.item_vocab
        if len(self.stale) < len(vocab):  # one flag per item row, grown with the table
            self.stale = np.concatenate([self.stale, np.zeros(2 * len(vocab) - len(self.stale), dtype=bool)])
        self.stale[encoder.changed_rows()] = True
        always_rows = [row for item in clicked if (row := vocab.get(item)) is not None]
        always_rows.extend(range(known_before, len(vocab)))  # new to the model
        self.stale[always_rows] = False
        always = {vocab.key(row) for row in always_rows}
        now = time.monotonic()
        if not self._sweeping and now - self._last_sweep < self.settings.upsert_refresh_seconds:
            return sorted(always), always
        # A sweep takes at most upsert_sweep_items per round, from where the last round stopped,
        # so a large catalogue is swept over several rounds instead of in one burst of points.
        stale = np.flatnonzero(self.stale)
        order = np.concatenate([stale[stale >= self._sweep_from], stale[stale < self._sweep_from]])
        swept = order[: self.settings.upsert_sweep_items]
        self.stale[swept] = False
        self._sweep_from = int(swept[-1]) + 1 if len(swept) else 0
        self._sweeping = len(swept) < len(order)
        if not self._sweeping:
            self._last_sweep = now
        return sorted(always | {vocab.key(row) for row in swept.tolist()}), always

    def _served(self, vectors: np.ndarray) -> np.ndarray:
        return vectors if self.rotation is None else vectors @ self.rotation

    def _material_changes(self, changed: list[str], always: set[str]) -> dict[str, np.ndarray]:
        """The changed items worth re-publishing: those in ``always`` (clicked ones), never
        published ones, and any whose direction moved by more than ``upsert_min_change``
        (cosine distance) since it was last published.
        A shared attribute token moves every item carrying it a little on every step; writing
        them all each time would make the sink the bottleneck for no visible change."""
        if not changed:
            return {}
        vectors = self._served(self.trainer.encode_items(changed))
        units = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        lasts = [self.published.get(item_id) for item_id in changed]
        due = np.fromiter(
            (last is None or item_id in always for item_id, last in zip(changed, lasts, strict=True)),
            dtype=bool,
            count=len(changed),
        )
        seen = np.flatnonzero(~due)
        if len(seen):
            # One batched cosine for all published items instead of one numpy call per item.
            previous = np.array([lasts[i] for i in seen])
            moved = 1.0 - np.einsum("ij,ij->i", units[seen], previous) > self.settings.upsert_min_change
            due[seen[moved]] = True
        publish = {}
        for i in np.flatnonzero(due):
            item_id, unit = changed[i], units[i].copy()  # a copy: a row view would keep all of units alive
            publish[item_id] = vectors[i]
            self.drift.observe_update(item_id, lasts[i], unit, sampled=item_id in always)
            self.published[item_id] = unit
        return publish

    async def _upsert(self, published: Published, examples: list[dict[str, Any]]) -> None:
        written = {item_id for item_id, _ in published.items}
        for example in examples:
            if example["item_id"] in written:
                clicks = self.unseen_clicks.setdefault(example["item_id"], [])
                clicks.append((example.get("ingested_at"), example.get("timestamp")))
        # A round's points are a batch already: written at once (freshness), while the
        # learner goes on with its next round; a newer vector replaces one still waiting.
        await self.buffer.add_points(published.items, now=True)
        await self.session_buffer.add_points(published.sessions, now=True)
        metrics.ITEMS_UPSERTED.set(self.buffer.upserted_points)

    def _observe_freshness(self, item_ids: list[str]) -> None:
        """These items' upsert returned: their clicks are now visible in Qdrant."""
        now = time.time()
        for item_id in item_ids:
            for ingested_at, event_time in self.unseen_clicks.pop(item_id, ()):
                if ingested_at is not None:
                    metrics.FRESHNESS_SECONDS.labels(since="ingest").observe(max(0.0, now - ingested_at))
                if event_time is not None:
                    metrics.FRESHNESS_SECONDS.labels(since="event").observe(max(0.0, now - event_time))

    def unified(self, sources: list[dict[str, np.ndarray]], clicks: np.ndarray) -> np.ndarray:
        """Unified vectors of many items (sources per item, clicks per item) in one ``fuse_batch``:
        (n, dim), a zero row for an item with no source at all. With static sources present, a
        rarely clicked item leans on them (behaviour's weight grows with its clicks)."""
        dim = self.settings.model_dim
        fused = np.zeros((len(sources), dim), dtype=np.float32)
        names = sorted({name for found in sources for name in found})
        if not sources or not names:
            return fused
        matrices = {}
        for name in names:
            matrix = np.zeros((len(sources), dim), dtype=np.float32)
            rows = [row for row, found in enumerate(sources) if name in found]
            matrix[rows] = np.array([sources[row][name] for row in rows])
            matrices[name] = matrix
        weights: dict[str, Any] = dict(self.settings.fusion_weights)
        several = np.array([len(found) > 1 for found in sources])
        if several.any():
            # Only items with another source lean on it; a behaviour-only item keeps its vector.
            scaled = click_scaled_weights(weights, clicks, self.settings.clicks_for_full_weight)
            for name in weights:
                weights[name] = np.where(several, scaled[name], weights[name])
        return fuse_batch(matrices, {name: weights[name] for name in names})

    # -- lookups (serialised with training on the learner thread) ----------------------

    async def recommend_for_items(self, items: list[str], k: int) -> list[tuple[str, float]]:
        # Scores are inner products, which the serving rotation does not change.
        return await self._in_thread(self.trainer.recommend, items, k, set(items))

    async def _in_thread(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.thread, fn, *args)
