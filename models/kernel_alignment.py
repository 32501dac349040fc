"""Kernel predictability: centred kernel-target alignment of item vectors with task labels.

Paper 3 (*Pretrained Embeddings for E-commerce ML: When it Fails and Why?*) predicts how
useful an embedding will be for a task before any downstream model is trained, by how well
the vectors' kernel lines up with the labels' kernel:

    A = ||Ec^T Yc||_F^2 / (||Ec^T Ec||_F * ||Yc^T Yc||_F)

with ``E`` the (n, d) item vectors and ``Y`` the (n, c) one-hot (or multi-label 0/1) labels,
both centred over the items. ``A`` lies in [0, 1]; it is linear CKA between the vectors and
the labels, so it ignores rotations and isotropic scaling of the vectors.

Every term is a function of the running sums ``E^T E``, ``E^T Y``, ``Y^T Y``, ``sum E``,
``sum Y`` and ``n`` (centring is ``M^T M - s s^T / n``), which is why
:class:`AlignmentTracker` can follow the value live: each upsert subtracts the item's old
vector and adds the new one, in O(d^2 + d c) and independent of the number of items.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

__all__ = ["AlignmentTracker", "centred_alignment", "label_matrix"]

_CHUNK = 65_536  # rows converted to float64 at a time by the batch updates

Label = int | Sequence[float] | np.ndarray


def label_matrix(labels: np.ndarray, num_labels: int | None = None) -> np.ndarray:
    """Labels as an (n, c) float64 0/1 matrix.

    ``labels`` is either a 1-d array of integer class ids (one-hot encoded; with
    ``num_labels`` unset, only the classes present get a column, which changes nothing after
    centring since an all-zero column stays zero) or an (n, c) multi-label 0/1 matrix, used as is.
    """
    labels = np.asarray(labels)
    if labels.ndim == 2:
        return labels.astype(np.float64)
    if labels.ndim != 1:
        raise ValueError(f"labels must be (n,) class ids or an (n, c) matrix, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"class ids must be integers, got dtype {labels.dtype}")
    if num_labels is None:
        _, ids = np.unique(labels, return_inverse=True)
        num_labels = int(ids.max()) + 1 if ids.size else 0
    else:
        if labels.size and (labels.min() < 0 or labels.max() >= num_labels):
            raise ValueError(f"class ids must lie in [0, {num_labels})")
        ids = labels
    onehot = np.zeros((labels.shape[0], num_labels), dtype=np.float64)
    onehot[np.arange(labels.shape[0]), ids] = 1.0
    return onehot


def _alignment_from_sums(
    n: float, sum_e: np.ndarray, sum_y: np.ndarray, ee: np.ndarray, ey: np.ndarray, yy: np.ndarray
) -> float:
    """Centred alignment from the running sums (0.0 when either kernel is degenerate)."""
    if n < 2:
        return 0.0
    cross = ey - np.outer(sum_e, sum_y) / n  # Ec^T Yc
    gram_e = ee - np.outer(sum_e, sum_e) / n  # Ec^T Ec
    gram_y = yy - np.outer(sum_y, sum_y) / n  # Yc^T Yc
    scale = float(np.linalg.norm(gram_e) * np.linalg.norm(gram_y))
    if scale <= 1e-12:
        return 0.0
    return float(np.linalg.norm(cross) ** 2 / scale)


def centred_alignment(vectors: np.ndarray, labels: np.ndarray) -> float:
    """Centred kernel-target alignment of ``vectors`` (n, d) with ``labels``.

    ``labels`` are (n,) integer class ids or an (n, c) multi-label 0/1 matrix. Returns a
    value in [0, 1]; 0.0 when there are fewer than two items or either side is constant.

    >>> import numpy as np
    >>> labels = np.array([0, 0, 1, 1])
    >>> round(centred_alignment(np.array([[1.0], [1.0], [-1.0], [-1.0]]), labels), 6)
    1.0
    >>> round(centred_alignment(np.array([[1.0], [-1.0], [1.0], [-1.0]]), labels), 6)
    0.0
    """
    e = np.asarray(vectors, dtype=np.float64)
    if e.ndim != 2:
        raise ValueError(f"vectors must be (n, d), got shape {e.shape}")
    y = label_matrix(labels)
    if y.shape[0] != e.shape[0]:
        raise ValueError(f"{e.shape[0]} vectors but {y.shape[0]} labels")
    # Centre explicitly (numerically better than the running-sum form for one-off batches).
    ec = e - e.mean(0)
    yc = y - y.mean(0)
    scale = float(np.linalg.norm(ec.T @ ec) * np.linalg.norm(yc.T @ yc))
    if e.shape[0] < 2 or scale <= 1e-12:
        return 0.0
    return float(np.linalg.norm(ec.T @ yc) ** 2 / scale)


class AlignmentTracker:
    """Centred kernel-target alignment kept up to date one item at a time.

    Holds the running sums ``E^T E`` (d, d), ``E^T Y`` (d, c), ``Y^T Y`` (c, c), ``sum E``,
    ``sum Y`` and ``n`` in float64. The caller keeps the item's current vector (Qdrant does):
    :meth:`replace` needs the old one to take its contribution out.

    >>> import numpy as np
    >>> tracker = AlignmentTracker(dim=1, num_labels=2)
    >>> for vector, label in [([1.0], 0), ([1.0], 0), ([-1.0], 1), ([1.0], 1)]:
    ...     tracker.add(np.array(vector), label)
    >>> round(tracker.alignment(), 3)
    0.333
    >>> tracker.replace(np.array([1.0]), np.array([-1.0]), 1)
    >>> round(tracker.alignment(), 3)
    1.0
    """

    def __init__(self, dim: int, num_labels: int) -> None:
        if dim < 1 or num_labels < 1:
            raise ValueError("dim and num_labels must be positive")
        self.dim = dim
        self.num_labels = num_labels
        self.n = 0
        self.sum_e = np.zeros(dim)
        self.sum_y = np.zeros(num_labels)
        self.ee = np.zeros((dim, dim))
        self.ey = np.zeros((dim, num_labels))
        self.yy = np.zeros((num_labels, num_labels))

    def _label_row(self, label: Label) -> np.ndarray:
        if isinstance(label, int | np.integer):
            if not 0 <= int(label) < self.num_labels:
                raise ValueError(f"class id {label} outside [0, {self.num_labels})")
            row = np.zeros(self.num_labels)
            row[int(label)] = 1.0
            return row
        row = np.asarray(label, dtype=np.float64)
        if row.shape != (self.num_labels,):
            raise ValueError(f"label row must have shape ({self.num_labels},), got {row.shape}")
        return row

    def _vector(self, vector: np.ndarray) -> np.ndarray:
        e = np.asarray(vector, dtype=np.float64).reshape(-1)
        if e.shape != (self.dim,):
            raise ValueError(f"vector must have {self.dim} dimensions, got {e.shape}")
        return e

    def _accumulate(self, vector: np.ndarray, label: Label, sign: float) -> None:
        e = self._vector(vector)
        y = self._label_row(label)
        self.sum_e += sign * e
        self.sum_y += sign * y
        self.ee += sign * np.outer(e, e)
        self.ey += sign * np.outer(e, y)
        self.yy += sign * np.outer(y, y)

    def add(self, vector: np.ndarray, label: Label) -> None:
        """Count a new item with its vector and label (a class id or a 0/1 row)."""
        self._accumulate(vector, label, 1.0)
        self.n += 1

    def remove(self, vector: np.ndarray, label: Label) -> None:
        """Take out an item previously added with exactly this vector and label."""
        if self.n == 0:
            raise ValueError("remove from an empty tracker")
        self._accumulate(vector, label, -1.0)
        self.n -= 1

    def replace(self, old: np.ndarray, new: np.ndarray, label: Label) -> None:
        """An item's vector changed from ``old`` to ``new`` (its label did not)."""
        old_e, new_e = self._vector(old), self._vector(new)
        y = self._label_row(label)
        self.sum_e += new_e - old_e
        self.ee += np.outer(new_e, new_e) - np.outer(old_e, old_e)
        self.ey += np.outer(new_e - old_e, y)

    def add_many(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        """Count k new items at once: (k, d) vectors and (k, c) 0/1 label rows."""
        for e, y in self._chunks(vectors, labels):
            self.sum_e += e.sum(0)
            self.sum_y += y.sum(0)
            self.ee += e.T @ e
            self.ey += e.T @ y
            self.yy += y.T @ y
            self.n += len(e)

    def replace_many(self, old: np.ndarray, new: np.ndarray, labels: np.ndarray) -> None:
        """k items' vectors changed from ``old`` to ``new`` (both (k, d)); labels (k, c) unchanged."""
        if len(old) != len(new):
            raise ValueError(f"{len(old)} old vectors but {len(new)} new ones")
        for (old_e, y), (new_e, _) in zip(self._chunks(old, labels), self._chunks(new, labels), strict=True):
            self.sum_e += (new_e - old_e).sum(0)
            self.ee += new_e.T @ new_e - old_e.T @ old_e
            self.ey += (new_e - old_e).T @ y

    def _chunks(self, vectors: np.ndarray, labels: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(vectors, labels) as float64 blocks of at most ``_CHUNK`` rows: the float64 copies of a
        whole catalogue (1M x 100 labels) would be gigabytes."""
        vectors = np.asarray(vectors).reshape(-1, self.dim)
        labels = np.asarray(labels).reshape(-1, self.num_labels)
        if len(vectors) != len(labels):
            raise ValueError(f"{len(vectors)} vectors but {len(labels)} label rows")
        for start in range(0, len(vectors), _CHUNK):
            end = start + _CHUNK
            yield vectors[start:end].astype(np.float64), labels[start:end].astype(np.float64)

    def alignment(self) -> float:
        """The current centred alignment, in [0, 1] (0.0 with fewer than two items)."""
        return _alignment_from_sums(self.n, self.sum_e, self.sum_y, self.ee, self.ey, self.yy)
