"""Live embedding drift and kernel predictability, fed by the learner.

Two kinds of drift are watched:

* **Geometry**, per time window, of the served (unit) item vectors against a *reference
  snapshot* taken earlier: centroid cosine shift, share of dimensions whose distribution moved
  (1-d Wasserstein distance, in units of the reference's spread), linear CKA on anchor items
  (paper 3: CKA ~ 1 for a harmless rotation, lower for a real change), mean cosine change of
  the items upserted in the window, and overlap@10 of the anchors' nearest neighbours.
* **Streams**, per micro-batch: river's ADWIN and Page-Hinkley on the training loss and on the
  prequential hit stream (1 when the next item was in the top 20 before training on it).
  Only *adverse* changes count as drift events (loss up, hit rate down): a model that keeps
  improving is not drifting.

Kernel predictability (centred kernel-target alignment, :mod:`onevec.models.kernel_alignment`) of the
served vectors with each configured catalogue label is updated on every upsert.

The reference snapshot is taken after a warm-up, then rotated on a schedule or on demand.
Everything here is plain numpy/scipy/river (and torch for a top-k) and unit-testable without
Kafka; the :class:`DriftMonitor` also sets the Prometheus metrics (labels: a signal, detector,
stream or label *name*, never an id).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from river.drift import ADWIN, PageHinkley
from scipy.stats import wasserstein_distance

from onevec.models.alignment import centroid_shift, linear_cka
from onevec.models.fusion import normalise
from onevec.models.kernel_alignment import AlignmentTracker
from onevec.monitoring import metrics

__all__ = [
    "SIGNALS_HIGH_IS_BAD",
    "SIGNALS_LOW_IS_BAD",
    "DriftConfig",
    "DriftMonitor",
    "IndexedVectors",
    "LabelSpace",
    "ReferenceSnapshot",
    "StreamDriftDetectors",
    "VectorUpdates",
    "drifted_dimension_share",
    "neighbour_overlap",
    "sample_of",
    "signals_of",
    "window_signals",
]

log = logging.getLogger(__name__)

SIGNALS_HIGH_IS_BAD = ("centroid_shift", "drifted_dimensions", "cosine_change")
SIGNALS_LOW_IS_BAD = ("anchor_cka", "neighbour_overlap")

# Defaults chosen on MovieLens-100k replays of a pretrained model (docs/monitoring.md has the
# figures): centroid shift and drifted dimensions sit above what the stationary replays showed
# against their reference and below what the constructed (remapped) ones reached. Cosine
# change, CKA and neighbour overlap did not separate those replays (too close for one fixed
# threshold), so theirs are set for a larger change: a bad retrain, not a rotation.
DEFAULT_THRESHOLDS: dict[str, float] = {
    "centroid_shift": 0.07,
    "drifted_dimensions": 0.1,
    "cosine_change": 0.03,
    "anchor_cka": 0.9,
    "neighbour_overlap": 0.5,
}


@dataclass(frozen=True)
class DriftConfig:
    window_seconds: float = 60.0
    reference_seconds: float = 3600.0  # rotate the reference this often; 0 = only on demand
    warmup_examples: int = 5000  # examples learned before the first reference is taken
    anchor_items: int = 200  # most-clicked items at snapshot time
    max_items: int = 20_000  # sample of reference items for distributions and neighbours
    neighbours: int = 10
    dimension_threshold: float = 0.25  # Wasserstein / reference std that counts a dimension drifted
    apply_updates: int = 4096  # queued vector updates applied at once at most (~15 ms at most)
    thresholds: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    seed: int = 0

    @classmethod
    def from_settings(cls, settings: Any) -> DriftConfig:
        """From the ``drift_*`` fields of :class:`onevec.streams.settings.Settings` (duck-typed: the
        monitoring package does not import the streams package)."""
        return cls(
            window_seconds=settings.drift_window_seconds,
            reference_seconds=settings.drift_reference_seconds,
            warmup_examples=settings.drift_warmup_examples,
            anchor_items=settings.drift_anchor_items,
            thresholds={**DEFAULT_THRESHOLDS, **settings.drift_thresholds},
            seed=settings.model_seed,
        )


def drifted_dimension_share(
    reference: np.ndarray, current: np.ndarray, threshold: float, reference_sorted: np.ndarray | None = None
) -> float:
    """Share of dimensions whose 1-d Wasserstein distance between the reference and current
    distributions exceeds ``threshold`` reference standard deviations. ``reference_sorted``:
    ``np.sort(reference, axis=0)``, when the caller keeps it."""
    if reference.shape == current.shape:
        # Equal-sized samples (the same items before and after, as the monitor compares): the
        # 1-d Wasserstein distance is the mean gap between the sorted values, one sort per
        # matrix instead of scipy's per column (215 ms a window at 20,000 items).
        spread = np.maximum(reference.std(0), 1e-12)
        if reference_sorted is None:
            reference_sorted = np.sort(reference, axis=0)
        distance = np.abs(reference_sorted - np.sort(current, axis=0)).mean(0)
        return float(np.count_nonzero(distance / spread > threshold)) / reference.shape[1]
    drifted = 0
    for column in range(reference.shape[1]):
        spread = float(reference[:, column].std()) or 1e-12
        distance = wasserstein_distance(reference[:, column], current[:, column])
        drifted += distance / spread > threshold
    return drifted / reference.shape[1]


def _top_k(anchors: np.ndarray, pool: np.ndarray, k: int, self_rows: np.ndarray) -> np.ndarray:
    scores = anchors @ pool.T
    scores[np.arange(len(anchors)), self_rows] = -np.inf  # an item is not its own neighbour
    # torch's top-k: 12 ms where argpartition took 150 ms (200 anchors x 20,000 items).
    return torch.topk(torch.from_numpy(scores), k, dim=1).indices.numpy()


def neighbour_overlap(reference: np.ndarray, current: np.ndarray, anchor_rows: np.ndarray, k: int) -> float:
    """Mean share of each anchor's k nearest neighbours (cosine, within the same item pool)
    that are the same in the reference and current vectors. ~k/n for unrelated geometry."""
    k = min(k, len(reference) - 1)
    if k < 1 or not len(anchor_rows):
        return 1.0
    before = _top_k(reference[anchor_rows], reference, k, anchor_rows)
    after = _top_k(current[anchor_rows], current, k, anchor_rows)
    shared = [len(set(b) & set(a)) for b, a in zip(before.tolist(), after.tolist(), strict=True)]
    return float(np.mean(shared)) / k


@runtime_checkable
class IndexedVectors(Protocol):
    """What a mapping of item -> vector can offer beyond ``Mapping`` so that the monitor never
    walks the catalogue item by item: at a million items, listing every id and reading a
    sample one lookup at a time stalled a learner round for 0.2-0.3 s."""

    def sample_ids(self, count: int, rng: np.random.Generator) -> list[str]:
        """At most ``count`` distinct item ids, drawn uniformly, in a fixed order."""
        ...

    def vectors_of(self, item_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(which of ``item_ids`` have a vector, (n_present, d) their vectors in that order)."""
        ...


