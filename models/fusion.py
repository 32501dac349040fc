"""Unified product vectors: a weighted sum of L2-normalised source vectors (paper 1).

``u = normalise(sum_s w_s * normalise(v_s))`` over the sources an item actually has
(behaviour, text, image, ...): a missing source is left out, not treated as a zero vector,
so an item without an image is not pulled towards the origin. An item with few clicks has a
noisy behaviour vector, so ``click_scaled_weights`` lets it lean on its static vectors.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["click_scaled_weights", "fuse", "fuse_batch", "normalise"]

_EPS = 1e-12


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; zero rows stay zero (float32)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.where(norms > _EPS, vectors / np.maximum(norms, _EPS), 0.0).astype(np.float32)


def fuse(vectors: Mapping[str, np.ndarray | None], weights: Mapping[str, float]) -> np.ndarray:
    """One item's unified vector from the sources present in ``vectors``.

    A source is present when its vector is not None and not all zeros (an encoder's "no
    information" answer). Every present source needs a weight; weights of absent sources
    are ignored. Raises ValueError when nothing usable is present.
    """
    matrices = {s: None if v is None else np.asarray(v)[None, :] for s, v in vectors.items()}
    return fuse_batch(matrices, weights)[0]


def fuse_batch(
    matrices: Mapping[str, np.ndarray | None], weights: Mapping[str, float | np.ndarray]
) -> np.ndarray:
    """Unified vectors of n items: ``matrices[s]`` is (n, dim) or None, ``weights[s]`` a
    scalar or a per-item (n,) array. A zero row means that item lacks that source. A row
    with no present source (or only zero weights) is returned as zeros."""
    present = {s: m for s, m in matrices.items() if m is not None}
    if not present:
        raise ValueError("no source vectors to fuse")
    shapes = {np.shape(m) for m in present.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"sources must all be (n, dim) with the same shape, got {shapes}")
    n, dim = next(iter(shapes))
    total = np.zeros((n, dim), dtype=np.float32)
    for source, matrix in present.items():
        if source not in weights:
            raise ValueError(f"no weight for source {source!r}")
        weight = np.broadcast_to(np.asarray(weights[source], dtype=np.float32), (n,))
        total += weight[:, None] * normalise(matrix)
    return normalise(total)


def click_scaled_weights(
    weights: Mapping[str, float],
    clicks: float | np.ndarray,
    clicks_for_full_weight: float,
    behaviour: str = "behaviour",
) -> dict[str, float | np.ndarray]:
    """``weights`` with the behaviour weight scaled by ``min(1, clicks / clicks_for_full_weight)``.

    After normalisation the static sources then dominate for a rarely clicked item, and the
    behaviour vector takes its full share once the item has enough clicks. ``clicks`` may be
    one count or an (n,) array of counts, giving per-item weights for ``fuse_batch``.
    """
    if clicks_for_full_weight <= 0:
        raise ValueError("clicks_for_full_weight must be positive")
    share = np.clip(np.asarray(clicks, dtype=np.float64) / clicks_for_full_weight, 0.0, 1.0)
    scaled: dict[str, float | np.ndarray] = dict(weights)
    if behaviour in weights:
        scaled[behaviour] = weights[behaviour] * (float(share) if share.ndim == 0 else share)
    return scaled
