"""Item encoder: ProdSI2Vec (paper 1) over growing id, side-information and user tables.

An item's vector is its id vector plus the mean of its attribute-token vectors ("genre=Comedy",
"category=Dresses", "price_band=3", any attribute). Rows for items first met in the catalogue
start with a zero id vector, so until an item is clicked its vector comes from its attributes
alone, and a new item is placed next to items that share its attributes before its first
click. Items first met in clicks start from a small random id vector (they need one to break
symmetry when they have no attributes).

Objectives, scored by inner product so serving can use the same decoder:

* ``sgns``: skip-gram with negative sampling over in-session co-occurrence: each of the
  ``window`` newest prefix items is a context for the target (the next item); negatives come
  from unigram^``negative_power`` of the click counts, maintained online; with ``subsample``
  frequent items count less (word2vec's subsampling).
* ``bpr``: Bayesian personalised ranking of (user, clicked item) over sampled negatives, with a
  growing user table.

Tables are preallocated and double when full; the optimiser (``RowAdam``) pads its state to
match, so neither weights nor optimiser state are lost on growth.
"""

from __future__ import annotations

import itertools
import threading
from array import array
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from onevec.models.clickstream.examples import ExampleRecord
from onevec.models.online.base import Example, parse_examples, top_k
from onevec.models.online.config import ModelConfig
from onevec.models.online.optim import RowAdam
from onevec.models.online.snapshot import ItemSnapshot
from onevec.models.online.vocab import Vocabulary

__all__ = ["Batch", "BatchVectors", "ItemEncoder"]

_TABLES = ("item", "token", "user")
_TOUCHED_MERGE = 256  # lookups kept before their touched rows and tokens are merged
_BLOCK = 256  # item rows per block of the negative sampler (a power of two, as capacities are)


@dataclass(frozen=True, slots=True)
class Batch:
    """One micro-batch as table rows, shared by the item and session losses."""

    targets: Tensor  # (B,) item rows of the next items
    prefix: Tensor  # (B, L) item rows, oldest -> newest, right-padded with row 0
    lengths: Tensor  # (B,) real prefix length of each example (0 allowed)
    negatives: Tensor  # (K,) item rows sampled from unigram^negative_power, shared by the batch
    users: Tensor | None  # (B,) user rows; only the bpr objective has users


@dataclass(frozen=True, slots=True)
class BatchVectors:
    """A batch's item vectors from one differentiable lookup, shared by both losses."""

    prefix: Tensor  # (B, L, dim): the prefix items' vectors, zeros at the padding
    candidates: Tensor  # (B + K, dim): the targets', then the negatives' vectors