@runtime_checkable
class CountsOf(Protocol):
    def many(self, item_ids: Sequence[str]) -> list[int]:
        """The counts of ``item_ids``, 0 for an unknown one."""
        ...


def _sample(current: Mapping[str, np.ndarray], count: int, rng: np.random.Generator) -> list[str]:
    if isinstance(current, IndexedVectors):
        return current.sample_ids(count, rng)
    ids = list(current)
    if len(ids) > count:
        ids = [ids[i] for i in sorted(rng.choice(len(ids), count, replace=False))]
    return ids


def _vectors_of(current: Mapping[str, np.ndarray], item_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(current, IndexedVectors):
        return current.vectors_of(item_ids)
    present = np.fromiter((item in current for item in item_ids), dtype=bool, count=len(item_ids))
    rows = [current[item] for item, kept in zip(item_ids, present, strict=True) if kept]
    return present, np.asarray(rows) if rows else np.zeros((0, 0), dtype=np.float32)


@dataclass
class ReferenceSnapshot:
    """Unit item vectors at one moment, and the anchor items drift is measured on."""

    ids: list[str]
    vectors: np.ndarray  # (n, d) unit rows, same order as ids
    anchors: list[str]
    taken_at: float  # time.time()
    # What every window would otherwise recompute (a reference lives an hour by default).
    _sorted: np.ndarray | None = field(default=None, repr=False, compare=False)
    _anchor_rows: np.ndarray | None = field(default=None, repr=False, compare=False)

    def sorted_columns(self) -> np.ndarray:
        """Each dimension's values in order (the drifted-dimension share's reference side)."""
        if self._sorted is None:
            self._sorted = np.sort(self.vectors, axis=0)
        return self._sorted

    def anchor_rows(self) -> np.ndarray:
        """The anchors' rows in ``ids``."""
        if self._anchor_rows is None:
            index = {item: row for row, item in enumerate(self.ids)}
            self._anchor_rows = np.asarray([index[a] for a in self.anchors], dtype=np.int64)
        return self._anchor_rows

    @classmethod
    def take(
        cls,
        current: Mapping[str, np.ndarray],
        clicks: Mapping[str, int],
        anchor_items: int,
        max_items: int,
        rng: np.random.Generator,
    ) -> ReferenceSnapshot:
        ids, vectors = sample_of(current, max_items, rng)
        return cls.of(ids, vectors, clicks, anchor_items)

    @classmethod
    def of(
        cls, ids: list[str], vectors: np.ndarray, clicks: Mapping[str, int], anchor_items: int
    ) -> ReferenceSnapshot:
        """The snapshot of a sample (see :func:`sample_of`), its anchors the ``anchor_items``
        most clicked: the part of :meth:`take` that can run off the learner's thread (clicks
        only grow, so counts read while the learner counts are merely a moment late)."""
        counts = clicks.many(ids) if isinstance(clicks, CountsOf) else [clicks.get(item, 0) for item in ids]
        # The most clicked first; among equals, the sample's order (a stable sort).
        anchors = [
            ids[i] for i in np.argsort(-np.asarray(counts, dtype=np.int64), kind="stable")[:anchor_items]
        ]
        return cls(ids=ids, vectors=normalise(vectors), anchors=anchors, taken_at=time.time())


def sample_of(
    current: Mapping[str, np.ndarray], max_items: int, rng: np.random.Generator
) -> tuple[list[str], np.ndarray]:
    """At most ``max_items`` items of ``current`` drawn uniformly, and a copy of their vectors."""
    ids = _sample(current, max_items, rng)
    present, vectors = _vectors_of(current, ids)
    if not present.all():  # else the same list: ``current`` may keep what it looked up for it
        ids = [item for item, kept in zip(ids, present, strict=True) if kept]
    return ids, vectors


def window_signals(
    reference: ReferenceSnapshot,
    current: Mapping[str, np.ndarray],
    cosine_changes: Sequence[float],
    dimension_threshold: float,
    neighbours: int,
) -> dict[str, float]:
    """Every geometric drift signal of ``current`` (item -> vector) against ``reference``.

    Items are compared on the reference's item sample that still has a current vector (an
    item's vector is never removed, so that is all of them). ``cosine_change`` is the mean of
    ``cosine_changes`` (1 - cos between an item's previous and new published vector, one per
    sampled upsert in the window: clicked or new items, see ``DriftMonitor.observe``), 0.0 when
    there was none.
    """
    present, vectors = _vectors_of(current, reference.ids)
    return signals_of(reference, present, vectors, cosine_changes, dimension_threshold, neighbours)


def signals_of(
    reference: ReferenceSnapshot,
    present: np.ndarray,
    vectors: np.ndarray,
    cosine_changes: Sequence[float],
    dimension_threshold: float,
    neighbours: int,
) -> dict[str, float]:
    """:func:`window_signals` of the reference sample's current vectors, already gathered:
    ``present`` marks the reference ids that have one, ``vectors`` holds those in order. Pure
    arithmetic on its arguments and the reference, so it can run off the learner's thread."""
    after = normalise(vectors)
    if present.all():  # as always for a learner's items (a vector is never removed)
        before, anchor_rows, ordered = reference.vectors, reference.anchor_rows(), reference.sorted_columns()
    else:
        rows = np.flatnonzero(present)
        before, ordered = reference.vectors[rows], None
        index = {reference.ids[row]: position for position, row in enumerate(rows.tolist())}
        anchor_rows = np.asarray([index[a] for a in reference.anchors if a in index], dtype=np.int64)
    signals = {
        "centroid_shift": centroid_shift(before, after),
        "drifted_dimensions": drifted_dimension_share(before, after, dimension_threshold, ordered),
        "anchor_cka": linear_cka(before[anchor_rows], after[anchor_rows]) if len(anchor_rows) > 2 else 1.0,
        "cosine_change": float(np.mean(cosine_changes)) if len(cosine_changes) else 0.0,
        "neighbour_overlap": neighbour_overlap(before, after, anchor_rows, neighbours),
    }
    return signals


class _AdverseDetector:
    """A river detector whose detections count only when the stream got materially worse.

    Page-Hinkley is run one-sided (``mode``), so each of its detections is adverse. ADWIN finds
    changes either way, and river restarts a detector after each detection, so the direction
    is confirmed afterwards: the mean of the next ``confirm`` values (the new level) against
    the mean of the part of its window ADWIN dropped (the old level). It counts when the level moved
    the worse way by at least ``min_relative_change`` (ADWIN is sensitive enough to find the
    slow, real changes of a stationary-looking stream too).
    """

    def __init__(
        self,
        detector: ADWIN | PageHinkley,
        worse_when: str,
        min_relative_change: float = 0.0,
        confirm: int = 1,
    ) -> None:
        self.detector = detector
        self.worse_when = worse_when  # "up" or "down"
        self.min_relative_change = min_relative_change
        self.confirm = confirm
        self._old_level: float | None = None  # set while a detection awaits confirmation
        self._new_values: list[float] = []

    def update(self, value: float) -> bool:
        if not isinstance(self.detector, ADWIN):
            self.detector.update(value)
            return self.detector.drift_detected
        mean, width = self.detector.estimation, self.detector.width
        self.detector.update(value)
        if self._old_level is None:
            kept = self.detector.width
            if self.detector.drift_detected and kept < width + 1:
                # The old level: the mean of the part of the window ADWIN dropped.
                self._old_level = (mean * width + value - self.detector.estimation * kept) / (
                    width + 1 - kept
                )
                self._new_values = []
            return False
        self._new_values.append(value)
        if len(self._new_values) < self.confirm:
            return False
        new_level = float(np.mean(self._new_values))
        change = (new_level - self._old_level) / max(abs(self._old_level), 1e-12)
        self._old_level = None
        return (change if self.worse_when == "up" else -change) >= self.min_relative_change


class StreamDriftDetectors:
    """Adverse-change detectors on the learner's two quality streams.

    * loss, one value per micro-batch (worse = up): ADWIN and one-sided Page-Hinkley;
    * hits (worse = down): ADWIN on every scored example's 0/1 hit, the classic Bernoulli use;
      Page-Hinkley on each micro-batch's hit rate (per-example 0/1 values are too noisy for it).

    Parameters were chosen on MovieLens-100k replays (docs/monitoring.md): a loss rise of 10%
    or a hit-rate fall of 50% counts for ADWIN; the stationary replays tried showed smaller
    moves, the constructed change much larger ones. The hit-rate Page-Hinkley thresholds
    assume micro-batches of a few hundred scored examples (the default batch size).
    """

    def __init__(self) -> None:
        self.detectors: dict[tuple[str, str], _AdverseDetector] = {
            ("adwin", "loss"): _AdverseDetector(ADWIN(delta=0.002), "up", min_relative_change=0.1, confirm=5),
            ("page_hinkley", "loss"): _AdverseDetector(
                PageHinkley(min_instances=10, delta=0.3, threshold=3.0, mode="up"), "up"
            ),
            ("adwin", "hit"): _AdverseDetector(
                ADWIN(delta=1e-5), "down", min_relative_change=0.5, confirm=500
            ),
            ("page_hinkley", "hit"): _AdverseDetector(
                PageHinkley(min_instances=10, delta=0.05, threshold=0.4, mode="down"), "down"
            ),
        }

    def update(self, loss: float | None, hits: Sequence[bool]) -> list[tuple[str, str]]:
        """Feed one micro-batch; return the (detector, stream) pairs that found an adverse change."""
        streams: dict[tuple[str, str], list[float]] = {
            ("adwin", "loss"): [loss] if loss is not None and math.isfinite(loss) else [],
            ("adwin", "hit"): [float(hit) for hit in hits],
            ("page_hinkley", "hit"): [sum(hits) / len(hits)] if hits else [],
        }
        streams[("page_hinkley", "loss")] = streams[("adwin", "loss")]
        events = []
        for key, watcher in self.detectors.items():
            # Every value goes in (no short-circuit): a detector must see the whole stream.
            if sum([watcher.update(value) for value in streams[key]]):
                events.append(key)
        return events


@dataclass(frozen=True)
class VectorUpdates:
    """Served unit vectors replaced, one row per item, as arrays: a million queued per-item
    objects (a catalogue's first publish) held 170 MB more than the vectors themselves."""

    item_ids: Sequence[str]
    current: np.ndarray  # (n, d) the unit vectors published now
    had: np.ndarray  # (n,) bool: the item had a vector published before
    sampled: np.ndarray  # (n,) bool: clicked or new, see DriftMonitor.observe
    previous: np.ndarray | None = None  # (n, d) those before (rows where ``had``); None if none had

    def __post_init__(self) -> None:
        n = len(self.item_ids)
        if not len(self.current) == len(self.had) == len(self.sampled) == n:
            raise ValueError(f"{n} item ids but {len(self.current)} vectors and {len(self.had)} marks")
        if self.previous is None and self.had.any():
            raise ValueError("items that had a vector need their previous vectors")

    @classmethod
    def first(cls, item_ids: Sequence[str], current: np.ndarray) -> VectorUpdates:
        """First publishes of ``item_ids``."""
        n = len(item_ids)
        return cls(item_ids, current, np.zeros(n, dtype=bool), np.ones(n, dtype=bool))

    def __len__(self) -> int:
        return len(self.item_ids)

    def part(self, start: int, stop: int) -> VectorUpdates:
        """Rows ``[start, stop)``, as views."""
        previous = None if self.previous is None else self.previous[start:stop]
        return VectorUpdates(
            self.item_ids[start:stop],
            self.current[start:stop],
            self.had[start:stop],
            self.sampled[start:stop],
            previous,
        )


class LabelSpace:
    """One catalogue label (e.g. genre) as class ids per item, for the alignment tracker."""

    def __init__(self, name: str, attributes: Mapping[str, Mapping[str, Any]], max_classes: int = 100):
        self.name = name
        values: dict[str, list[str]] = {}
        for item_id, attrs in attributes.items():
            value = attrs.get(name)
            found = [str(v) for v in (value if isinstance(value, list) else [value]) if v not in (None, "")]
            if found:
                values[item_id] = found
        frequent = Counter(v for vs in values.values() for v in vs).most_common(max_classes)
        self.classes = {value: column for column, (value, _) in enumerate(frequent)}
        # One 0/1 row per labelled item, as uint8 in one matrix (not float64: at 1M items the
        # difference is 700 MB per label; not an array per item: 110 bytes of header each).
        self.index: dict[str, int] = {}  # item -> its row of ``labels``
        marks: list[tuple[int, int]] = []
        for item_id, found in values.items():
            columns = [self.classes[v] for v in found if v in self.classes]
            if columns:
                marks += [(len(self.index), column) for column in columns]
                self.index[item_id] = len(self.index)
        self.labels = np.zeros((len(self.index), len(self.classes)), dtype=np.uint8)
        if marks:
            self.labels[tuple(np.array(marks).T)] = 1

    def rows_of(self, item_ids: Sequence[str]) -> np.ndarray:
        """The ``labels`` row of each item, -1 for an item without this label."""
        rows = map(self.index.get, item_ids)
        return np.fromiter((-1 if row is None else row for row in rows), dtype=np.int64, count=len(item_ids))

    def __len__(self) -> int:
        return len(self.classes)


class DriftMonitor:
    """Drift and predictability state of one learner; every method runs on the learner thread
    except :meth:`request_rotation` and :meth:`summary` (safe from the event loop). A window's
    arithmetic runs on the monitor's own thread, on copies (see :meth:`_start_window`)."""

    def __init__(
        self,
        config: DriftConfig,
        dim: int,
        attributes: Mapping[str, Mapping[str, Any]] | None = None,
        labels: Sequence[str] = (),
    ) -> None:
        self.config = config
        self.dim = dim
        self.rng = np.random.default_rng(config.seed)
        self.streams = StreamDriftDetectors()
        self.reference: ReferenceSnapshot | None = None
        self.examples_seen = 0
        self.window_started = time.monotonic()
        self.cosine_changes: list[float] = []
        self._updates: deque[VectorUpdates] = deque()
        self._pending = 0
        self.last_signals: dict[str, float] = {}
        self.events: Counter[tuple[str, str]] = Counter()
        self.windows = 0
        self._rotate_requested = threading.Event()
        self._rotation_due: str | None = None  # the trigger of a rotation the next call takes
        # A window's arithmetic (sorts, neighbours: 70 ms at the default sample) runs on a
        # thread of its own, so it never stalls a learner round; numpy and torch release the
        # GIL for it. One thread: windows finish in order.
        self._math = ThreadPoolExecutor(max_workers=1, thread_name_prefix="onevec-drift")
        self._window: Future[dict[str, float]] | None = None
        self._taking: tuple[Future[ReferenceSnapshot], str] | None = None  # and its trigger
        self.spaces = [s for s in (LabelSpace(n, attributes or {}) for n in labels) if len(s) > 1]
        self.trackers = {s.name: AlignmentTracker(dim, len(s)) for s in self.spaces}
        for signal, threshold in config.thresholds.items():
            metrics.DRIFT_THRESHOLD.labels(signal=signal).set(threshold)
            metrics.DRIFT_ALARMS.labels(signal=signal)  # exported as 0 before the first alarm
        for detector, stream in self.streams.detectors:
            # Every key exists from the start: zeros are exported, and summary() can iterate
            # from the event loop while the learner thread only updates values.
            self.events[(detector, stream)] = 0
            metrics.DRIFT_EVENTS.labels(detector=detector, stream=stream)

    # -- fed by the learner ------------------------------------------------------------

    def observe(self, updates: VectorUpdates) -> None:
        """Served vectors changed (``previous`` to ``current``; a first publish has none).
        Only queued here; applied at most ``apply_updates`` items at a time by
        :meth:`after_step` and :meth:`apply_backlog` (see :meth:`_apply_updates`).
        ``sampled`` False: the item was published *because* it moved more than some minimum
        (a sweep of items nobody clicked); it updates the alignment sums but not
        ``cosine_change``, whose mean it would bias upwards (a window of only such upserts
        would read at least that minimum, on a stationary stream too)."""
        if len(updates):
            self._updates.append(updates)
            self._pending += len(updates)

    @property
    def pending(self) -> int:
        """Vector updates queued, not yet in the sums."""
        return self._pending

    def apply_backlog(self) -> bool:
        """Apply one batch of queued updates if more than a batch is queued (e.g. a catalogue's
        first publish: a million updates at once); True if it did. Called every round, it
        drains a backlog in bounded slices instead of one stall."""
        if self.pending <= self.config.apply_updates:
            return False
        self._apply_updates()
        return True

    def _apply_updates(self) -> None:
        """At most ``apply_updates`` queued updates, oldest first, into the cosine changes and
        the alignment sums, as matrix products (the running sums are linear, so how the
        updates are batched does not matter; in order, an item's first publish is added
        before any change of it replaces the vector)."""
        budget = self.config.apply_updates
        while budget and self._updates:
            batch = self._updates.popleft()
            if len(batch) > budget:  # the rest stays first in line
                batch, rest = batch.part(0, budget), batch.part(budget, len(batch))
                self._updates.appendleft(rest)
            budget -= len(batch)
            self._pending -= len(batch)
            self._apply(batch)

    def _apply(self, batch: VectorUpdates) -> None:
        had, news = batch.had, batch.current
        olds = batch.previous
        if olds is not None:  # else all are first publishes
            moved = had & batch.sampled
            if moved.any():
                self.cosine_changes.extend((1.0 - np.einsum("ij,ij->i", olds[moved], news[moved])).tolist())
        for space in self.spaces:
            rows = space.rows_of(batch.item_ids)
            tracker = self.trackers[space.name]
            added, changed = (rows >= 0) & ~had, (rows >= 0) & had
            if added.any():
                tracker.add_many(news[added], space.labels[rows[added]])
            if changed.any():
                assert olds is not None  # __post_init__
                tracker.replace_many(olds[changed], news[changed], space.labels[rows[changed]])

    def observe_step(self, loss: float | None, hits: Sequence[bool], examples: int) -> None:
        """One micro-batch: its loss, its prequential hits (scored examples only), its size."""
        self.examples_seen += examples
        if self.reference is None and self._taking is None:
            # Warm-up is not drift. The detectors start when the first reference is asked
            # for, not when the monitor's thread installs it a round or more later: under a
            # backlog those rounds can hold the very change the detectors are there to see.
            return
        for detector, stream in self.streams.update(loss, hits):
            self.events[(detector, stream)] += 1
            metrics.DRIFT_EVENTS.labels(detector=detector, stream=stream).inc()
            log.warning("drift detector %s found an adverse change in the %s stream", detector, stream)

    def after_step(
        self, current: Mapping[str, np.ndarray], clicks: Mapping[str, int]
    ) -> dict[str, float] | None:
        """Publish predictability; take or rotate the reference when due; start a window when
        one has elapsed. ``current``: item -> served unit vector. Returns the signals of a
        window whose arithmetic finished since the last call, None if none did."""
        self._apply_updates()
        for name, tracker in self.trackers.items():
            metrics.PREDICTABILITY.labels(label=name).set(tracker.alignment())
        finished = self._finished_window(wait=False)
        self._taken(wait=False)
        if self._taking is not None:
            return finished  # no window starts while a reference is being taken
        if self.reference is None:
            if self.examples_seen >= self.config.warmup_examples and len(current) > self.config.neighbours:
                self.rotate(current, clicks, "warmup")
            return finished
        metrics.DRIFT_REFERENCE_AGE.set(time.time() - self.reference.taken_at)
        if self._rotation_due is not None:
            # The window that ended last call was measured against the old reference (its
            # job holds it); the new one is taken now, a call later, so a window and a rotation
            # never share a round.
            self.rotate(current, clicks, self._rotation_due)
            return finished
        if self._window is not None or time.monotonic() - self.window_started < self.config.window_seconds:
            return finished  # a window still being worked out: the next one waits for it
        self._start_window(current)
        if self._rotate_requested.is_set():
            self._rotation_due = "demand"
        elif (
            self.config.reference_seconds
            and time.time() - self.reference.taken_at >= self.config.reference_seconds
        ):
            self._rotation_due = "schedule"
        return finished

    def _start_window(self, current: Mapping[str, np.ndarray]) -> None:
        """Close the current window: gather the reference sample's current vectors here (a
        copy, while the learner is not changing them) and work out the signals on the
        monitor's thread."""
        assert self.reference is not None
        present, vectors = _vectors_of(current, self.reference.ids)
        self._window = self._math.submit(
            signals_of,
            self.reference,
            present,
            vectors,
            self.cosine_changes,
            self.config.dimension_threshold,
            self.config.neighbours,
        )
        self.cosine_changes = []
        self.window_started = time.monotonic()

    def settle(self) -> dict[str, float] | None:
        """Wait for the monitor's thread: a reference being taken is installed, and a window
        being worked out is published; returns that window's signals, if there was one."""
        self._taken(wait=True)
        return self._finished_window(wait=True)

    def _finished_window(self, wait: bool) -> dict[str, float] | None:
        window = self._window
        if window is None or not (wait or window.done()):
            return None
        self._window = None
        signals = window.result()
        self.windows += 1
        self.last_signals = signals
        metrics.DRIFT_WINDOWS.inc()
        for signal, value in signals.items():
            metrics.DRIFT_SIGNAL.labels(signal=signal).set(value)
        for signal in self.alarms():
            metrics.DRIFT_ALARMS.labels(signal=signal).inc()
        return signals

    def rotate(self, current: Mapping[str, np.ndarray], clicks: Mapping[str, int], trigger: str) -> None:
        """Start taking a new reference snapshot of ``current`` (a sample of at most
        ``max_items``): the sample and its vectors are copied here, the click counts read and
        the anchors chosen on the monitor's thread (20 ms of lookups at 1M items); a later
        call installs it. The alignment sums are not rebuilt: they follow every update, and in
        float64 the rounding of even 10^9 replace() calls stays far below the gauge's
        precision, while a rebuild reads every item (6.8 s at 1M items)."""
        ids, vectors = sample_of(current, self.config.max_items, self.rng)
        taking = self._math.submit(ReferenceSnapshot.of, ids, vectors, clicks, self.config.anchor_items)
        self._taking = (taking, trigger)
        self._rotate_requested.clear()
        self._rotation_due = None

    def _taken(self, wait: bool) -> None:
        """Install the reference being taken, once taken (or ``wait`` for it)."""
        if self._taking is None or not (wait or self._taking[0].done()):
            return
        (taking, trigger), self._taking = self._taking, None
        self.reference = taking.result()
        self.window_started = time.monotonic()
        self.cosine_changes = []
        metrics.DRIFT_REFERENCE_ROTATIONS.labels(trigger=trigger).inc()
        metrics.DRIFT_REFERENCE_AGE.set(0.0)
        log.warning(
            "drift reference taken (%s): %d items sampled, %d anchors",
            trigger,
            len(self.reference.ids),
            len(self.reference.anchors),
        )

    # -- from the event loop -----------------------------------------------------------

    def request_rotation(self) -> None:
        """Take a new reference after the next window (on demand)."""
        self._rotate_requested.set()

    def summary(self) -> dict[str, Any]:
        return {
            "reference_taken_at": self.reference.taken_at if self.reference else None,
            "windows": self.windows,
            "signals": dict(self.last_signals),
            "thresholds": dict(self.config.thresholds),
            "alarms": self.alarms(),
            "events": {f"{d}/{s}": n for (d, s), n in self.events.items()},
            "predictability": {name: t.alignment() for name, t in self.trackers.items()},
        }

    def alarms(self) -> list[str]:
        """The signals past their threshold in the last window."""
        limits = self.config.thresholds
        return [
            signal
            for signal, value in self.last_signals.items()
            if signal in limits
            and (value > limits[signal] if signal in SIGNALS_HIGH_IS_BAD else value < limits[signal])
        ]
