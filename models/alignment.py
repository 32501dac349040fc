"""Version-to-version alignment of embeddings, and measures of change between versions.

Inner-product-trained vectors are only defined up to an orthogonal transform (paper 3): a
retrained or long-running model may drift by a rotation that leaves every score unchanged but
moves every coordinate. Before a new version is served it is rotated onto the serving one
with orthogonal Procrustes on the items both versions share, so consumers that keep raw
coordinates (caches, downstream models) see only real change. Linear CKA tells a harmless
rotation (CKA ~ 1) from a real change of the geometry; the centroid shift sees the whole cloud
of vectors move (the live drift monitor and the evaluation both read it).
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import orthogonal_procrustes

__all__ = ["align", "centroid_shift", "linear_cka", "procrustes"]


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
    rotation, _ = orthogonal_procrustes(new, old)  # Schoenemann (1966), SVD of new^T old
    return np.asarray(rotation)


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


def centroid_shift(reference: np.ndarray, current: np.ndarray) -> float:
    """Cosine distance between the mean reference vector and the mean current vector (rows are
    items; 0.0 when either mean is zero). Unlike CKA it is not blind to a rotation: used on
    unit vectors, it reads how far the cloud's main direction turned."""
    a = np.asarray(reference, dtype=np.float64).mean(0)
    b = np.asarray(current, dtype=np.float64).mean(0)
    scale = float(np.linalg.norm(a) * np.linalg.norm(b))
    return 1.0 - float(a @ b) / scale if scale > 1e-12 else 0.0
