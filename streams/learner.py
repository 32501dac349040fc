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
import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.alignment import linear_cka, procrustes
from models.fusion import click_scaled_weights, fuse
from models.prequential import PrequentialScore, target_ranks
from models.trainer import OnlineTrainer
from monitoring import metrics
from streams.qdrant_store import AsyncQdrantStore, ItemRecord, ItemUpsertBuffer, SessionRecord
from streams.settings import Settings

__all__ = ["Learner", "attribute_tokens", "load_attributes"]

log = logging.getLogger(__name__)


@dataclass
class StepResult:
    loss: float
    items: dict[str, np.ndarray]  # changed item -> behaviour vector
    sessions: dict[str, tuple[list[str], np.ndarray]]  # session -> (items, live vector)


class Learner:
    def __init__(
        self,
        settings: Settings,
        store: AsyncQdrantStore,
        attributes: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.trainer = OnlineTrainer(settings.model_config_for_training())
        self.attributes = attributes or {}
        for item_id, attrs in self.attributes.items():
            self.trainer.set_attributes(item_id, attribute_tokens(attrs))
        self.buffer = ItemUpsertBuffer(
            store, max_batch=settings.upsert_batch_points, max_delay_ms=settings.upsert_interval_ms
        )
        # Bounded: a learner that falls behind back-pressures the agent instead of buffering.
        self.queue: asyncio.Queue[tuple[str, int, dict[str, Any]]] = asyncio.Queue(
            maxsize=settings.learner_queue_batches * settings.learner_batch_size
        )
        self.thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onevec-learner")
        self.score = PrequentialScore()
        self.event_counts: Counter[str] = Counter()
        self.offsets: dict[str, int] = {}
        self.checkpoint_path = settings.data_dir / "checkpoints" / "learner.pt"
        self._last_checkpoint = time.monotonic()
        self._dirty = False
        self._runner: asyncio.Task[None] | None = None
        self.published: dict[str, np.ndarray] = {}  # unit vector last sent to Qdrant, per item
        self.rotation: np.ndarray | None = None  # onto the serving version, see align_to_serving

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
        ids = self.trainer.item_encoder.item_ids()
        items = await self._in_thread(self._material_changes, ids, set(ids))
        await self._upsert(StepResult(loss=0.0, items=items, sessions={}), [])

    async def checkpoint(self) -> None:
        await self._in_thread(self._save_checkpoint)

    def _save_checkpoint(self) -> None:
        self.trainer.save_checkpoint(self.checkpoint_path, self.offsets)
        self._last_checkpoint = time.monotonic()
        self._dirty = False
        metrics.CHECKPOINTS_WRITTEN.inc()

    async def close(self) -> None:
        """Stop learning, drain the sink, write a last checkpoint. Batches still queued are
        not lost: the checkpoint's offsets do not cover them, so a restart learns them."""
        if self._runner is not None:
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        await self.buffer.close(timeout=30)
        await self.checkpoint()
        self.thread.shutdown(wait=True)

    # -- the work ----------------------------------------------------------------------

    async def submit(self, example: tuple[str, int, dict[str, Any]]) -> None:
        """Queue one (topic-partition, offset, example); waits when the queue is full."""
        await self.queue.put(example)

    async def run(self) -> None:
        self._runner = asyncio.current_task()
        interval = self.settings.checkpoint_interval_seconds
        while True:
            try:
                first = await asyncio.wait_for(self.queue.get(), timeout=interval)
            except TimeoutError:
                # Idle: make sure what was learned since the last checkpoint is on disk.
                if self._dirty:
                    await self.checkpoint()
                continue
            batch = await self._fill_batch(first)
            metrics.LEARNER_QUEUE.set(self.queue.qsize())
            try:
                await self._process(batch)
            except Exception:  # noqa: BLE001 - a bad batch must not stop learning
                log.exception("learner step failed; batch skipped")
                metrics.LEARNER_ERRORS.inc()

    async def _fill_batch(
        self, first: tuple[str, int, dict[str, Any]]
    ) -> list[tuple[str, int, dict[str, Any]]]:
        """A micro-batch: what is queued, up to the batch size, waiting at most ``within``
        seconds for more. (Batching here, not with Faust's take(), which holds a partial
        batch until another event arrives.)"""
        batch = [first]
        deadline = time.monotonic() + self.settings.learner_batch_within_seconds
        while len(batch) < self.settings.learner_batch_size:
            try:
                batch.append(self.queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self.queue.get(), timeout=remaining))
            except TimeoutError:
                break
        return batch

    async def learn_records(self, records: list[tuple[str, int, dict[str, Any]]]) -> None:
        """Learn (topic-partition, offset, example) records directly, in micro-batches: for
        examples that do not come through the queue (those taken after the last checkpoint)."""
        size = self.settings.learner_batch_size
        for start in range(0, len(records), size):
            await self._process(records[start : start + size])

    async def _process(self, batch: list[tuple[str, int, dict[str, Any]]]) -> None:
        examples = [example for _, _, example in batch]
        started = time.perf_counter()
        step = await self._in_thread(self._step, examples)
        metrics.TRAIN_STEP_SECONDS.observe(time.perf_counter() - started)
        metrics.TRAIN_LOSS.set(step.loss)
        metrics.EXAMPLES_LEARNED.inc(len(examples))
        for tp, offset, _ in batch:
            self.offsets[tp] = max(offset, self.offsets.get(tp, -1))
        await self._upsert(step, examples)
        self._dirty = True
        if time.monotonic() - self._last_checkpoint > self.settings.checkpoint_interval_seconds:
            await self.checkpoint()

    def _step(self, examples: list[dict[str, Any]]) -> StepResult:
        """Score (test), then learn (train); runs on the learner thread."""
        scored = [e for e in examples if e.get("prefix") and not e.get("duplicate")]
        for rank in target_ranks(self.trainer, [e["prefix"] for e in scored], [e["item_id"] for e in scored]):
            self.score.add(rank)
        metrics.PREQUENTIAL_SCORED.set(self.score.scored)
        metrics.PREQUENTIAL_HITS.set(self.score.hits)
        metrics.PREQUENTIAL_RR.set(self.score.reciprocal_rank)
        loss = self.trainer.learn(examples)
        for example in examples:
            if not example.get("duplicate"):
                self.event_counts[example["item_id"]] += 1
        clicked = {e["item_id"] for e in examples}
        sessions = {e["session_id"]: [*e["prefix"], e["item_id"]] for e in examples}
        session_ids = list(sessions)
        session_vectors = self._served(self.trainer.encode_sessions([sessions[sid] for sid in session_ids]))
        return StepResult(
            loss=loss,
            items=self._material_changes(sorted(self.trainer.changed_items() | clicked), clicked),
            sessions={sid: (sessions[sid], v) for sid, v in zip(session_ids, session_vectors, strict=True)},
        )

    def _served(self, vectors: np.ndarray) -> np.ndarray:
        return vectors if self.rotation is None else vectors @ self.rotation

    def _material_changes(self, changed: list[str], clicked: set[str]) -> dict[str, np.ndarray]:
        """The changed items worth re-publishing: new ones, clicked ones, and any whose direction
        moved by more than ``upsert_min_change`` (cosine distance) since it was last published.
        A shared attribute token moves every item carrying it a little on every step; writing
        them all each time would make the sink the bottleneck for no visible change."""
        if not changed:
            return {}
        vectors = self._served(self.trainer.encode_items(changed))
        units = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        publish = {}
        for item_id, vector, unit in zip(changed, vectors, units, strict=True):
            last = self.published.get(item_id)
            if (
                last is None
                or item_id in clicked
                or 1.0 - float(unit @ last) > self.settings.upsert_min_change
            ):
                publish[item_id] = vector
                self.published[item_id] = unit
        return publish

    async def _upsert(self, step: StepResult, examples: list[dict[str, Any]]) -> None:
        now = time.time()
        users = {e["session_id"]: e["user_id"] for e in examples}
        for item_id, vector in step.items.items():
            unified = self.unified({"behaviour": vector}, self.event_counts[item_id])
            await self.buffer.add(
                ItemRecord(
                    item_id=item_id,
                    vectors={"unified": unified, "behaviour": vector},
                    attributes=self.attributes.get(item_id, {}),
                    model_version=self.trainer.steps,
                    updated_at=now,
                    event_count=self.event_counts[item_id],
                )
            )
        sessions = [
            SessionRecord(
                session_id=sid,
                vector=vector,
                user_id=users.get(sid),
                updated_at=now,
                items=items[-self.settings.max_session_items :],
            )
            for sid, (items, vector) in step.sessions.items()
        ]
        if sessions:
            await self.store.upsert_sessions(sessions)
        metrics.ITEMS_UPSERTED.set(self.buffer.upserted_points)

    def unified(self, sources: dict[str, np.ndarray], clicks: int) -> np.ndarray:
        """Fuse the sources an item really has; with static sources present, a rarely
        clicked item leans on them (behaviour weight grows with its clicks)."""
        weights: dict[str, Any] = dict(self.settings.fusion_weights)
        if len(sources) > 1:
            weights = click_scaled_weights(weights, clicks, self.settings.clicks_for_full_weight)
        return fuse(sources, weights)

    # -- lookups (serialised with training on the learner thread) ----------------------

    async def recommend_for_items(self, items: list[str], k: int) -> list[tuple[str, float]]:
        # Scores are inner products, which the serving rotation does not change.
        return await self._in_thread(self.trainer.recommend, items, k, set(items))

    async def _in_thread(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.thread, fn, *args)


