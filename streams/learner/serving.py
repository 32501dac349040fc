"""Serve a new model version in the coordinates of the one Qdrant already serves.

Inner-product-trained vectors are defined only up to rotation (paper 3): a restarted worker
with a retrained model (another pre-training, another seed) would otherwise move every stored
coordinate at random. The rotation is fitted once, at start, on the items both versions hold
(orthogonal Procrustes), and applied to every item and session vector from then on; inner
products, and so rankings, are unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

import numpy as np

from onevec.models.alignment import linear_cka, procrustes
from onevec.streams.qdrant import QdrantStore

__all__ = ["ServingRotation"]

log = logging.getLogger(__name__)


class ServingRotation:
    """The rotation onto the served version (identity until :meth:`fit` found anchors)."""

    def __init__(self) -> None:
        self.matrix: np.ndarray | None = None

    def apply(self, vectors: np.ndarray) -> np.ndarray:
        return vectors if self.matrix is None else vectors @ self.matrix

    async def fit(
        self,
        store: QdrantStore,
        item_ids: Sequence[str],
        encode: Callable[[list[str]], Awaitable[np.ndarray]],
        min_anchors: int,
    ) -> float | None:
        """Fit on the ``item_ids`` whose behaviour vector Qdrant holds (``encode`` gives this
        model's vectors); returns the linear CKA between the versions on those anchors, or None
        with fewer than ``min_anchors`` of them (the model is then served as it is)."""
        stored = [await store.get_item(item_id) for item_id in item_ids]
        anchors = [
            (item_id, item.vectors["behaviour"])
            for item_id, item in zip(item_ids, stored, strict=True)
            if item is not None and "behaviour" in item.vectors
        ]
        if len(anchors) < min_anchors:
            return None
        new = await encode([item_id for item_id, _ in anchors])
        old = np.asarray([vector for _, vector in anchors], dtype=np.float32)
        self.matrix = procrustes(new, old).astype(np.float32)
        cka = linear_cka(new, old)
        log.warning("aligned to the serving version on %d anchors (CKA %.3f)", len(anchors), cka)
        return cka
