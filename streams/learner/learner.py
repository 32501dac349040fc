"""The online learner of a worker: examples records in, vectors in Qdrant out.

Torch steps run on one dedicated thread, never on the event loop, so Kafka heartbeats and HTTP
stay responsive; a queue bounded in examples between the ``learn`` agent and that thread
back-pressures the agent when training falls behind (:mod:`.queue`).

A learning round (:class:`~onevec.models.online.round.LearningRound`) scores every example
before learning it (prequential HR@20 / MRR@20); then the items worth re-publishing
(:mod:`.publish`) are fused with their static sources (:mod:`.item_sources`), rotated onto the
served version (:mod:`.serving`) and upserted, batched, to Qdrant, and the round's sessions and
users get fresh live vectors (:mod:`.users`). Checkpoints record the example offsets they cover
(:mod:`.checkpoints`), so a crash loses no learned state, and what the store holds as of each
one (:mod:`.publication`), so a restart reopens the store rather than publishing every item.
Lookups are ranked by Qdrant (:mod:`.recommend`).
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from onevec.models.catalog import CatalogItem
from onevec.models.clickstream.examples import ExampleRecord
from onevec.models.fusion import normalise
from onevec.models.online.item_encoder import ItemEncoder
from onevec.models.online.round import LearningRound, RoundConfig
from onevec.models.online.trainer import OnlineTrainer
from onevec.models.ranking import PrequentialScore
from onevec.monitoring import metrics
from onevec.monitoring.drift import DriftConfig, DriftMonitor, VectorUpdates
from onevec.streams.learner.checkpoints import Checkpoints
from onevec.streams.learner.forgetting import ForgettingReport
from onevec.streams.learner.item_sources import ItemSources
from onevec.streams.learner.publication import Publication, SavedPublication, point_inputs, store_location
from onevec.streams.learner.publish import PublishPolicy
from onevec.streams.learner.queue import ExampleQueue, ExamplesBatch
from onevec.streams.learner.recommend import Recommendation, Recommender
from onevec.streams.learner.serving import ServingRotation
from onevec.streams.learner.users import UserContext, every_user, user_contexts, user_records
from onevec.streams.qdrant import (
    PointRow,
    QdrantStore,
    SessionRecord,
    UpsertBuffer,
    build_item_points,
    build_session_points,
    build_user_points,
)
from onevec.streams.settings import Settings

__all__ = ["ItemClicks", "Learner", "Published", "settle_heap"]

log = logging.getLogger(__name__)

DRIFT_UPDATE_SECONDS = 1.0  # how often the drift monitor takes the queued vector updates
IDLE_TICK_SECONDS = 1.0  # without examples, upkeep (sweep, drift, checkpoint) runs this often
USERS_PER_PUBLISH = 4096  # users encoded at once when a starting worker publishes them all
CATALOGUE_CHUNK = 16_384  # items encoded and built into points at once by the same
REOPEN_SAMPLE = 4096  # published items read back from the store before it is reopened (~0.4 s at 100k)

_P = ParamSpec("_P")
_T = TypeVar("_T")


@dataclass
class Published:
    """What one learning round hands to Qdrant, built on the learner thread (validation,
    fusion and point building are per-item work that would otherwise stall the event loop)."""

    loss: float
    items: list[tuple[str, PointRow]]
    sessions: list[tuple[str, PointRow]]
    users: list[tuple[str, PointRow]]


def settle_heap() -> None:
    """Once per process, when learning starts: collect, then move every live object to the
    collector's permanent generation (``gc.freeze``). The catalogue, the model's maps and the
    libraries are built once and kept; a full collection walking them stalled a learner round
    for 0.24 s at 10,000 items (7 ms frozen). Objects made later are collected as usual; the
    frozen ones are still freed by reference counting."""
    if gc.get_freeze_count():
        return
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    log.info("froze %d startup objects in %.2f s", gc.get_freeze_count(), time.perf_counter() - started)


class ItemClicks(Mapping[str, int]):
    """Clicks learned per item (the payload's ``event_count``), read off the item encoder's
    click counts rather than kept beside them: those are part of the model's checkpoint, written
    in the same file as the example offsets it covers. So a restarted learner republishes every
    item with its whole count, and the examples after the checkpoint, learned again, count once.
    Redelivered duplicates are not counted (the encoder skips them)."""

    def __init__(self, encoder: ItemEncoder) -> None:
        self.encoder = encoder

    def __getitem__(self, item_id: str) -> int:
        row = self.encoder.item_vocab.get(item_id)
        if row is None:
            raise KeyError(item_id)
        return int(self.encoder.counts.numpy()[row])

    def __iter__(self) -> Iterator[str]:
        return iter(self.encoder.item_vocab.keys())

    def __len__(self) -> int:
        return len(self.encoder.item_vocab)

    def many(self, item_ids: Sequence[str]) -> list[int]:
        """The counts of ``item_ids``, 0 for an item never clicked."""
        return self.encoder.clicks(item_ids).astype(np.int64).tolist()


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
        self.round = LearningRound(
            self.trainer,
            RoundConfig(
                batch_size=settings.learner_batch_size,
                sample_rate=settings.prequential_sample_rate,
                item_budget=settings.prequential_item_budget,
                background_ranking=settings.prequential_ranking_thread,
                seed=settings.model_seed,
            ),
        )
        self.checkpoints = Checkpoints(settings)
        self.sources = ItemSources(
            self.trainer,
            attributes or {},
            settings.static_path,
            self.checkpoints.file("catalog-vectors.pt"),
            settings.fusion_weights,
            settings.clicks_for_full_weight,
        )
        self.rotation = ServingRotation()
        static = self.sources.static_models
        self.publication = Publication(
            self.checkpoints.directory,
            store_location(settings, store.collections.values()),
            point_inputs(settings, static.version if static is not None else None),
        )
        # Every item is in the store as published (after the start's full publish or a reopen):
        # from then on each checkpoint's publish state can be vouched for.
        self.serving = False
        self._vouching: asyncio.Task[None] | None = None
        # Held while a checkpoint is saved, and by a catalogue change from its journal entry to
        # its point being queued: a journal entry folded by a checkpoint has its point queued
        # before the flush that checkpoint's record waits for.
        self._checkpointing = asyncio.Lock()
        self.publish = PublishPolicy(
            self.trainer.item_encoder,
            self._served_vectors,
            min_change=settings.upsert_min_change,
            refresh_seconds=settings.upsert_refresh_seconds,
            sweep_items=settings.upsert_sweep_items,
        )
        self.buffer, self.session_buffer, self.user_buffer = (
            UpsertBuffer(
                store,
                collection=collection,
                max_batch=settings.upsert_batch_points,
                max_delay_ms=settings.upsert_interval_ms,
                max_pending=settings.upsert_max_pending_points,
            )
            for collection in ("items", "sessions", "users")
        )
        history = self.trainer.user_history
        self.recommender = Recommender(
            store,
            lambda: self.trainer.repeat_gate,
            decay=1.0 if history is None else history.decay,
            follows=lambda: self.trainer.item_follows,
        )
        # Read at scrape time: while Qdrant is down the learner blocks in buffer.add().
        metrics.ITEMS_UPSERTED.set_function(lambda: self.buffer.upserted_points)
        metrics.ITEMS_KNOWN.set_function(lambda: len(self.publish.published))
        metrics.UPSERT_BUFFER_PENDING.set_function(lambda: self.buffer.pending)
        metrics.UPSERT_BUFFER_RETRIES.set_function(lambda: self.buffer.retries)
        metrics.UPSERT_BUFFER_COALESCED.set_function(lambda: self.buffer.coalesced)
        metrics.UPSERT_BUFFER_FAILED_BATCHES.set_function(lambda: self.buffer.failures)
        self.queue = ExampleQueue(
            max_examples=settings.learner_queue_batches * settings.learner_batch_size,
            batch_size=settings.learner_batch_size,
            round_examples=settings.learner_round_examples,
            batch_within_seconds=settings.learner_batch_within_seconds,
        )
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onevec-learner")
        self.event_counts = ItemClicks(self.trainer.item_encoder)
        self.forgetting = ForgettingReport(self.trainer)
        self.drift = DriftMonitor(
            DriftConfig.from_settings(settings),
            settings.model_dim,
            self.sources.attributes,
            settings.predictability_labels,
        )
        self._last_drift = 0.0
        self._runner: asyncio.Task[None] | None = None
        self._busy = False  # the runner is between taking a round and finishing it
        # Click times (ingest, event) per item not yet visible in Qdrant, for the freshness histogram.
        self.unseen_clicks: dict[str, list[tuple[float | None, float | None]]] = {}
        self.buffer.on_written = self._observe_freshness

    @property
    def score(self) -> PrequentialScore:
        return self.round.score

    @property
    def offsets(self) -> dict[str, int]:
        return self.checkpoints.offsets

    # -- lifecycle ---------------------------------------------------------------------

    def restore(self) -> dict[str, int]:
        """Load the last checkpoint, if any; return the example offsets it covers."""
        return self.checkpoints.restore(self.trainer)

    async def align_to_serving(self, max_anchors: int = 5000) -> float | None:
        """Rotate this model onto the vectors Qdrant already serves (a previous version); the
        linear CKA between the versions on the shared items, None without enough of them."""
        ids = self.trainer.item_encoder.item_ids()[:max_anchors]
        return await self.rotation.fit(
            self.store,
            ids,
            lambda anchors: self._in_thread(self.trainer.encode_items, anchors),
            self.settings.model_dim,
        )

    async def open_serving(self) -> bool:
        """Before learning: reopen the store the restored checkpoint's record vouches for, or
        align this model to what the store serves and publish every item and user. True when
        reopened.

        The rule (docs/operations.md, "Restarts"): the store is reopened only when it holds what
        the restored checkpoint's publish state says was published (the record names that state,
        this store and these point inputs, the store has at least the recorded points, and each
        of a sample of items read back holds the recorded vector or a point written at or after
        the checkpoint's model version). What changed
        after the checkpoint is then published as it is learned again: the examples after its
        offsets (the gap read, and redelivered records) republish every item they click and,
        through the sweep, every item they move against the restored state; catalogue records
        journalled after it are written again here. That also rewrites the points a lost process
        published after its last checkpoint (kill -9), where they matter. Anything else (no
        checkpoint, another model version, another or an emptied store, changed fusion or static
        inputs) takes the full path: a Procrustes fit onto the stored vectors, then every item,
        since the rotation moves every served coordinate."""
        saved = self.publication.load(self.checkpoints.path) if self.checkpoints.restored else "no checkpoint"
        refused = await self._reopen(saved) if isinstance(saved, SavedPublication) else saved
        if refused is not None:
            log.warning("publishing every item: %s", refused)
            self.publication.withdraw()
            await self.align_to_serving()
            await self.publish_all()
        self.serving = True
        return refused is None

    async def _reopen(self, saved: SavedPublication) -> str | None:
        """Continue from ``saved`` if the store holds it; else why not."""
        items, users = await self.store.count("items"), await self.store.count("users")
        if items < saved.items or users < saved.users:
            return (
                f"the store holds {items} item and {users} user points, the checkpoint's record "
                f"{saved.items} and {saved.users}"
            )
        units, rows = saved.policy["units"], np.flatnonzero(saved.policy["has_unit"])
        vocab = self.trainer.item_encoder.item_vocab
        sample = np.random.default_rng(0).choice(rows, min(len(rows), REOPEN_SAMPLE), replace=False)
        index = {vocab.key(row): row for row in sample.tolist()}
        stored = await self.store.get_items(list(index))
        # Each point read back holds exactly the recorded vector, or was written at or after the
        # checkpoint's model version (by the lost process: learned again below). A store restored
        # from an older copy, or written by another model, has points that are neither.
        newer = np.array(
            [item.payload.get("model_version", -1) >= saved.steps for item in stored], dtype=bool
        )
        if stored:
            read = normalise(np.asarray([item.vectors["behaviour"] for item in stored]))
            recorded = normalise(units[[index[item.item_id] for item in stored]])
            newer |= np.einsum("ij,ij->i", read, recorded) > 1.0 - 1e-4
        if len(stored) < len(sample) or not newer.all():
            return (
                f"of {len(sample)} published items read back, {len(sample) - len(stored)} are missing and"
                f" {np.count_nonzero(~newer)} hold neither the recorded vector nor a newer one"
            )
        self.publish.load_state_dict(saved.policy)
        self.rotation.matrix = saved.rotation
        for item_id in self.sources.since_checkpoint:
            await self._write_catalog_item(item_id, await self._in_thread(self._behaviour, item_id))
        # Last, after the calls that can fail (the start is then retried): the drift monitor takes
        # the served vectors once, as a full publish would have shown them (a copy: the policy's
        # own matrix changes as items are published).
        self.drift.observe(VectorUpdates.first(vocab.keys_at(rows.tolist()), normalise(units[rows])))
        log.warning(
            "reopened the store: %d item points, as published by the restored checkpoint; %d"
            " catalogue items journalled after it written again",
            items,
            len(self.sources.since_checkpoint),
        )
        return None

    async def publish_all(self) -> None:
        """Send every known item and user to Qdrant: after a restart the serving store may be
        empty (in-memory local mode) or hold an older version."""
        chunks = self.publish_catalogue()
        while (published := await self._in_thread(next, chunks, None)) is not None:
            await self.buffer.add_points(published.items)
        history = self.trainer.user_history
        latest = {} if history is None else await self._in_thread(every_user, history)
        users = list(latest.items())
        for start in range(0, len(users), USERS_PER_PUBLISH):
            chunk = dict(users[start : start + USERS_PER_PUBLISH])
            await self.user_buffer.add_points(await self._in_thread(self._user_points, chunk, {}))

    def publish_catalogue(self) -> Iterator[Published]:
        """Every known item, and the catalogue items the behaviour model never met (static
        sources only), ``CATALOGUE_CHUNK`` items a chunk: each ``next`` is learner-thread work.
        Chunks, so a million items' points never exist at once."""
        ids = self.publish.everything()
        for start in range(0, len(ids), CATALOGUE_CHUNK):
            chunk = ids[start : start + CATALOGUE_CHUNK]
            yield self._published(0.0, self._changes(chunk, set(chunk)))
        unseen = self.sources.static_only()
        for start in range(0, len(unseen), CATALOGUE_CHUNK):
            yield self._published(0.0, dict.fromkeys(unseen[start : start + CATALOGUE_CHUNK]))

    async def upsert_catalog(self, item: CatalogItem) -> bool:
        """A new or changed catalogue record: encoded with the static encoders and upserted at
        once, so the item has a unified vector before its first click. Returns False when the
        item has no source at all (no known token, no image, unknown to the behaviour model):
        its point, if any, is deleted, so stale text/image vectors are not served."""
        return await self._catalog_change(item.item_id, functools.partial(self._apply_catalog_record, item))

    async def remove_catalog(self, item_id: str) -> None:
        """A tombstone: the item leaves the catalogue. Its static sources and attributes go;
        the point keeps only behaviour if the model knows the item, else it is deleted."""
        await self._catalog_change(item_id, functools.partial(self._apply_catalog_removal, item_id))

    async def _catalog_change(self, item_id: str, apply: Callable[[], np.ndarray | None]) -> bool:
        async with self._checkpointing:
            behaviour = await self._in_thread(apply)
            if await self._queue_catalog_item(item_id, behaviour):
                return True
        # Outside the lock: the record is acknowledged only once the delete is done, so a crash
        # before that redelivers it, and a Qdrant outage here holds no checkpoint back.
        await self._delete_item(item_id)
        return False

    def _apply_catalog_record(self, item: CatalogItem) -> np.ndarray | None:
        self.sources.apply_record(item)
        self.checkpoints.dirty = True  # new attribute tokens change the model
        return self._behaviour(item.item_id)

    def _apply_catalog_removal(self, item_id: str) -> np.ndarray | None:
        self.sources.remove(item_id)
        return self._behaviour(item_id)

    def _behaviour(self, item_id: str) -> np.ndarray | None:
        """The served behaviour vector of a known item, None for an unknown one."""
        if self.trainer.item_encoder.item_vocab.get(item_id) is None:
            return None
        return self._served_vectors([item_id])[0]

    async def _write_catalog_item(self, item_id: str, behaviour: np.ndarray | None) -> None:
        if not await self._queue_catalog_item(item_id, behaviour):
            await self._delete_item(item_id)

    async def _queue_catalog_item(self, item_id: str, behaviour: np.ndarray | None) -> bool:
        """Queue the item's whole point; False when it has no source at all."""
        records = self.sources.records(
            {item_id: behaviour}, self.event_counts.many([item_id]), self.trainer.steps, time.time()
        )
        if not records:
            return False
        await self.buffer.add(records[0])
        return True

    async def _delete_item(self, item_id: str) -> None:
        # A pending upsert of the item is written first, or it could land after the delete.
        await self.buffer.flush()
        await self.store.delete_items([item_id])

    async def checkpoint(self) -> None:
        """Save the model, and with it what was published; once the points queued before the
        save are written, vouch for it (in the background: a Qdrant outage delays the record,
        never the learner)."""
        async with self._checkpointing:
            token = await self._in_thread(self._save_checkpoint)
        if token is not None:
            if self._vouching is not None:
                self._vouching.cancel()  # this newer state supersedes the one it waited for
            self._vouching = asyncio.create_task(self._vouch(token))

    def _save_checkpoint(self) -> str | None:
        self.checkpoints.save(self.trainer)
        self.sources.journal.compact()
        if not self.serving:  # not every item is in the store yet: nothing to vouch for
            return None
        return self.publication.save_state(
            self.publish.state_dict(), self.rotation.matrix, self.trainer.steps, self.checkpoints.path
        )

    async def _vouch(self, token: str) -> None:
        try:
            await self.buffer.flush()
            await self.user_buffer.flush()
            items, users = await self.store.count("items"), await self.store.count("users")
            self.publication.vouch(token, items, users)
        except Exception as error:  # noqa: BLE001 - no record: the next start publishes everything
            log.warning("the store's content was not recorded with the checkpoint: %r", error)

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
        for live in (self.session_buffer, self.user_buffer):
            try:
                await live.close(timeout=10)
            except TimeoutError as error:  # live vectors are rewritten by the next event
                log.warning("%s", error)
        await self.checkpoint()
        if self._vouching is not None:
            await self._vouching
        self.thread.shutdown(wait=True)

    # -- the work ----------------------------------------------------------------------

    async def submit(self, batch: ExamplesBatch) -> None:
        """Queue one examples record; waits while the queue holds a full backlog."""
        if self.checkpoints.covers(batch):
            # Redelivered after a restart or rebalance, and already learned: learning it twice
            # would overweight it.
            return
        await self.queue.put(batch)

    async def run(self) -> None:
        self._runner = asyncio.current_task()
        settle_heap()
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
                batches = await self.queue.take_round(first)
                metrics.LEARNER_QUEUE.set(self.queue.examples)
                await self._process(batches)
            except Exception:  # noqa: BLE001 - a bad batch must not stop learning
                log.exception("learner step failed; batch skipped")
                metrics.LEARNER_ERRORS.inc()
            finally:
                self._busy = False

    async def learn_records(self, batches: list[ExamplesBatch]) -> None:
        """Learn examples records directly, for records that do not come through the queue
        (those taken after the last checkpoint). They are a backlog, so they go in rounds as
        large as a queued backlog makes (:meth:`ExampleQueue.take_round`)."""
        group: list[ExamplesBatch] = []
        size = 0
        for batch in batches:
            group.append(batch)
            size += len(batch.examples)
            if size >= self.settings.learner_round_examples:
                await self._process(group)
                group, size = [], 0
        if group:
            await self._process(group)

    async def _idle(self) -> None:
        """No examples for a tick: what rounds otherwise do on the way. Items that only moved
        are still swept into Qdrant when due, drift windows still close, and what was learned
        since the last checkpoint goes to disk once ``checkpoint_interval_seconds`` passed."""
        published = await self._in_thread(self._upkeep)
        if published.items:
            await self._upsert(published, [])
        if self.checkpoints.due():
            await self.checkpoint()

    def _upkeep(self) -> Published:
        """On the learner thread: the due sweep and the drift update, without a training step."""
        items = self._changes(*self.publish.due(set(), len(self.trainer.item_encoder.item_vocab)))
        self._update_drift()
        return self._published(0.0, items)

    async def _process(self, batches: list[ExamplesBatch]) -> None:
        examples = [example for batch in batches for example in batch.examples]
        started = time.perf_counter()
        # With nothing queued behind this round the learner has time to spare: a full sweep
        # slice; under backlog, the round's share (see PublishPolicy.due).
        share = 1.0 if self.queue.empty() else None
        published = await self._in_thread(self.learn_round, examples, share)
        metrics.TRAIN_STEP_SECONDS.observe(time.perf_counter() - started)
        metrics.TRAIN_LOSS.set(published.loss)
        metrics.EXAMPLES_LEARNED.inc(len(examples))
        metrics.MODEL_VERSION.set(self.trainer.steps)
        self.forgetting.update()
        self.checkpoints.learned(batches)
        await self._upsert(published, examples)
        if self.checkpoints.due():
            await self.checkpoint()

    def learn_round(self, examples: Sequence[ExampleRecord], sweep_share: float | None = None) -> Published:
        """On the learner thread: score and learn the round's steps; then, once per round, the
        points of what changed and the live vectors of the round's sessions. ``sweep_share``:
        the share of a sweep slice this round may publish, by default its size against a full
        round's."""
        known_before = len(self.trainer.item_encoder.item_vocab)
        steps = self.round.learn(examples)
        for step in steps:
            self.drift.observe_step(step.loss, step.hits, step.examples)
        score = self.round.score
        metrics.PREQUENTIAL_SCORED.set(score.scored)
        metrics.PREQUENTIAL_HITS.set(score.hits)
        metrics.PREQUENTIAL_RR.set(score.reciprocal_rank)
        metrics.PREQUENTIAL_SAMPLED.set(int(self.round.sampling))
        metrics.PREQUENTIAL_DROPPED.set(self.round.passes_dropped)
        # Sessions, users and items are encoded once per round, after its last step: a round's
        # points carry the latest vectors only, and the drift monitor sees exactly what Qdrant gets.
        sessions = {e["session_id"]: [*e["prefix"], e["item_id"]] for e in examples}
        history = self.trainer.user_history
        latest = {e["user_id"]: e["session_id"] for e in examples if not e.get("duplicate")}
        contexts = {} if history is None else user_contexts(history, latest, sessions)
        vectors = self._live_vectors([*sessions.values(), *(c.newest for c in contexts.values())])
        clicked = {e["item_id"] for e in examples}
        if sweep_share is None:
            sweep_share = min(1.0, len(examples) / self.settings.learner_round_examples)
        items = self._changes(*self.publish.due(clicked, known_before, sweep_share))
        session_users = {e["session_id"]: e["user_id"] for e in examples}
        live = zip(sessions.items(), vectors[: len(sessions)], strict=True)
        published = self._published(
            float(np.mean([step.loss for step in steps])) if steps else 0.0,
            items,
            {sid: (kept, vector) for (sid, kept), vector in live},
            session_users,
            self._user_rows(contexts, vectors[len(sessions) :]),
        )
        # Last: the drift window or reference this starts runs on the monitor's thread beside the
        # next round's training (mostly torch, which releases the GIL), not beside this round's
        # pure-Python point building (at 1M items, up to 39 ms beside it against 7 ms typical).
        self._update_drift()
        return published

    def _live_vectors(self, prefixes: Sequence[Sequence[str]]) -> np.ndarray:
        """Session-encoder vectors of item lists (sessions, users' newest items), served."""
        return self.rotation.apply(self.trainer.encode_sessions(prefixes))

    def _user_points(
        self, latest: Mapping[str, str], sessions: Mapping[str, Sequence[str]]
    ) -> list[tuple[str, PointRow]]:
        """On the learner thread: the points of these users (user -> latest session)."""
        history = self.trainer.user_history
        if history is None:
            return []
        contexts = user_contexts(history, latest, sessions)
        return self._user_rows(contexts, self._live_vectors([c.newest for c in contexts.values()]))

    def _user_rows(
        self, contexts: Mapping[str, UserContext], vectors: np.ndarray
    ) -> list[tuple[str, PointRow]]:
        points, rejected = build_user_points(
            user_records(contexts, vectors, time.time()), self.settings.model_dim
        )
        for user_id, reason in rejected:
            metrics.UPSERT_ERRORS.labels(collection="users").inc()
            log.error("user %r not published: %s", user_id, reason)
        return points

    def _changes(self, changed: list[str], always: set[str]) -> dict[str, np.ndarray]:
        publish, updates = self.publish.material_changes(changed, always)
        self.drift.observe(updates)
        return publish

    def _update_drift(self) -> None:
        # At most once a second, not per step: the alignment sums take the queued updates in
        # one batch (they are linear, so nothing is lost) and the gauges are scraped no faster.
        # A backlog larger than a batch (the catalogue's first publish) drains a batch a round.
        if not self.drift.apply_backlog() and time.monotonic() - self._last_drift >= DRIFT_UPDATE_SECONDS:
            self.drift.after_step(self.publish.published, self.event_counts)
            self._last_drift = time.monotonic()

    def _served_vectors(self, item_ids: Sequence[str]) -> np.ndarray:
        return self.rotation.apply(self.trainer.encode_items(item_ids))

    def _published(
        self,
        loss: float,
        items: Mapping[str, np.ndarray | None],
        sessions: Mapping[str, tuple[list[str], np.ndarray]] | None = None,
        session_users: Mapping[str, str] | None = None,
        users: list[tuple[str, PointRow]] | None = None,
    ) -> Published:
        now = time.time()
        dim = self.settings.model_dim
        records = self.sources.records(items, self.event_counts.many(list(items)), self.trainer.steps, now)
        item_points, rejected = build_item_points(records, dim)
        for item_id, reason in rejected:  # e.g. a NaN vector: that item is skipped, not the batch
            metrics.UPSERT_ERRORS.labels(collection="items").inc()
            log.error("item %r not published: %s", item_id, reason)
        keep = self.settings.max_session_items
        owners = session_users or {}
        session_records = [
            SessionRecord(
                session_id=sid, vector=vector, user_id=owners.get(sid), updated_at=now, items=kept[-keep:]
            )
            for sid, (kept, vector) in (sessions or {}).items()
        ]
        session_points, rejected = build_session_points(session_records, dim)
        for sid, reason in rejected:
            metrics.UPSERT_ERRORS.labels(collection="sessions").inc()
            log.error("session %r not published: %s", sid, reason)
        return Published(loss=loss, items=item_points, sessions=session_points, users=users or [])

    async def _upsert(self, published: Published, examples: Sequence[ExampleRecord]) -> None:
        written = {item_id for item_id, _ in published.items}
        for example in examples:
            if example["item_id"] in written:
                clicks = self.unseen_clicks.setdefault(example["item_id"], [])
                clicks.append((example.get("ingested_at"), example.get("timestamp")))
        # A round's points are a batch already: written at once (freshness), while the
        # learner goes on with its next round; a newer vector replaces one still waiting.
        await self.buffer.add_points(published.items, now=True)
        await self.session_buffer.add_points(published.sessions, now=True)
        await self.user_buffer.add_points(published.users, now=True)

    def _observe_freshness(self, item_ids: list[str]) -> None:
        """These items' upsert returned: their clicks are now visible in Qdrant."""
        now = time.time()
        for item_id in item_ids:
            for ingested_at, event_time in self.unseen_clicks.pop(item_id, ()):
                if ingested_at is not None:
                    metrics.FRESHNESS_SECONDS.labels(since="ingest").observe(max(0.0, now - ingested_at))
                if event_time is not None:
                    metrics.FRESHNESS_SECONDS.labels(since="event").observe(max(0.0, now - event_time))

    # -- lookups (ranked by Qdrant; see .recommend) -------------------------------------

    async def recommend_for_items(self, items: list[str], k: int) -> Recommendation:
        """Next items after ``items``: their session vector (encoded on the learner thread,
        serialised with training) ranks the items in Qdrant."""
        vector = await self._in_thread(self._live_vectors, [items])
        return await self.recommender.for_vector(vector[0].tolist(), items, k)

    async def _in_thread(self, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self.thread, lambda: fn(*args, **kwargs))