class ItemEncoder:
    """Growing item/token/user embedding tables trained with SGNS or BPR."""

    def __init__(self, config: ModelConfig | None = None) -> None:
        self.config = config or ModelConfig()
        # The one optimiser lives with the tables it has to grow with; the session encoder
        # and the trainer step their parameters through it too.
        self.optimizer = RowAdam(self.config.lr)
        self.vocabularies = {name: Vocabulary() for name in _TABLES}
        self.item_vocab = self.vocabularies["item"]  # the one read most often
        self.generator = torch.Generator().manual_seed(self.config.seed)
        capacity, dim = self.config.initial_capacity, self.config.dim
        self.tables = nn.ParameterDict({name: nn.Parameter(torch.zeros(capacity, dim)) for name in _TABLES})
        self.counts = torch.zeros(capacity, dtype=torch.float64)  # clicks per item row
        # clicks ** negative_power per row, and its sums per block of _BLOCK rows: negatives are
        # drawn block first, then row within the block, and a step updates only the rows it
        # counted; a draw over every row was two passes over the catalogue per step.
        self._smoothed = torch.zeros(0, dtype=torch.float64)
        self._block_sums = torch.zeros(0, dtype=torch.float64)
        self._reweigh_all()
        self._clicks_total = 0.0  # the sum of counts, kept as they are counted
        # The token rows of each item row as flat int64 arrays (CSR: bag of row r =
        # flat[start[r]:start[r]+size[r]]), so the bags of any set of rows are gathered by
        # tensor ops, not a Python loop per row (building every item's bag in Python was most
        # of a learner step at 100k+ items), and no list per item (a million of them were most
        # of what the garbage collector traversed). A replaced bag is appended; the old entries
        # stay as garbage until _compact_bags().
        self._bag_flat = array("q")
        self._bag_start = array("q")
        self._bag_size = array("q")
        self._bag_live = 0  # entries of _bag_flat still in use
        self._bag_tensors: tuple[Tensor, Tensor, Tensor] | None = None
        # Rows changed outside training lookups (new rows, new attributes), appended as they
        # come; drained with the touched ones. An array, not a set: a catalogue of 1M items
        # registers 1M rows at start.
        self._changed_rows = array("q")
        # Rows and tokens a training lookup touched, as the lookups' own tensors: kept as they
        # are and merged when drained, instead of a Python set update per lookup (thousands of
        # ints per step).
        self._touched_rows: list[Tensor] = []
        self._touched_tokens: list[Tensor] = []
        # All item vectors, computed once per model change: serving calls recommend() per
        # example between steps, and rebuilding every token bag each time would dominate.
        self._matrix: Tensor | None = None
        self._snapshots: list[ItemSnapshot] = []  # told before rows or bags change
        # Held while the tables grow or a step writes their rows: a snapshot read on another
        # thread (the learner's ranking pass) takes it to read rows and their saved old values
        # at one moment.
        self.lock = threading.RLock()

    # ---- growth and registration -------------------------------------------------------

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return self.tables.named_parameters(prefix="items")

    def set_attributes(self, item_id: str, tokens: Sequence[str]) -> None:
        """Register (or replace) an item's catalogue attribute tokens."""
        with self.lock:
            row = self.register("item", [item_id], random_init=False)[0]
            for snapshot in self._snapshots:
                snapshot.before_bag_changes(row)
            bag = list(dict.fromkeys(self.register("token", tokens)))
            self._bag_live += len(bag) - self._bag_size[row]
            self._bag_start[row] = len(self._bag_flat)
            self._bag_size[row] = len(bag)
            self._bag_flat.extend(bag)
            if len(self._bag_flat) > 2 * self._bag_live + 1024:
                self._compact_bags()  # mostly garbage from replaced bags
            self._bag_tensors = None
            self._changed_rows.append(row)
            self._matrix = None

    def register(self, table: str, keys: Sequence[str], random_init: bool = True) -> list[int]:
        """Rows of ``keys`` in ``table``, adding (and initialising) the new ones in order of
        first appearance (so ranks that register the same keys in the same order agree)."""
        with self.lock:
            vocab = self.vocabularies[table]
            before = len(vocab)
            rows = vocab.index_many(list(keys))
            if len(vocab) > before:
                self._matrix = None
                self._reserve(table, len(vocab))
                if table == "item":
                    self._bag_start.frombytes(bytes(8 * (len(vocab) - before)))
                    self._bag_size.frombytes(bytes(8 * (len(vocab) - before)))
                    self._bag_tensors = None
                    self._changed_rows.extend(range(before, len(vocab)))
                if random_init:
                    new = torch.randn(len(vocab) - before, self.config.dim, generator=self.generator)
                    with torch.no_grad():
                        self.tables[table][before : len(vocab)] = new * self.config.init_std
            return rows

    def _reserve(self, table: str, size: int) -> None:
        """Make ``table`` hold at least ``size`` rows, doubling so growth is amortised O(1)."""
        old = self.tables[table]
        if size <= old.shape[0]:
            return
        capacity = max(size, 2 * old.shape[0])
        grown = torch.zeros(capacity, old.shape[1])
        grown[: old.shape[0]] = old.detach()
        self.tables[table] = nn.Parameter(grown)
        if table == "item":
            counts = torch.zeros(capacity, dtype=torch.float64)
            counts[: self.counts.shape[0]] = self.counts
            self.counts = counts
            self._reweigh_all()

    def item_ids(self) -> list[str]:
        """Every known item id, in row order (the rows of ``item_matrix()``)."""
        return self.item_vocab.keys()

    def known_rows(self, item_ids: Sequence[str]) -> list[int]:
        """Rows of the known ids among ``item_ids``, in order; unknown ids are dropped."""
        rows = map(self.item_vocab.lookup, item_ids)  # dict.get: no Python call per id
        return [row for row in rows if row is not None]

    # ---- training -----------------------------------------------------------------------

    def prepare(self, examples: Sequence[Example], count: bool = True) -> Batch:
        """Map a batch to rows (growing the tables), count clicks, sample negatives.

        ``count=False`` for examples learned again (replay): their clicks were counted when they
        arrived, and counting them twice would skew negative sampling and the log-Q correction
        towards whatever the buffer happens to hold."""
        max_prefix = self.config.max_prefix
        prefixes = [e.prefix[-max_prefix:] for e in examples]
        lengths = np.fromiter(map(len, prefixes), dtype=np.int64, count=len(prefixes))
        # One vocabulary pass over the targets, then every prefix item.
        flat = list(itertools.chain.from_iterable(prefixes))
        rows = self.register("item", [e.item_id for e in examples] + flat)
        targets = rows[: len(examples)]
        # Users only exist for bpr: with sgns a user table would grow and never be trained.
        users = None
        if self.config.objective == "bpr":
            users = torch.tensor(self.register("user", [e.user_id for e in examples]))
        target_rows = torch.tensor(targets, dtype=torch.long)
        if count:
            self.count_clicks(target_rows)
        width = max(1, int(lengths.max()) if len(lengths) else 1)
        padded = np.zeros((len(examples), width), dtype=np.int64)
        padded[np.arange(width)[None, :] < lengths[:, None]] = rows[len(examples) :]  # row-major order
        return Batch(
            targets=target_rows,
            prefix=torch.from_numpy(padded),
            lengths=torch.from_numpy(lengths),
            negatives=self.sample_negatives(self.config.negatives),
            users=users,
        )

    def count_clicks(self, rows: Tensor) -> None:
        """One click on each of ``rows`` (a row may repeat): the counts, the negative sampler's
        weights and the log-Q total."""
        self.counts.index_add_(0, rows, torch.ones(len(rows), dtype=torch.float64))
        self._reweigh(torch.unique(rows))
        self._clicks_total += len(rows)

    def sample_negatives(self, n: int) -> Tensor:
        """Item rows drawn from unigram^negative_power of click counts (word2vec's smoothing
        at 0.75)."""
        blocks = torch.multinomial(self._block_sums, n, replacement=True, generator=self.generator)
        # In numpy: torch runs the (n, _BLOCK) gather and cumsum on its thread pool, which
        # took milliseconds at n=256 on a busy machine.
        cumulative = self._smoothed.numpy().reshape(-1, _BLOCK)[blocks.numpy()].cumsum(1)
        draws = torch.rand(n, 1, generator=self.generator, dtype=torch.float64).numpy() * cumulative[:, -1:]
        within = np.minimum(np.count_nonzero(cumulative <= draws, axis=1), _BLOCK - 1)  # searchsorted, right
        return blocks * _BLOCK + torch.from_numpy(within)

    def _reweigh(self, rows: Tensor) -> None:
        """The sampler's weights of ``rows`` (unique) from their counts, and their blocks' sums
        summed afresh (not by differences: the same counts give the very same sums, so a
        restored model samples what the saved one would)."""
        self._smoothed[rows] = self.counts[rows] ** self.config.negative_power
        blocks = torch.unique(rows // _BLOCK)
        self._block_sums[blocks] = self._smoothed.view(-1, _BLOCK)[blocks].sum(1)

    def _reweigh_all(self) -> None:
        """The sampler's weights of every row (at start, growth and restore)."""
        size = -(-self.counts.shape[0] // _BLOCK) * _BLOCK
        self._smoothed = torch.zeros(size, dtype=torch.float64)
        self._smoothed[: self.counts.shape[0]] = self.counts**self.config.negative_power
        self._block_sums = self._smoothed.view(-1, _BLOCK).sum(1)

    def candidate_log_q(self, batch: Batch) -> Tensor:
        """Log-probability that each of ``[targets, negatives]`` entered the candidate set.

        In-batch targets arrive with the click distribution, sampled negatives with its
        ^negative_power smoothing. Subtracting these from the logits (the "logQ correction") stops the
        sampled softmax from learning to push popular items down just because they are
        sampled as negatives more often; on MovieLens it lifts HR@20 from ~0.15 to ~0.23.
        """
        return torch.cat(
            [
                torch.log(self.counts[batch.targets] / self._clicks_total),
                torch.log(self._smoothed[batch.negatives] / self._block_sums.sum()),
            ]
        ).float()

    def vectors(self, rows: Tensor) -> Tensor:
        """Training lookup: differentiable item vectors whose gradients touch only ``rows``.

        The rows (and their tokens) are recorded as changed, since the step that follows
        will move them.
        """
        unique, inverse = torch.unique(rows, return_inverse=True)
        flat, offsets = self.bags(unique)
        self._touch(unique, flat)
        ids = F.embedding(unique, self.tables["item"], sparse=True)
        attributes = F.embedding_bag(flat, self.tables["token"], offsets, mode="mean", sparse=True)
        # index_select, not [inverse]: advanced-indexing backward accumulates duplicate rows
        # in a thread-dependent order on CPU, which would make training non-deterministic.
        vectors = (ids + attributes).index_select(0, inverse.reshape(-1))
        # The width explicitly, not -1: ``rows`` may be empty (a batch of first clicks).
        return vectors.reshape(*rows.shape, vectors.shape[-1])

    def _touch(self, rows: Tensor, tokens: Tensor) -> None:
        self._touched_rows.append(rows)
        self._touched_tokens.append(tokens)
        if len(self._touched_rows) > _TOUCHED_MERGE:  # nobody drains (offline training): stay bounded
            self._touched_rows = [torch.unique(torch.cat(self._touched_rows))]
            self._touched_tokens = [torch.unique(torch.cat(self._touched_tokens))]

    def bags(self, rows: Tensor, empty: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Token rows of ``rows`` as (flat, offsets) for ``embedding_bag``; ``empty`` (a mask
        over ``rows``) gives those rows empty bags."""
        flat, starts, sizes = self._bag_index()
        sizes = sizes[rows]
        if empty is not None:
            sizes[empty] = 0
        offsets = sizes.cumsum(0) - sizes
        # Position j of bag i is starts[rows[i]] + (j - offsets[i]) in the flat array.
        positions = torch.repeat_interleave(starts[rows] - offsets, sizes) + torch.arange(int(sizes.sum()))
        return flat[positions], offsets

    def _bag_index(self) -> tuple[Tensor, Tensor, Tensor]:
        """(flat, start, size) as tensors, rebuilt only after the bags changed."""
        if self._bag_tensors is None:
            self._bag_tensors = (_long(self._bag_flat), _long(self._bag_start), _long(self._bag_size))
        return self._bag_tensors

    @property
    def item_tokens(self) -> _Bags:
        """The token rows of each item row (read from the bags, a list per lookup)."""
        return _Bags(self)

    def tokens_of(self, row: int) -> list[int]:
        """The token rows of item ``row``."""
        start = self._bag_start[row]
        return self._bag_flat[start : start + self._bag_size[row]].tolist()

    def _compact_bags(self) -> None:
        """The flat bag array without the garbage of replaced bags."""
        self._set_bags([self.tokens_of(row) for row in range(len(self._bag_size))])

    def _set_bags(self, bags: Sequence[Sequence[int]]) -> None:
        sizes = np.fromiter(map(len, bags), dtype=np.int64, count=len(bags))
        self._bag_size = array("q", sizes.tobytes())
        self._bag_start = array("q", (np.cumsum(sizes) - sizes).tobytes())
        self._bag_flat = array("q", itertools.chain.from_iterable(bags))
        self._bag_live = len(self._bag_flat)
        self._bag_tensors = None

    def batch_vectors(self, batch: Batch, positions: Tensor | None = None) -> BatchVectors:
        """Every item vector a training step reads (prefixes, targets, negatives) from one
        lookup: one unique, one embedding bag and one sparse gradient per table instead of one
        per use (the SGNS context and targets are prefix and target vectors already).

        ``positions`` (B, L) chooses the prefix positions looked up, by default every real one
        (what the session encoder reads); the others stay zero. Only what a loss reads may be
        looked up: a looked-up row gets a sparse gradient entry, zero or not, and so an
        optimiser step."""
        if positions is None:
            positions = torch.arange(batch.prefix.shape[1])[None, :] < batch.lengths[:, None]
        prefix_rows = batch.prefix[positions]
        looked_up = self.vectors(torch.cat([prefix_rows, batch.targets, batch.negatives]))
        prefix = torch.zeros(*batch.prefix.shape, self.config.dim)
        prefix[positions] = looked_up[: len(prefix_rows)]
        return BatchVectors(prefix=prefix, candidates=looked_up[len(prefix_rows) :])

    def loss(self, batch: Batch, vectors: BatchVectors | None = None) -> Tensor:
        """The configured item objective on ``batch`` (a 0-d tensor); ``vectors`` are the
        batch's looked-up vectors when the caller has them (one lookup for both losses).
        Without them only the prefix positions this objective reads are looked up: SGNS's
        context window, none for BPR."""
        if vectors is None:
            bpr = self.config.objective == "bpr"
            positions = torch.zeros_like(batch.prefix, dtype=torch.bool) if bpr else self._context(batch)
            vectors = self.batch_vectors(batch, positions)
        if self.config.objective == "bpr":
            return self._bpr_loss(batch, vectors)
        return self._sgns_loss(batch, vectors)

    def _context(self, batch: Batch) -> Tensor:
        """(B, L) mask of the SGNS context: the `window` newest prefix items of each example."""
        positions = torch.arange(batch.prefix.shape[1])
        start = (batch.lengths - self.config.window).clamp(min=0)
        return (positions >= start[:, None]) & (positions < batch.lengths[:, None])

    def _sgns_loss(self, batch: Batch, vectors: BatchVectors) -> Tensor:
        # Context = the `window` newest prefix items, each paired with the target.
        example, position = self._context(batch).nonzero(as_tuple=True)
        if example.numel() == 0:
            return torch.zeros(())
        size = len(batch.targets)
        context = vectors.prefix[example, position]  # distinct (example, position) pairs
        target_rows = batch.targets[example]
        # index_select, not [example]: its backward accumulates repeated rows deterministically.
        target = vectors.candidates.index_select(0, example)
        negatives = vectors.candidates[size:]
        positive = (context * target).sum(-1)
        negative = context @ negatives.T
        # A sampled "negative" that is the target itself is not a negative. Averaged over
        # the negatives (word2vec sums them) so this loss keeps the session loss's scale
        # whatever `negatives` is; summing 64 of them drowned the next-item loss.
        real = (batch.negatives[None, :] != target_rows[:, None]).float()
        negative_loss = (F.softplus(negative) * real).sum(-1) / real.sum(-1).clamp(min=1)
        pair_loss = F.softplus(-positive) + negative_loss
        if not self.config.subsample:
            return pair_loss.mean()
        weight = self._keep(batch.prefix[example, position]) * self._keep(target_rows)
        return (pair_loss * weight).sum() / weight.sum()

    def _keep(self, rows: Tensor) -> Tensor:
        """word2vec's subsampling as a weight: min(1, sqrt(t / share of clicks)) per item row
        (an item with no clicks yet keeps 1)."""
        clicks = self.counts[rows]
        share = clicks / max(self._clicks_total, 1.0)
        return torch.where(clicks > 0, (self.config.subsample / share).sqrt().clamp(max=1), 1.0).float()

    def _bpr_loss(self, batch: Batch, vectors: BatchVectors) -> Tensor:
        assert batch.users is not None, "batch was prepared without users"
        users = F.embedding(batch.users, self.tables["user"], sparse=True)
        size = len(batch.targets)
        positive = (users * vectors.candidates[:size]).sum(-1, keepdim=True)
        negative = users @ vectors.candidates[size:].T
        real = (batch.negatives[None, :] != batch.targets[:, None]).float()
        return ((F.softplus(negative - positive) * real).sum(-1) / real.sum(-1).clamp(min=1)).mean()

    def learn(self, batch: Sequence[ExampleRecord]) -> float:
        """One optimiser step of the item objective on a micro-batch; returns the loss."""
        examples = parse_examples(batch)
        if not examples:
            return 0.0
        loss = self.loss(self.prepare(examples))
        if loss.requires_grad:
            loss.backward()
            self.step(self.named_parameters())
        return loss.item()

    def step(self, named_parameters: Iterable[tuple[str, nn.Parameter]]) -> None:
        """Apply the gradients of ``named_parameters`` (these tables and any other
        encoder's weights) with the one shared optimiser."""
        with self.lock:
            if self._snapshots:
                self._before_rows_move()
            self.optimizer.step(named_parameters)
            self._matrix = None

    def _before_rows_move(self) -> None:
        """Tell the snapshots which table rows the coming step moves (the rows of the sparse
        gradients; a dense one moves every row)."""
        for name, table in self.tables.items():
            grad = table.grad
            if grad is None:
                continue
            if grad.is_sparse:
                table.grad = grad = grad.coalesce()  # the optimiser would coalesce it anyway
                rows = grad.indices()[0]
            else:
                rows = torch.arange(table.shape[0])
            for snapshot in self._snapshots:
                snapshot.before_rows_move(name, rows)

    def snapshot(self) -> ItemSnapshot:
        """The items and tokens known now, as they are now, for scoring while training goes on
        (:mod:`onevec.models.online.snapshot`); release it when done."""
        snapshot = ItemSnapshot(self)
        self._snapshots.append(snapshot)
        return snapshot

    def release_snapshot(self, snapshot: ItemSnapshot) -> None:
        if snapshot in self._snapshots:
            self._snapshots.remove(snapshot)

    # ---- encoding -----------------------------------------------------------------------

    @torch.no_grad()
    def item_matrix(self, rows: Tensor | None = None) -> Tensor:
        """Item vectors of ``rows`` (all known items by default), without gradients."""
        if rows is None:
            if self._matrix is None:
                self._matrix = self.item_matrix(torch.arange(len(self.item_vocab)))
            return self._matrix
        if self._matrix is not None:
            return self._matrix[rows]  # the model has not changed since it was computed
        flat, offsets = self.bags(rows)
        ids = self.tables["item"][rows]
        return ids + F.embedding_bag(flat, self.tables["token"], offsets, mode="mean")

    def encode_items(self, item_ids: Sequence[str]) -> np.ndarray:
        """(n, dim) float32 vectors; an unknown id (no clicks, no attributes) gets zeros."""
        known = [(i, row) for i, row in enumerate(map(self.item_vocab.lookup, item_ids)) if row is not None]
        out = np.zeros((len(item_ids), self.config.dim), dtype=np.float32)
        if known:
            rows = torch.tensor([row for _, row in known], dtype=torch.long)
            out[[i for i, _ in known]] = self.item_matrix(rows).numpy()
        return out

    def clicks(self, item_ids: Sequence[str]) -> np.ndarray:
        """Clicks seen per item (0 for unknown ids): the evidence behind its id vector, in one
        gather from the tensor's array view (indexing the tensor per item took 19 ms for a
        16,384-item catalogue chunk)."""
        # The tensor is replaced when the tables grow: its array view is taken per call.
        counts = self.counts.numpy()
        rows = self.item_vocab.rows(item_ids)
        known = (rows >= 0) & (rows < len(counts))
        found = np.zeros(len(rows), dtype=np.float64)
        found[known] = counts[rows[known]]
        return found

    def encode_session(self, prefix: Sequence[str]) -> np.ndarray:
        """Mean of the ``window`` newest known prefix items: the SGNS context, as trained."""
        rows = self.known_rows(prefix)[-self.config.window :]
        if not rows:
            return np.zeros(self.config.dim, dtype=np.float32)
        return self.item_matrix(torch.tensor(rows, dtype=torch.long)).mean(0).numpy()

    def recommend(
        self, prefix: Sequence[str], k: int = 20, exclude: Collection[str] = ()
    ) -> list[tuple[str, float]]:
        return top_k(self.encode_session(prefix), self.item_ids(), self.item_matrix().numpy(), k, exclude)

    def changed_items(self) -> set[str]:
        """Items whose vector changed since the last call (drains).

        A token update moves every item carrying that token, so those items count too.
        """
        return {self.item_vocab.key(row) for row in self.changed_rows().tolist()}

    def changed_rows(self) -> np.ndarray:
        """:meth:`changed_items` as item rows (sorted int64; drains). Finding the carriers of
        the changed tokens reads every bag, O(items): offline use; the learner keeps
        :meth:`drain_changes` instead."""
        rows, tokens = self.drain_changes()
        changed = np.zeros(len(self.item_vocab), dtype=bool)
        changed[rows] = True
        if len(tokens):
            marks = np.zeros(len(self.vocabularies["token"]), dtype=np.int64)
            marks[tokens] = 1
            every = np.arange(len(self.item_vocab))
            changed |= self.bag_max(every, marks, 0) > 0
        return np.flatnonzero(changed)

    def drain_changes(self) -> tuple[np.ndarray, np.ndarray]:
        """(item rows, token rows) changed since the last call, each sorted and unique; drains.
        An item moved when its row is among the rows or its bag holds one of the tokens. The
        cost is the changes', not the catalogue's."""
        rows = np.unique(
            np.concatenate(
                [np.frombuffer(self._changed_rows, dtype=np.int64), *(t.numpy() for t in self._touched_rows)]
            )
        )
        tokens = np.unique(
            np.concatenate([np.zeros(0, dtype=np.int64), *(t.numpy() for t in self._touched_tokens)])
        )
        self._changed_rows, self._touched_rows, self._touched_tokens = array("q"), [], []
        return rows, tokens

    def bag_max(self, rows: np.ndarray, values: np.ndarray, empty: int) -> np.ndarray:
        """Per item row of ``rows``, the largest of ``values`` (one per token row) over its
        attribute tokens; ``empty`` for an item without attributes. One gather over the bags of
        ``rows`` only."""
        flat = np.frombuffer(self._bag_flat, dtype=np.int64)
        starts = np.frombuffer(self._bag_start, dtype=np.int64)[rows]
        sizes = np.frombuffer(self._bag_size, dtype=np.int64)[rows]
        out = np.full(len(rows), empty, dtype=values.dtype)
        full = np.flatnonzero(sizes)
        if len(full):
            starts, sizes = starts[full], sizes[full]
            offsets = np.cumsum(sizes) - sizes
            # Position j of bag i is starts[i] + (j - offsets[i]) in the flat array.
            positions = np.repeat(starts - offsets, sizes) + np.arange(int(sizes.sum()))
            out[full] = np.maximum.reduceat(values[flat[positions]], offsets)
        return out

    # ---- state --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "dim": self.config.dim,
            "vocabularies": {name: self.vocabularies[name].state_dict() for name in _TABLES},
            "tables": {name: self.tables[name].detach().clone() for name in _TABLES},
            "counts": self.counts.clone(),
            "item_tokens": [list(bag) for bag in self.item_tokens],
            "generator": self.generator.get_state(),
            "optimizer": self.optimizer.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["dim"] != self.config.dim:
            raise ValueError(f"state has dim {state['dim']}, this encoder {self.config.dim}")
        for name in _TABLES:
            self.vocabularies[name].load_state_dict(state["vocabularies"][name])
            self.tables[name] = nn.Parameter(state["tables"][name].clone())
        self.counts = state["counts"].clone()
        self._reweigh_all()
        self._clicks_total = float(self.counts.sum())
        self._set_bags(state["item_tokens"])
        self.generator.set_state(state["generator"])
        self.optimizer.load_state_dict(state["optimizer"])
        self._matrix = None
        for snapshot in self._snapshots:  # what they kept belongs to another model
            snapshot.invalidate()
        self._snapshots = []
        # Which upserts landed before the restart is unknown: treat every item as changed.
        self._changed_rows = array("q", range(len(self.item_vocab)))
        self._touched_rows, self._touched_tokens = [], []


class _Bags(Sequence[list[int]]):
    """Every item row's token rows, as a read-only sequence over an encoder's bags."""

    def __init__(self, encoder: ItemEncoder) -> None:
        self.encoder = encoder

    def __len__(self) -> int:
        return len(self.encoder._bag_size)

    @overload
    def __getitem__(self, row: int) -> list[int]: ...
    @overload
    def __getitem__(self, row: slice) -> list[list[int]]: ...
    def __getitem__(self, row: int | slice) -> list[int] | list[list[int]]:
        if isinstance(row, slice):
            return [self.encoder.tokens_of(r) for r in range(len(self))[row]]
        return self.encoder.tokens_of(range(len(self))[row])


def _long(values: array) -> Tensor:
    """An int64 copy of an ``array("q")`` (a copy: the array may reallocate as it grows)."""
    return torch.tensor(np.frombuffer(values, dtype=np.int64)) if values else torch.zeros(0, dtype=torch.long)
