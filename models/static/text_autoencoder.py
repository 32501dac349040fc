"""Catalogue text vectors: a denoising autoencoder over an item's words and attributes (paper 1).

An item is a bag of tokens: the words of its text fields ("floral", "midi") and one-hot
attribute tokens ("department=Dresses", "genre=Comedy"). Training corrupts the bag (each
present token is dropped with probability ``corruption``) and asks the network to
reconstruct the full bag through a ``dim``-wide bottleneck; the bottleneck is the text vector.
The reconstruction loss is the multinomial log-likelihood of the present tokens, which suits
sparse bags of words better than per-token binary cross-entropy (almost every token is absent).

The encoder is inductive: a new item is encoded from its tokens alone, with the vocabulary
fixed at training time (unknown tokens are ignored).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["TextAutoencoder", "TokenVocabulary", "words"]

_WORD = re.compile(r"[a-z][a-z0-9']+")


def words(text: str) -> list[str]:
    """Lower-cased word tokens of at least two characters."""
    return _WORD.findall(text.lower())


class TokenVocabulary:
    """Token -> column of a binary bag-of-tokens matrix, fixed once built."""

    def __init__(self, tokens: Sequence[str]) -> None:
        self.tokens = list(tokens)
        self.index = {token: i for i, token in enumerate(self.tokens)}

    @classmethod
    def build(
        cls, documents: Iterable[Sequence[str]], min_count: int = 2, max_size: int = 20_000
    ) -> TokenVocabulary:
        """Tokens present in at least ``min_count`` documents, the most frequent ``max_size``."""
        frequency = Counter(token for document in documents for token in set(document))
        kept = [t for t, n in sorted(frequency.items(), key=lambda kv: (-kv[1], kv[0])) if n >= min_count]
        return cls(kept[:max_size])

    def __len__(self) -> int:
        return len(self.tokens)

    def bags(self, documents: Sequence[Sequence[str]]) -> Tensor:
        """(n, V) float matrix with 1 where the document holds the token."""
        matrix = torch.zeros(len(documents), len(self.tokens))
        for row, document in enumerate(documents):
            columns = [self.index[t] for t in set(document) if t in self.index]
            matrix[row, columns] = 1.0
        return matrix


class _Network(nn.Module):
    def __init__(self, vocab_size: int, dim: int, hidden: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(vocab_size, hidden), nn.ReLU(), nn.Linear(hidden, dim))
        self.decoder = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, vocab_size))


class TextAutoencoder:
    """Denoising autoencoder: ``fit`` on documents (token lists), ``encode`` any document."""

    def __init__(
        self,
        vocabulary: TokenVocabulary,
        dim: int = 64,
        hidden: int = 256,
        corruption: float = 0.3,
        lr: float = 2e-3,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= corruption < 1.0:
            raise ValueError("corruption must be in [0, 1)")
        self.vocabulary = vocabulary
        self.dim, self.hidden, self.corruption, self.lr, self.seed = dim, hidden, corruption, lr, seed
        with torch.random.fork_rng(devices=[]):  # seeded weights, caller's global RNG untouched
            torch.manual_seed(seed)
            self.network = _Network(len(vocabulary), dim, hidden)

    def loss(self, bags: Tensor, generator: torch.Generator | None = None) -> Tensor:
        keep = (torch.rand(bags.shape, generator=generator) >= self.corruption).float()
        logits = self.network.decoder(self.network.encoder(bags * keep))
        # Multinomial likelihood of the full (uncorrupted) bag.
        log_probs = F.log_softmax(logits, dim=1)
        return -((bags * log_probs).sum(1) / bags.sum(1).clamp(min=1.0)).mean()

    def fit(
        self,
        documents: Sequence[Sequence[str]],
        epochs: int = 60,
        batch_size: int = 128,
        on_epoch: Callable[[int, float], None] | None = None,
    ) -> list[float]:
        """Train; returns each epoch's mean loss."""
        bags = self.vocabulary.bags(documents)
        bags = bags[bags.sum(1) > 0]  # a document with no known token teaches nothing
        generator = torch.Generator().manual_seed(self.seed)
        optimizer = torch.optim.Adam(self.network.parameters(), lr=self.lr)
        losses = []
        self.network.train()
        for epoch in range(1, epochs + 1):
            order = torch.randperm(len(bags), generator=generator)
            total = 0.0
            for start in range(0, len(bags), batch_size):
                batch = bags[order[start : start + batch_size]]
                loss = self.loss(batch, generator)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                total += loss.item() * len(batch)
            losses.append(total / max(len(bags), 1))
            if on_epoch is not None:
                on_epoch(epoch, losses[-1])
        self.network.eval()
        return losses

    @torch.no_grad()
    def encode(self, documents: Sequence[Sequence[str]]) -> np.ndarray:
        """Text vectors (n, dim); a document with no known token gets a zero row (no source)."""
        bags = self.vocabulary.bags(documents)
        codes = self.network.encoder(bags)
        codes[bags.sum(1) == 0] = 0.0
        return codes.numpy().astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        return {
            "tokens": self.vocabulary.tokens,
            "config": {
                "dim": self.dim,
                "hidden": self.hidden,
                "corruption": self.corruption,
                "lr": self.lr,
                "seed": self.seed,
            },
            "weights": self.network.state_dict(),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> TextAutoencoder:
        model = cls(TokenVocabulary(state["tokens"]), **state["config"])
        model.network.load_state_dict(state["weights"])
        model.network.eval()
        return model
