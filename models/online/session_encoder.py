"""Session encoder: a session prefix -> one vector in the item vectors' own space.

The newest item attends over the prefix's item vectors (content attention plus a learned
bias per item age, so recency counts); a linear map of [attended, newest] plus the newest
item's own vector is the session vector. An empty prefix (a session's first click) maps to a
learned start vector. It is trained jointly with the item encoder on next-item prediction:
a softmax over the batch's other targets plus sampled negatives, scored by inner product.
That is how serving uses it: the session vector queries the item vectors in Qdrant by inner
product (paper 3's homogeneous configuration), so no separate decoder is needed.

Why attention and not a GRU: on the MovieLens-100k test protocol both reach about the same
HR@20 after two epochs (0.238 vs 0.242), but the GRU's step-by-step loop trained ~3x slower
on CPU.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator, Sequence
from itertools import chain
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from onevec.models.online.base import parse_examples, top_k
from onevec.models.online.config import ModelConfig
from onevec.models.online.item_encoder import Batch, BatchVectors, ItemEncoder

__all__ = ["SessionEncoder"]


class _SessionNet(nn.Module):
    def __init__(self, dim: int, max_prefix: int) -> None:
        super().__init__()
        self.start = nn.Parameter(torch.zeros(dim))
        self.query = nn.Linear(dim, dim)
        # No bias: it would add the same amount to every score of a row, which softmax
        # ignores; its gradient is pure rounding noise that Adam would amplify.
        self.key = nn.Linear(dim, dim, bias=False)
        self.recency = nn.Parameter(torch.zeros(max_prefix))  # attention bias by item age
        self.out = nn.Linear(2 * dim, dim)

    def forward(self, items: Tensor, lengths: Tensor) -> Tensor:
        """Session vectors of (B, L, dim) item vectors, oldest -> newest, right-padded, with
        real lengths (B,); a length may be 0."""
        batch, width, dim = items.shape
        age = lengths[:, None] - 1 - torch.arange(width)[None, :]  # 0 = newest
        real = age >= 0
        has_items = lengths > 0
        newest = items[torch.arange(batch), (lengths - 1).clamp(min=0)]
        scores = (self.key(items) @ self.query(newest)[:, :, None])[..., 0] / math.sqrt(dim)
        # index_select keeps the backward deterministic (see ItemEncoder.vectors).
        recency = self.recency.index_select(0, age.clamp(0, self.recency.numel() - 1).reshape(-1))
        scores = scores + recency.view_as(age)
        # A finite fill (not -inf) keeps empty prefixes NaN-free; they use `start` below.
        scores = scores.masked_fill(~real, torch.finfo(scores.dtype).min)
        attended = (torch.softmax(scores, -1)[..., None] * items).sum(1)
        # The newest item as a residual: the next click is most often close to the last one.
        session = self.out(torch.cat([attended, newest], -1)) + newest
        return torch.where(has_items[:, None], session, self.start.expand(batch, dim))


class SessionEncoder:
    """Next-item session encoder over an ``ItemEncoder``'s vectors (trained jointly)."""

    def __init__(self, item_encoder: ItemEncoder | None = None, config: ModelConfig | None = None) -> None:
        self.item_encoder = item_encoder or ItemEncoder(config)
        self.config = self.item_encoder.config
        # Seeded without touching the global RNG, so the seed alone fixes the initial weights.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            self.net = _SessionNet(self.config.dim, self.config.max_prefix)

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return chain(self.item_encoder.named_parameters(), self.net.named_parameters(prefix="session"))

    def loss(self, batch: Batch) -> Tensor:
        """Sampled softmax (logQ-corrected) over the batch's targets plus the negatives."""
        return self.loss_and_sessions(batch)[0]

    def loss_and_sessions(self, batch: Batch, vectors: BatchVectors | None = None) -> tuple[Tensor, Tensor]:
        """The loss, and the batch's session vectors (detached): what the model *before* this
        step predicts from each prefix, which prequential scoring reuses instead of running
        the session network a second time. ``vectors``: the batch's looked-up item vectors,
        when the caller shares one lookup with the item loss."""
        if vectors is None:
            vectors = self.item_encoder.batch_vectors(batch)
        sessions = self.net(vectors.prefix, batch.lengths)
        candidates = torch.cat([batch.targets, batch.negatives])
        logits = sessions @ vectors.candidates.T
        logits = logits - self.item_encoder.candidate_log_q(batch)
        # Another example's target (or a sampled negative) equal to this example's target
        # is a true positive, not a negative: mask it out, keeping only the diagonal.
        own = torch.arange(len(batch.targets))
        accidental = candidates[None, :] == batch.targets[:, None]
        accidental[own, own] = False
        return F.cross_entropy(logits.masked_fill(accidental, float("-inf")), own), sessions.detach()

    def learn(self, batch: list[dict[str, Any]]) -> float:
        """One optimiser step of next-item prediction on a micro-batch; returns the loss."""
        examples = parse_examples(batch)
        if not examples:
            return 0.0
        loss = self.loss(self.item_encoder.prepare(examples))
        loss.backward()
        self.item_encoder.step(self.named_parameters())
        return loss.item()

    def encode_items(self, item_ids: Sequence[str]) -> np.ndarray:
        return self.item_encoder.encode_items(item_ids)

    def encode_session(self, prefix: Sequence[str]) -> np.ndarray:
        """(dim,) float32 session vector; unknown prefix items are skipped."""
        return self.encode_sessions([prefix])[0]

    @torch.no_grad()
    def encode_sessions(self, prefixes: Sequence[Sequence[str]]) -> np.ndarray:
        """(n, dim) float32 session vectors of many prefixes in one pass."""
        if len(self.item_encoder.item_vocab) == 0:
            # Nothing learned yet: the padding row 0 does not exist, and no session has a vector.
            return np.zeros((len(prefixes), self.config.dim), dtype=np.float32)
        rows = [self.item_encoder.known_rows(p)[-self.config.max_prefix :] for p in prefixes]
        lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
        padded = torch.zeros(len(rows), max([1, *map(len, rows)]), dtype=torch.long)
        for i, r in enumerate(rows):
            padded[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        unique, inverse = torch.unique(padded, return_inverse=True)
        vectors = self.item_encoder.item_matrix(unique)[inverse]
        return self.net(vectors, lengths).numpy()

    def recommend(
        self, prefix: Sequence[str], k: int = 20, exclude: Collection[str] = ()
    ) -> list[tuple[str, float]]:
        return top_k(
            self.encode_session(prefix),
            self.item_encoder.item_ids(),
            self.item_encoder.item_matrix().numpy(),
            k,
            exclude,
        )

    def changed_items(self) -> set[str]:
        return self.item_encoder.changed_items()

    def state_dict(self) -> dict[str, Any]:
        return {"items": self.item_encoder.state_dict(), "net": self.net.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.item_encoder.load_state_dict(state["items"])
        self.net.load_state_dict(state["net"])
