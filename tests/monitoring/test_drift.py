"""Drift signals, stream detectors and the DriftMonitor, without Kafka.

Synthetic vectors and streams (labelled so in each test) pin each signal's behaviour; the
real-data behaviour (MovieLens-100k through a worker) is in test_prometheus_drift.py.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from onevec.models.alignment import centroid_shift
from onevec.models.kernel_alignment import centred_alignment
from onevec.monitoring.drift import (
    DriftConfig,
    DriftMonitor,
    LabelSpace,
    ReferenceSnapshot,
    StreamDriftDetectors,
    VectorUpdates,
    drifted_dimension_share,
    neighbour_overlap,
    window_signals,
)


def unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.fixture
def clustered() -> dict[str, np.ndarray]:
    """Synthetic: 300 unit vectors in 8 clusters, 16 dimensions."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, 16)) * 2
    return {f"i{n}": v for n, v in enumerate(unit(centres[np.arange(300) % 8] + rng.normal(size=(300, 16))))}


def changed(
    published: dict[str, np.ndarray], new: dict[str, np.ndarray], sampled: bool = True
) -> VectorUpdates:
    """One batch: the ``new`` vectors replacing what ``published`` holds (then updated)."""
    items = list(new)
    had = np.array([item in published for item in items])
    previous = np.stack([published.get(item, np.zeros_like(new[item])) for item in items])
    updates = VectorUpdates(items, np.stack(list(new.values())), had, np.full(len(items), sampled), previous)
    published.update(new)
    return updates


def snapshot(vectors: dict[str, np.ndarray], anchors: int = 50) -> ReferenceSnapshot:
    clicks = {item: n for n, item in enumerate(vectors)}
    return ReferenceSnapshot.take(vectors, clicks, anchors, 10_000, np.random.default_rng(0))


def test_identical_vectors_show_no_drift(clustered: dict[str, np.ndarray]) -> None:
    signals = window_signals(snapshot(clustered), clustered, [], 0.25, 10)
    assert signals["centroid_shift"] == pytest.approx(0.0, abs=1e-9)
    assert signals["drifted_dimensions"] == 0.0
    assert signals["anchor_cka"] == pytest.approx(1.0)
    assert signals["neighbour_overlap"] == 1.0
    assert signals["cosine_change"] == 0.0


def test_rotation_keeps_cka_and_neighbours_but_moves_coordinates(clustered: dict[str, np.ndarray]) -> None:
    rotation, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(16, 16)))
    rotated = {item: v @ rotation for item, v in clustered.items()}
    signals = window_signals(snapshot(clustered), rotated, [], 0.25, 10)
    # Paper 3: a rotation is harmless; CKA and neighbourhoods see that, raw coordinates do not.
    assert signals["anchor_cka"] == pytest.approx(1.0, abs=1e-9)
    assert signals["neighbour_overlap"] == 1.0
    assert signals["drifted_dimensions"] > 0.5


def test_shuffled_vectors_lose_cka_and_neighbours(clustered: dict[str, np.ndarray]) -> None:
    items = list(clustered)
    order = np.random.default_rng(2).permutation(len(items))
    shuffled = {item: clustered[items[j]] for item, j in zip(items, order, strict=True)}
    signals = window_signals(snapshot(clustered), shuffled, [], 0.25, 10)
    assert signals["anchor_cka"] < 0.5
    assert signals["neighbour_overlap"] < 0.3
    # The same set of vectors, relabelled: the distribution-level signals stay quiet.
    assert signals["centroid_shift"] == pytest.approx(0.0, abs=1e-9)
    assert signals["drifted_dimensions"] == 0.0


def test_distribution_signals_see_a_shift() -> None:
    rng = np.random.default_rng(3)
    before = rng.normal(size=(500, 8))
    assert drifted_dimension_share(before, before + rng.normal(scale=0.01, size=before.shape), 0.25) == 0.0
    shifted = before.copy()
    shifted[:, :4] += 1.0  # four of eight dimensions move by one standard deviation
    assert drifted_dimension_share(before, shifted, 0.25) == 0.5
    assert centroid_shift(before + 1.0, before + 1.0) == pytest.approx(0.0, abs=1e-12)
    assert centroid_shift(before + [1, 0, 0, 0, 0, 0, 0, 0], before + [0, 1, 0, 0, 0, 0, 0, 0]) > 0.5


