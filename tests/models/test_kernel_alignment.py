"""Centred kernel-target alignment: the incremental tracker equals the batch formula, and the
value ranks label-separating vectors above random ones."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

from onevec.models import kernel_alignment
from onevec.models.alignment import linear_cka
from onevec.models.kernel_alignment import AlignmentTracker, centred_alignment, label_matrix


def test_doctests_run() -> None:
    assert doctest.testmod(kernel_alignment).failed == 0


def test_batch_equals_linear_cka_with_one_hot_labels() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(200, 16))
    labels = rng.integers(0, 5, size=200)
    expected = linear_cka(vectors, label_matrix(labels))
    assert centred_alignment(vectors, labels) == pytest.approx(expected, rel=1e-9)


def test_incremental_equals_batch_after_random_adds_replaces_removes() -> None:
    rng = np.random.default_rng(1)
    dim, num_labels = 8, 4
    tracker = AlignmentTracker(dim, num_labels)
    items: dict[int, tuple[np.ndarray, int]] = {}
    next_id = 0
    for _ in range(2000):
        action = rng.random()
        if action < 0.5 or len(items) < 3:
            vector, label = rng.normal(size=dim), int(rng.integers(num_labels))
            tracker.add(vector, label)
            items[next_id] = (vector, label)
            next_id += 1
        elif action < 0.85:
            key = int(rng.choice(list(items)))
            old, label = items[key]
            new = old + rng.normal(scale=0.5, size=dim)
            tracker.replace(old, new, label)
            items[key] = (new, label)
        else:
            key = int(rng.choice(list(items)))
            vector, label = items.pop(key)
            tracker.remove(vector, label)
    vectors = np.stack([v for v, _ in items.values()])
    labels = np.array([lab for _, lab in items.values()])
    assert tracker.n == len(items)
    assert tracker.alignment() == pytest.approx(centred_alignment(vectors, labels), rel=1e-6, abs=1e-9)


def test_multi_label_rows_match_batch() -> None:
    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(300, 6))
    labels = (rng.random((300, 3)) < 0.3).astype(np.float64)
    tracker = AlignmentTracker(6, 3)
    for vector, row in zip(vectors, labels, strict=True):
        tracker.add(vector, row)
    assert tracker.alignment() == pytest.approx(centred_alignment(vectors, labels), rel=1e-9)


def test_separating_vectors_align_better_than_random() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, size=400)
    centres = rng.normal(size=(4, 16)) * 3.0
    separating = centres[labels] + rng.normal(size=(400, 16))
    random = rng.normal(size=(400, 16))
    good, bad = centred_alignment(separating, labels), centred_alignment(random, labels)
    assert 0.0 <= bad < good <= 1.0
    assert good > 3 * bad


def test_invariant_to_rotation_and_scale() -> None:
    rng = np.random.default_rng(4)
    vectors = rng.normal(size=(100, 8))
    labels = rng.integers(0, 3, size=100)
    rotation, _ = np.linalg.qr(rng.normal(size=(8, 8)))
    assert centred_alignment(2.5 * vectors @ rotation, labels) == pytest.approx(
        centred_alignment(vectors, labels), rel=1e-9
    )


def test_degenerate_inputs_give_zero_and_bad_inputs_raise() -> None:
    assert centred_alignment(np.ones((5, 3)), np.array([0, 1, 0, 1, 0])) == 0.0
    assert centred_alignment(np.random.default_rng(5).normal(size=(5, 3)), np.zeros(5, dtype=int)) == 0.0
    assert AlignmentTracker(3, 2).alignment() == 0.0
    with pytest.raises(ValueError):
        centred_alignment(np.ones((4, 2)), np.array([0, 1, 0]))
    with pytest.raises(ValueError):
        AlignmentTracker(3, 2).add(np.ones(3), 2)
    with pytest.raises(ValueError):
        AlignmentTracker(3, 2).remove(np.ones(3), 0)


@pytest.mark.parametrize("chunk", [7, 65_536])
def test_batched_updates_equal_single_ones(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    """Also when the batch is converted in several chunks (uint8 labels, as the drift monitor
    keeps them)."""
    monkeypatch.setattr(kernel_alignment, "_CHUNK", chunk)
    rng = np.random.default_rng(6)
    vectors, labels = rng.normal(size=(50, 5)), label_matrix(rng.integers(0, 3, size=50), 3)
    moved = vectors + rng.normal(scale=0.3, size=vectors.shape)
    single, batched = AlignmentTracker(5, 3), AlignmentTracker(5, 3)
    for vector, new, row in zip(vectors, moved, labels, strict=True):
        single.add(vector, row)
        single.replace(vector, new, row)
    batched.add_many(vectors, labels.astype(np.uint8))
    batched.replace_many(vectors, moved, labels.astype(np.uint8))
    assert batched.n == single.n == 50
    assert batched.alignment() == pytest.approx(single.alignment(), rel=1e-9)
    assert batched.alignment() == pytest.approx(centred_alignment(moved, labels), rel=1e-9)
