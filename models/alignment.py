"""Version-to-version alignment of embeddings, and a similarity measure between versions.

Inner-product-trained vectors are only defined up to an orthogonal transform (paper 3): a
retrained or long-running model may drift by a rotation that leaves every score unchanged but
moves every coordinate. Before a new version is served it is rotated onto the serving one
with orthogonal Procrustes on the items both versions share, so consumers that keep raw
coordinates (caches, downstream models) see only real change. Linear CKA tells a harmless
rotation (CKA ~ 1) from a real change of the geometry.
"""

from __future__ import annotations

import numpy as np

__all__ = ["align", "linear_cka", "procrustes"]


def procrustes(new: np.ndarray, old: np.ndarray) -> np.ndarray:
    """The orthogonal (dim, dim) ``R`` minimising ``||new @ R - old||_F``.

    Rows of ``new`` and ``old`` are the same items (the shared anchor set), in the same
    order. ``R`` is orthogonal, not a general linear map, so applying it changes no inner
    product or norm: the new version's scores are exactly what it was trained to give.
    """
    new = np.asarray(new, dtype=np.float64)
    old = np.asarray(old, dtype=np.float64)
    if new.shape != old.shape or new.ndim != 2:
        raise ValueError(f"need two (n, dim) arrays of one shape, got {new.shape} and {old.shape}")
    # Schoenemann (1966): with new^T old = U S V^T, R = U V^T.
    u, _, vt = np.linalg.svd(new.T @ old)
    return u @ vt


def align(
    new_anchor: np.ndarray, old_anchor: np.ndarray, new_vectors: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Rotate every new vector onto the old version's coordinates.

    Fits ``R`` on the anchor items (present in both versions) and applies it to all of
    ``new_vectors``; returns ``(aligned float32, R)``.
    """
    rotation = procrustes(new_anchor, old_anchor)
    aligned = np.asarray(new_vectors, dtype=np.float64) @ rotation
    return aligned.astype(np.float32), rotation


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear centred kernel alignment of two representations of the same n items.

    ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F * ||Yc^T Yc||_F)``: 1 for representations equal up to
    rotation and isotropic scaling, near 0 for unrelated ones. Dimensions may differ.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"need (n, d1) and (n, d2) arrays, got {x.shape} and {y.shape}")
    x = x - x.mean(0)
    y = y - y.mean(0)
    cross = np.linalg.norm(y.T @ x) ** 2
    scale = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(cross / scale) if scale > 0 else 0.0
