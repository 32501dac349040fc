"""Product image vectors: a Siamese CNN trained with a triplet loss (paper 1).

One small CNN embeds every image (the "Siamese" branches share weights) into a unit vector of
``dim``; the triplet loss pulls an anchor towards a positive and pushes it from a negative by
a margin. Positives are another image of the same class when labels are given (as paper 1
does with product categories); without labels, a randomly shifted and mirrored view of the
anchor itself, so an unlabelled catalogue can still train the encoder.

Every valid triplet of a batch counts (see :func:`batch_triplet_loss`).

Images are 28x28 grey, uint8 (Fashion-MNIST's format); :func:`decode_image` turns any PNG/JPEG
into that shape with pillow.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

__all__ = [
    "IMAGE_SIDE",
    "ImageEncoder",
    "ImageShapeError",
    "batch_triplet_loss",
    "decode_image",
    "read_idx",
    "view_triplet_loss",
]

IMAGE_SIDE = 28


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (MNIST format, optionally gzipped) as a uint8 array."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


class ImageShapeError(ValueError):
    """A decodable image whose shape cannot be a product photo squeezed to 28x28."""


MIN_SIDE, MAX_ASPECT = 8, 4.0
MAX_PIXELS = 4096 * 4096  # a product photo; more is a decompression bomb, refused unread


def decode_image(data: bytes) -> np.ndarray:
    """PNG/JPEG bytes -> (28, 28) uint8 grey. Raises ValueError when pillow cannot decode it
    or it has more than ``MAX_PIXELS`` pixels, ImageShapeError when a side is under 8 pixels
    or one side is over 4 times the other (a banner or a strip: resizing it to a square would
    destroy it). The size comes from the header, checked before any pixel is decoded."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size  # header only: nothing decoded yet
            if width * height > MAX_PIXELS:
                raise ValueError(f"not decoded: {width}x{height} pixels is over {MAX_PIXELS}")
            if min(width, height) < MIN_SIDE or max(width, height) > MAX_ASPECT * min(width, height):
                raise ImageShapeError(f"image is {width}x{height} pixels")
            image.draft("L", (IMAGE_SIDE * 2, IMAGE_SIDE * 2))  # JPEG: decode at reduced scale
            image.load()
            grey = image.convert("L").resize((IMAGE_SIDE, IMAGE_SIDE), Image.Resampling.BILINEAR)
    except (OSError, SyntaxError, Image.DecompressionBombError) as error:
        raise ValueError(f"not a decodable image: {error}") from None
    return np.asarray(grey, dtype=np.uint8)


class _SiameseCNN(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 14x14
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 7x7
        )
        self.head = nn.Linear(32 * 7 * 7, dim)

    def forward(self, images: Tensor) -> Tensor:
        return F.normalize(self.head(self.features(images).flatten(1)), dim=1)


def _as_input(images: np.ndarray) -> Tensor:
    return torch.from_numpy(np.asarray(images, dtype=np.float32) / 255.0).unsqueeze(1)


def _augment(batch: Tensor, generator: torch.Generator) -> Tensor:
    """A random shift of up to 2 pixels and a random horizontal mirror."""
    dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=generator))
    shifted = torch.roll(batch, shifts=(dy, dx), dims=(2, 3))
    flip = torch.rand(len(batch), generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], shifted.flip(3), shifted)


class ImageEncoder:
    """``fit`` on (n, 28, 28) uint8 images (with optional labels), ``encode`` any images."""

    def __init__(self, dim: int = 64, margin: float = 0.2, lr: float = 2e-3, seed: int = 0) -> None:
        self.dim, self.margin, self.lr, self.seed = dim, margin, lr, seed
        with torch.random.fork_rng(devices=[]):  # seeded weights, caller's global RNG untouched
            torch.manual_seed(seed)
            self.network = _SiameseCNN(dim)
        self.network.eval()

    def fit(
        self,
        images: np.ndarray,
        labels: np.ndarray | None = None,
        epochs: int = 2,
        batch_size: int = 128,
        on_epoch: Callable[[int, float], None] | None = None,
    ) -> list[float]:
        """Train on triplets (each image is an anchor once per epoch); returns epoch mean losses."""
        generator = torch.Generator().manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        inputs = _as_input(images)
        if labels is not None:
            labels = np.asarray(labels)
        optimizer = torch.optim.Adam(self.network.parameters(), lr=self.lr)
        losses = []
        self.network.train()
        for epoch in range(1, epochs + 1):
            order = rng.permutation(len(inputs))
            total = 0.0
            for start in range(0, len(order), batch_size):
                batch = order[start : start + batch_size]
                if labels is not None:
                    same = torch.from_numpy(labels[batch][:, None] == labels[batch][None, :])
                    loss = batch_triplet_loss(self.network(inputs[batch]), same, self.margin)
                else:
                    # Unlabelled: each image and a shifted/mirrored view of it form the only
                    # positive pair; every other image in the batch is a negative.
                    views = torch.cat([inputs[batch], _augment(inputs[batch], generator)])
                    loss = view_triplet_loss(self.network(views), self.margin)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item() * len(batch)
            losses.append(total / len(order))
            if on_epoch is not None:
                on_epoch(epoch, losses[-1])
        self.network.eval()
        return losses

    @torch.no_grad()
    def encode(self, images: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        """Unit image vectors (n, dim)."""
        if len(images) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        inputs = _as_input(images)
        parts = [self.network(inputs[s : s + batch_size]) for s in range(0, len(inputs), batch_size)]
        return torch.cat(parts).numpy().astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": {"dim": self.dim, "margin": self.margin, "lr": self.lr, "seed": self.seed},
            "weights": self.network.state_dict(),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> ImageEncoder:
        model = cls(**state["config"])
        model.network.load_state_dict(state["weights"])
        model.network.eval()
        return model


def batch_triplet_loss(embedded: Tensor, same: Tensor, margin: float) -> Tensor:
    """Triplet hinge loss averaged over every valid (anchor, positive, negative) of the batch
    ("batch all", Hermans et al. 2017; triplets already satisfying the margin count as 0):
    random single triplets are mostly satisfied already and teach little. Squared distances
    of unit vectors (2 - 2 cos) keep the gradient defined when two embeddings coincide.
    A batch with no valid triplet (one class only, or no two of a class) gives a zero loss
    that still belongs to the graph, not NaN."""
    distances = (2.0 - 2.0 * embedded @ embedded.T).clamp(min=0.0)
    positives = same & ~torch.eye(len(embedded), dtype=torch.bool)
    valid = positives[:, :, None] & ~same[:, None, :]
    if not valid.any():
        return embedded.sum() * 0.0
    return F.relu(distances[:, :, None] - distances[:, None, :] + margin)[valid].mean()


def view_triplet_loss(embedded: Tensor, margin: float) -> Tensor:
    """Triplet loss for ``2n`` embeddings where row ``i`` and row ``i + n`` are two views of
    one image (each other's only positive) and every other row is a negative."""
    n = len(embedded) // 2
    distances = (2.0 - 2.0 * embedded @ embedded.T).clamp(min=0.0)
    partner = torch.arange(2 * n).roll(n)
    positive = distances[torch.arange(2 * n), partner]
    negative = torch.ones_like(distances, dtype=torch.bool)
    negative[torch.arange(2 * n), partner] = False
    negative.fill_diagonal_(False)
    return F.relu(positive[:, None] - distances + margin)[negative].mean()