def attribute_tokens(attributes: dict[str, Any]) -> list[str]:
    """Side-information tokens ("genre=Comedy") from an item's attributes; the title is text
    for the static encoders, not a token (it would only re-encode the id)."""
    tokens = []
    for key, value in attributes.items():
        if key == "title":
            continue
        values = value if isinstance(value, list) else [value]
        tokens.extend(f"{key}={v}" for v in values if v not in (None, ""))
    return tokens


def load_attributes(source: str | Path) -> dict[str, dict[str, Any]]:
    """Catalogue attributes per item: MovieLens genres and release-year band, or any columns."""
    from streams.datasets import load_catalog

    catalog = load_catalog(source)
    flag_columns = [
        c for c in catalog.columns if c != "item_id" and set(catalog[c].dropna().unique()) <= {0, 1}
    ]
    attributes: dict[str, dict[str, Any]] = {}
    for row in catalog.to_dict("records"):
        attrs: dict[str, Any] = {}
        flags = [c for c in flag_columns if row.get(c) == 1]
        if flags:
            attrs["genre"] = flags
        for column, value in row.items():
            if column == "item_id" or column in flag_columns or value is None:
                continue
            if isinstance(value, str) and 0 < len(value) <= 64 and column.lower() in CATEGORY_COLUMNS:
                attrs[column] = value
        if (
            "release_date" in row
            and isinstance(row["release_date"], str)
            and row["release_date"][-4:].isdigit()
        ):
            attrs["decade"] = f"{row['release_date'][-4:-1]}0s"
        if "movie_title" in row:
            attrs["title"] = row["movie_title"]
        attributes[str(row["item_id"])] = attrs
    return attributes


CATEGORY_COLUMNS = {"category", "brand", "colour", "color", "department", "division", "class", "price_band"}
