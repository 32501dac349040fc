"""GRU4Rec (Hidasi, Karatzoglou, Baltrunas & Tikk, ICLR 2016; Hidasi & Karatzoglou, CIKM 2018),
trained offline the way its authors recommend (Hidasi & Czapp, "The effect of third party
implementations on reproducibility", RecSys 2023):

* session-parallel mini-batches: each row of a batch walks one session, one click per step,
  the next session takes a row's place when its session ends and the row's hidden state is
  reset there; sessions in time order;
* cross-entropy over many negatives: each row's target against the other rows' targets and
  ``negatives`` items shared by the batch, drawn with probability proportional to
  ``clicks ** sample_alpha``; a catalogue no larger than that is scored whole (full softmax);
* the output layer is the input item embedding (their "constrained embedding") plus a bias.

Frozen, it is trained once on the history and never updated. With ``retrain_at`` it is
retrained from scratch on every event learned so far each time the stream passes one of those
timestamps: what a team that retrains nightly runs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from onevec.models.clickstream.examples import ExampleRecord
from onevec.models.evaluation.harness import Query
from onevec.models.evaluation.item_columns import ItemColumns, learnable

__all__ = ["GRU4Rec"]

_UNKNOWN = -1e30  # the score of a candidate the model never learned
_MAX_PREFIX = 50  # the newest clicks of a session the scorer reads


class _Network(nn.Module):
    def __init__(self, items: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.embedding = nn.Embedding(items, hidden)
        bound = math.sqrt(6.0 / (items + hidden))
        nn.init.uniform_(self.embedding.weight, -bound, bound)
        self.bias = nn.Parameter(torch.zeros(items))
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.dropout = nn.Dropout(dropout)

    def step(self, items: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One click per row: items (B,), state (1, B, H) -> session vectors (B, H), new state."""
        output, state = self.gru(self.dropout(self.embedding(items))[:, None, :], state)
        return self.dropout(output[:, 0]), state

    def encode(self, prefixes: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Session vectors (B, H) of right-padded prefixes (B, L) of real lengths (B,) >= 1."""
        packed = nn.utils.rnn.pack_padded_sequence(
            self.embedding(prefixes), lengths, batch_first=True, enforce_sorted=False
        )
        _, state = self.gru(packed)
        return state[0]

    def logits(self, sessions: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of ``items`` (every item when None) for each session vector."""
        if items is None:
            return sessions @ self.embedding.weight.T + self.bias
        return sessions @ self.embedding(items).T + self.bias[items]


class GRU4Rec:
    """GRU4Rec as a harness recommender (see the module docstring)."""

    def __init__(
        self,
        hidden: int = 100,
        epochs: int = 5,
        lr: float = 0.005,
        batch_size: int = 64,
        dropout: float = 0.1,
        negatives: int = 2048,
        sample_alpha: float = 0.5,
        retrain_at: Sequence[float] = (),
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        self.hidden, self.epochs, self.lr, self.batch_size = hidden, epochs, lr, batch_size
        self.dropout, self.negatives, self.sample_alpha = dropout, negatives, sample_alpha
        self.retrain_at = sorted(retrain_at)
        self.seed = seed
        self.name = name or ("GRU4Rec, retrained" if self.retrain_at else "GRU4Rec, frozen")
        self.items = ItemColumns()
        self.net: _Network | None = None
        self.retrains = 0
        self._seen: list[ExampleRecord] = []
        self._next = 0  # the first boundary of retrain_at not yet passed

    def fit_history(self, records: list[ExampleRecord]) -> None:
        self._seen = learnable(records)
        self._train()
        self._passed()

    def learn(self, records: list[ExampleRecord]) -> None:
        if not self.retrain_at:
            return
        self._seen.extend(learnable(records))
        if self._passed():
            self._train()
            self.retrains += 1

    def _passed(self) -> bool:
        """Moves past every boundary the newest learned event has reached; True if any."""
        newest = self._seen[-1]["timestamp"] if self._seen else -math.inf
        before = self._next
        while self._next < len(self.retrain_at) and newest >= self.retrain_at[self._next]:
            self._next += 1
        return self._next > before

    def _train(self) -> None:
        self.items = ItemColumns()
        by_session: dict[str, list[int]] = {}
        for record in self._seen:
            by_session.setdefault(str(record["session_id"]), []).append(
                self.items.add(str(record["item_id"]))
            )
        sessions = [s for s in by_session.values() if len(s) >= 2]
        clicks = torch.bincount(
            torch.tensor([c for s in by_session.values() for c in s], dtype=torch.long),
            minlength=len(self.items),
        )
        # The model's own random streams: another model's draws in the same run stay as they were.
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            self.net = _Network(max(1, len(self.items)), self.hidden, self.dropout)
            optimizer = torch.optim.Adam(self.net.parameters(), lr=self.lr)
            weights = None
            if len(self.items) > self.negatives + self.batch_size:
                weights = clicks.double() ** self.sample_alpha
            self.net.train()
            for _ in range(self.epochs):
                _epoch(self.net, optimizer, sessions, self.batch_size, weights, self.negatives)
        self.net.eval()

    @torch.no_grad()
    def score(self, queries: Sequence[Query], candidates: Sequence[str]) -> np.ndarray:
        columns = self.items.column
        rows = [[columns[item] for item in q.prefix if item in columns][-_MAX_PREFIX:] for q in queries]
        have = [i for i, row in enumerate(rows) if row]
        item_scores = np.full((len(queries), len(self.items)), _UNKNOWN)
        if have and self.net is not None:
            lengths = torch.tensor([len(rows[i]) for i in have])
            padded = torch.zeros(len(have), int(lengths.max()), dtype=torch.long)
            for n, i in enumerate(have):
                padded[n, : len(rows[i])] = torch.tensor(rows[i])
            item_scores[have] = self.net.logits(self.net.encode(padded, lengths)).double().numpy()
        return self.items.on_candidates(item_scores, candidates, fill=_UNKNOWN)


def _epoch(
    net: _Network,
    optimizer: torch.optim.Optimizer,
    sessions: list[list[int]],
    batch_size: int,
    weights: torch.Tensor | None,
    negatives: int,
) -> None:
    """One pass of session-parallel mini-batches over ``sessions`` (each of 2+ clicks).
    ``weights``: per item, the odds of being drawn as a shared negative; None for a full softmax."""
    if not sessions:
        return
    lanes = min(batch_size, len(sessions))
    active = list(range(lanes))  # the session each row walks
    position = [0] * lanes
    following = lanes  # the next session to start
    state = torch.zeros(1, lanes, net.gru.hidden_size)
    while active:
        inputs = torch.tensor([sessions[s][p] for s, p in zip(active, position, strict=True)])
        targets = torch.tensor([sessions[s][p + 1] for s, p in zip(active, position, strict=True)])
        vectors, state = net.step(inputs, state)
        if weights is None:
            loss = F.cross_entropy(net.logits(vectors), targets)
        else:
            columns = torch.cat([targets, torch.multinomial(weights, negatives, replacement=True)])
            logits = net.logits(vectors, columns)
            # Another row's target or a drawn item equal to a row's own target is no negative for it.
            same = columns[None, :] == targets[:, None]
            same[torch.arange(len(targets)), torch.arange(len(targets))] = False
            loss = F.cross_entropy(logits.masked_fill(same, -torch.inf), torch.arange(len(targets)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        state = state.detach()
        kept: list[int] = []
        for lane in range(len(active)):
            position[lane] += 1
            if position[lane] + 1 < len(sessions[active[lane]]):
                kept.append(lane)
            elif following < len(sessions):  # the session ended: the next one takes the row
                active[lane], position[lane] = following, 0
                following += 1
                state[:, lane] = 0.0
                kept.append(lane)
        if len(kept) < len(active):
            active = [active[lane] for lane in kept]
            position = [position[lane] for lane in kept]
            state = state[:, kept].contiguous()
