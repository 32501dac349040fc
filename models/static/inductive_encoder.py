"""An inductive metadata encoder trained BYOL-style on co-occurring items (paper 2).

The encoder maps an item's bag of metadata tokens (title words, category, ...) to its
embedding ``y``; it never sees item ids, so a new item is encoded from its metadata alone.
Training pairs are items ``a, b`` that co-occur in a session. BYOL: an online branch
(encoder -> projector -> predictor) predicts the projection of the other item made by a target
branch (encoder -> projector) whose weights are an exponential moving average of the online
ones and receive no gradient. Paper 2 adds a proximity term on the final embeddings:

    L = L_BYOL(a, b) + L_BYOL(b, a) + lambda * ||y_a - y_b||^2

``lambda = 0`` is plain BYOL (the ablation). The proximity term is applied to L2-normalised
embeddings: on raw ones the encoder could shrink every vector to satisfy it (the projector
would scale back up), which changes nothing about directions, what cosine search uses.
Inputs are also corrupted by token dropout, BYOL's augmentation for bags of tokens.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from onevec.models.static.text_autoencoder import TokenVocabulary

__all__ = ["InductiveEncoder", "byol_loss"]


def _mlp(inputs: int, hidden: int, outputs: int, norm: bool = True) -> nn.Sequential:
    middle: list[nn.Module] = [nn.BatchNorm1d(hidden)] if norm else []
    return nn.Sequential(nn.Linear(inputs, hidden), *middle, nn.ReLU(), nn.Linear(hidden, outputs))


def byol_loss(prediction: Tensor, target: Tensor) -> Tensor:
    """BYOL's normalised mean squared error, ``2 - 2 cos(p, z)``, averaged over the batch."""
    return (2.0 - 2.0 * F.cosine_similarity(prediction, target.detach(), dim=1)).mean()


class InductiveEncoder:
    """``fit`` on (token documents, co-occurring index pairs), ``encode`` any documents."""

    def __init__(
        self,
        vocabulary: TokenVocabulary,
        dim: int = 64,
        hidden: int = 256,
        projection: int = 64,
        proximity: float = 1.0,
        ema: float = 0.99,
        dropout: float = 0.2,
        lr: float = 2e-3,
        seed: int = 0,
    ) -> None:
        if proximity < 0:
            raise ValueError("proximity (lambda) must not be negative")
        self.vocabulary = vocabulary
        self.config = {
            "dim": dim,
            "hidden": hidden,
            "projection": projection,
            "proximity": proximity,
            "ema": ema,
            "dropout": dropout,
            "lr": lr,
            "seed": seed,
        }
        with torch.random.fork_rng(devices=[]):  # seeded weights, caller's global RNG untouched
            torch.manual_seed(seed)
            self.encoder = _mlp(len(vocabulary), hidden, dim, norm=False)
            self.projector = _mlp(dim, hidden, projection)
            self.predictor = _mlp(projection, hidden, projection)
        self.target_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)
        self._eval()

    @property
    def proximity(self) -> float:
        return float(self.config["proximity"])

    def _modules(self) -> list[nn.Module]:
        return [self.encoder, self.projector, self.predictor, self.target_encoder, self.target_projector]

    def _eval(self) -> None:
        for module in self._modules():
            module.eval()

    def loss(self, bags_a: Tensor, bags_b: Tensor) -> Tensor:
        y_a, y_b = self.encoder(bags_a), self.encoder(bags_b)
        p_a, p_b = self.predictor(self.projector(y_a)), self.predictor(self.projector(y_b))
        with torch.no_grad():
            z_a = self.target_projector(self.target_encoder(bags_a))
            z_b = self.target_projector(self.target_encoder(bags_b))
        proximity = (F.normalize(y_a, dim=1) - F.normalize(y_b, dim=1)).pow(2).sum(1).mean()
        return byol_loss(p_a, z_b) + byol_loss(p_b, z_a) + self.proximity * proximity

    @torch.no_grad()
    def _update_target(self) -> None:
        decay = float(self.config["ema"])
        for online, target in ((self.encoder, self.target_encoder), (self.projector, self.target_projector)):
            for p_online, p_target in zip(online.parameters(), target.parameters(), strict=True):
                p_target.mul_(decay).add_(p_online, alpha=1.0 - decay)
            for b_online, b_target in zip(online.buffers(), target.buffers(), strict=True):
                b_target.copy_(b_online)

    def fit(
        self,
        documents: list[list[str]],
        pairs: np.ndarray,
        epochs: int = 3,
        batch_size: int = 512,
        on_epoch: Callable[[int, float], None] | None = None,
    ) -> list[float]:
        """Train on ``pairs`` (m, 2) of indices into ``documents``; returns epoch mean losses."""
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        bags = self.vocabulary.bags(documents)
        known = (bags.sum(1) > 0).numpy()
        pairs = pairs[known[pairs[:, 0]] & known[pairs[:, 1]] & (pairs[:, 0] != pairs[:, 1])]
        if len(pairs) == 0:
            raise ValueError("no co-occurring pair of items with known tokens to learn from")
        generator = torch.Generator().manual_seed(int(self.config["seed"]))
        online = [*self.encoder.parameters(), *self.projector.parameters(), *self.predictor.parameters()]
        optimizer = torch.optim.Adam(online, lr=float(self.config["lr"]))
        keep = 1.0 - float(self.config["dropout"])
        losses = []
        for module in self._modules():
            module.train()
        for epoch in range(1, epochs + 1):
            order = torch.randperm(len(pairs), generator=generator).numpy()
            total = 0.0
            for start in range(0, len(order), batch_size):
                chunk = pairs[order[start : start + batch_size]]
                if len(chunk) < 2:
                    continue  # BatchNorm needs two rows
                a, b = bags[chunk[:, 0]], bags[chunk[:, 1]]
                a = a * (torch.rand(a.shape, generator=generator) < keep)
                b = b * (torch.rand(b.shape, generator=generator) < keep)
                loss = self.loss(a, b)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                self._update_target()
                total += loss.item() * len(chunk)
            losses.append(total / len(order))
            if on_epoch is not None:
                on_epoch(epoch, losses[-1])
        self._eval()
        return losses

    @torch.no_grad()
    def encode(self, documents: list[list[str]]) -> np.ndarray:
        """Embeddings ``y`` (n, dim); a document with no known token gets a zero row."""
        bags = self.vocabulary.bags(documents)
        vectors = self.encoder(bags)
        vectors[bags.sum(1) == 0] = 0.0
        return vectors.numpy().astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        return {
            "tokens": self.vocabulary.tokens,
            "config": dict(self.config),
            "weights": {
                name: module.state_dict()
                for name, module in zip(
                    ("encoder", "projector", "predictor", "target_encoder", "target_projector"),
                    self._modules(),
                    strict=True,
                )
            },
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> InductiveEncoder:
        model = cls(TokenVocabulary(state["tokens"]), **state["config"])
        for name, weights in state["weights"].items():
            getattr(model, name).load_state_dict(weights)
        model._eval()
        return model