def test_neighbour_overlap_excludes_the_item_itself() -> None:
    vectors = unit(np.random.default_rng(4).normal(size=(50, 4)))
    assert neighbour_overlap(vectors, vectors, np.arange(5), k=3) == 1.0


def test_stream_detectors_quiet_on_stationary_and_fire_on_worse_streams() -> None:
    """Synthetic streams: batches of 250 hits at rate 0.25 with loss ~6.3; then (drifted) the hit
    rate falls to 0.02 and the loss rises to 7.5; (improving) the hit rate rises instead."""
    rng = np.random.default_rng(5)

    def run(hit_rate_after: float, loss_after: float) -> set[tuple[str, str]]:
        detectors = StreamDriftDetectors()
        fired: set[tuple[str, str]] = set()
        for batch in range(120):
            rate, loss = (0.25, 6.3) if batch < 60 else (hit_rate_after, loss_after)
            hits = list(rng.random(250) < rate)
            fired |= set(detectors.update(loss + rng.normal(scale=0.2), hits))
        return fired

    assert run(0.25, 6.3) == set()
    every = {("adwin", "hit"), ("page_hinkley", "hit"), ("page_hinkley", "loss"), ("adwin", "loss")}
    assert run(0.02, 7.5) == every
    assert run(0.45, 5.5) == set()  # a model getting better is not drifting


def test_detectors_start_when_the_first_reference_is_asked_for(clustered: dict[str, np.ndarray]) -> None:
    """Not when the monitor's thread installs it: under a backlog the rounds in between can hold
    the change itself, and detectors that never saw the old level cannot find it."""
    monitor = DriftMonitor(DriftConfig(window_seconds=0.0, warmup_examples=100), dim=16)
    published: dict[str, np.ndarray] = {}
    monitor.observe(changed(published, clustered))
    adwin = monitor.streams.detectors[("adwin", "hit")].detector
    monitor.observe_step(6.0, [True] * 50, examples=100)
    assert adwin.width == 0  # warming up
    monitor.after_step(published, {})  # warm-up over: the reference is being taken
    assert monitor.reference is None  # installed by a later call, not yet
    monitor.observe_step(6.0, [True] * 50, examples=50)
    assert adwin.width == 50
    monitor.settle()
    assert monitor.reference is not None


def test_monitor_warms_up_rotates_on_demand_tracks_predictability(clustered: dict[str, np.ndarray]) -> None:
    labels = {item: {"genre": [f"g{n % 8}"], "decade": f"d{n % 3}"} for n, item in enumerate(clustered)}
    config = DriftConfig(window_seconds=0.0, warmup_examples=100, anchor_items=20)
    monitor = DriftMonitor(config, dim=16, attributes=labels, labels=["genre", "decade", "absent"])
    assert sorted(monitor.trackers) == ["decade", "genre"]  # a label no item has is skipped

    published: dict[str, np.ndarray] = {}
    monitor.observe(changed(published, dict(list(clustered.items())[:100])))
    monitor.observe(changed(published, clustered))  # 100 of them had a vector already
    monitor.observe_step(6.0, [True, False], examples=50)
    assert monitor.after_step(published, {}) is None and monitor.reference is None  # still warming up
    monitor.observe_step(6.0, [True, False], examples=50)
    monitor.after_step(published, {})  # the reference is taken on the monitor's thread
    monitor.settle()
    assert monitor.reference is not None and len(monitor.reference.anchors) == 20

    # Move half the items: the cosine change and the incremental alignment follow.
    rng = np.random.default_rng(6)
    moved = list(published)[:150]
    news = unit(np.stack([published[item] for item in moved]) + rng.normal(scale=0.5, size=(150, 16)))
    monitor.observe(changed(published, dict(zip(moved, news, strict=True))))
    assert monitor.after_step(published, {}) is None  # the window's arithmetic, on its thread
    signals = monitor.settle()
    assert signals is not None and signals["cosine_change"] > 0.05
    items = list(published)
    genre = LabelSpace("genre", labels)
    vectors, rows = np.stack([published[i] for i in items]), genre.labels[genre.rows_of(items)]
    expected = centred_alignment(vectors, rows)
    assert monitor.trackers["genre"].alignment() == pytest.approx(expected, rel=1e-6)

    # Swept items (published because they moved past a minimum) feed the alignment sums, not
    # the cosine change: a window of only those reads 0.0, not at least that minimum.
    news = unit(np.stack([published[item] for item in items[:40]]) + rng.normal(scale=0.5, size=(40, 16)))
    monitor.observe(changed(published, dict(zip(items[:40], news, strict=True)), sampled=False))
    monitor.after_step(published, {})
    signals = monitor.settle()
    assert signals is not None and signals["cosine_change"] == 0.0
    vectors = np.stack([published[i] for i in items])
    assert monitor.trackers["genre"].alignment() == pytest.approx(centred_alignment(vectors, rows), rel=1e-6)

    before = monitor.reference
    monitor.request_rotation()
    monitor.after_step(published, {})  # the window, against the old reference
    assert monitor.reference is before
    came = monitor.after_step(published, {})  # then the rotation, a call later
    settled = monitor.settle()
    assert (came or settled) is not None  # the window's signals came all the same
    assert monitor.reference is not before and not monitor._rotate_requested.is_set()
    assert set(monitor.summary()) >= {"signals", "thresholds", "alarms", "events", "predictability"}


