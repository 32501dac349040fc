"""Procrustes alignment, linear CKA and source fusion."""

from __future__ import annotations

import numpy as np
import pytest

from onevec.models.alignment import align, linear_cka, procrustes
from onevec.models.fusion import click_scaled_weights, fuse, fuse_batch


def random_rotation(dim: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(dim, dim)))
    return q * np.sign(np.diag(r))


def test_procrustes_recovers_a_random_rotation() -> None:
    rng = np.random.default_rng(0)
    old = rng.normal(size=(500, 64))
    rotation = random_rotation(64, rng)
    new = old @ rotation  # the same geometry in other coordinates
    recovered = procrustes(new, old)
    assert np.allclose(recovered @ recovered.T, np.eye(64), atol=1e-10)
    assert np.abs(new @ recovered - old).max() < 1e-9

    # Fitted on an anchor subset, applied to every new vector (including non-anchors).
    extra_old = rng.normal(size=(100, 64))
    all_new = np.vstack([new, extra_old @ rotation])
    aligned, _ = align(new[:200], old[:200], all_new)
    assert aligned.dtype == np.float32
    assert np.abs(aligned - np.vstack([old, extra_old])).max() < 1e-4

    assert linear_cka(old, new) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(old, rng.normal(size=(500, 64))) < 0.2


def test_procrustes_with_noise_keeps_inner_products() -> None:
    rng = np.random.default_rng(1)
    old = rng.normal(size=(300, 16))
    new = old @ random_rotation(16, rng) + 0.05 * rng.normal(size=(300, 16))
    aligned, rotation = align(new, old, new)
    # Orthogonal: the new version's own scores are untouched by alignment.
    assert np.allclose(aligned @ aligned.T, new @ new.T, atol=1e-3)
    assert np.abs(aligned - old).mean() < 0.1 < np.abs(new - old).mean()
    assert 0.95 < linear_cka(old, new) < 1.0


def test_fuse_uses_only_present_sources_with_their_weights() -> None:
    behaviour = np.array([3.0, 0.0, 0.0])
    text = np.array([0.0, 10.0, 0.0])
    weights = {"behaviour": 3.0, "text": 1.0, "image": 100.0}
    unified = fuse({"behaviour": behaviour, "text": text, "image": None}, weights)
    # Sources are normalised before weighting, so the 10x longer text vector counts 1/3.
    assert np.allclose(unified, np.array([3.0, 1.0, 0.0]) / np.sqrt(10.0))
    assert np.linalg.norm(unified) == pytest.approx(1.0)
    # A zero vector is an absent source, not a pull towards the origin.
    alone = fuse({"behaviour": behaviour, "image": np.zeros(3)}, weights)
    assert np.allclose(alone, [1.0, 0.0, 0.0])
    with pytest.raises(ValueError):
        fuse({"audio": behaviour}, weights)
    with pytest.raises(ValueError):
        fuse({"image": None}, weights)


def test_few_clicks_lean_on_static_vectors() -> None:
    weights = {"behaviour": 1.0, "text": 1.0}
    assert click_scaled_weights(weights, 5, 20) == {"behaviour": 0.25, "text": 1.0}
    assert click_scaled_weights(weights, 500, 20) == weights
    behaviour = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    text = np.array([[0.0, 2.0], [0.0, 2.0], [0.0, 2.0]])
    scaled = click_scaled_weights(weights, np.array([0, 40, 3]), 20)
    unified = fuse_batch({"behaviour": behaviour, "text": text}, scaled)
    assert np.allclose(unified[0], [0.0, 1.0])  # never clicked: text only
    assert np.allclose(unified[1], [np.sqrt(0.5), np.sqrt(0.5)])  # full weight
    assert np.allclose(unified[2], [0.0, 1.0])  # no behaviour vector at all
    assert np.allclose(np.linalg.norm(unified, axis=1), 1.0)