def test_a_window_is_worked_out_off_the_learner_thread_and_published_by_a_later_call(
    clustered: dict[str, np.ndarray],
) -> None:
    config = DriftConfig(window_seconds=0.0, warmup_examples=0, anchor_items=20, reference_seconds=0.0)
    monitor = DriftMonitor(config, dim=16)
    published: dict[str, np.ndarray] = {}
    monitor.observe(changed(published, clustered))
    monitor.after_step(published, {})  # the reference, taken on the monitor's thread
    monitor.settle()
    reference = monitor.reference
    assert monitor.after_step(published, {}) is None and monitor.windows == 0  # started, not done
    expected = window_signals(reference, published, [], 0.25, 10)
    found = None
    for _ in range(500):  # the learner's next rounds: a window in the works makes no other
        found = monitor.after_step(published, {})
        if found is not None:
            break
        assert monitor.windows == 0
        time.sleep(0.01)
    assert found == expected and monitor.last_signals == expected and monitor.windows == 1
    # With no time between windows the call that published one started the next.
    assert monitor.settle() == expected and monitor.windows == 2
    assert monitor.settle() is None  # nothing left in the works


def test_a_first_publish_backlog_drains_in_bounded_batches_and_rotation_keeps_the_sums() -> None:
    # Synthetic: 1,000 random unit vectors with one of 5 labels.
    rng = np.random.default_rng(3)
    items = [f"i{n}" for n in range(1000)]
    labels = {item: {"genre": f"g{n % 5}"} for n, item in enumerate(items)}
    config = DriftConfig(window_seconds=0.0, warmup_examples=0, anchor_items=20, apply_updates=256)
    monitor = DriftMonitor(config, dim=8, attributes=labels, labels=["genre"])
    published = dict(zip(items, unit(rng.normal(size=(1000, 8))), strict=True))
    # A catalogue's first publish, in chunks as the learner's catalogue publish makes them.
    for start in range(0, 1000, 300):
        chunk = items[start : start + 300]
        monitor.observe(VectorUpdates.first(chunk, np.stack([published[i] for i in chunk])))
    assert monitor.pending == 1000
    drained = 0
    while monitor.apply_backlog():
        drained += 1
        assert monitor.trackers["genre"].n == 256 * drained  # one batch per call, no more
        assert monitor.pending == 1000 - 256 * drained
    assert drained == 3  # 1,000 updates: three batches, the last 232 left for after_step
    genre = LabelSpace("genre", labels)

    def exact() -> float:
        return centred_alignment(np.stack([published[i] for i in items]), genre.labels[genre.rows_of(items)])

    monitor.observe_step(None, [], examples=1)
    monitor.after_step(published, {})
    assert monitor.trackers["genre"].n == 1000
    assert monitor.trackers["genre"].alignment() == pytest.approx(exact(), rel=1e-9)
    # Changes queued before a rotation still reach the sums (the rotation no longer rebuilds
    # them from the published vectors).
    monitor.observe(changed(published, dict(zip(items[:300], unit(rng.normal(size=(300, 8))), strict=True))))
    monitor.request_rotation()
    assert monitor.apply_backlog()  # 300 queued: a batch of 256 now, the rest with the window
    before = monitor.reference
    monitor.after_step(published, {})  # the window
    monitor.after_step(published, {})  # the rotation
    monitor.settle()
    assert monitor.reference is not None and monitor.reference is not before  # rotated
    assert monitor.trackers["genre"].alignment() == pytest.approx(exact(), rel=1e-9)
