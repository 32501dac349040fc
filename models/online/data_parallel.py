"""Data-parallel learning: several ranks train one online model together over torch.distributed.

Every rank holds the whole model (tables, session network, optimiser state) and learns its own
share of the examples (the examples partitions the consumer group gave it). Three agreements
keep the copies identical, step after step:

* **Rows.** Before a step the ranks exchange the item (and, for bpr, user) ids that are new to
  them, and every rank registers the union in one order (rank by rank, first appearance within
  a rank): a new item id gets the same row, and the same random initial vector (the encoder's
  generator advances alike), on every rank. They also exchange the item rows of their targets,
  so every rank counts every click: the negative sampler, the log-Q correction and so the
  sampled negatives stay the same everywhere.
* **Gradients.** Between the backward pass and the optimiser step (:class:`SyncedItemEncoder`),
  each table's sparse gradient is summed over the *union* of the rows the ranks touched (one
  all-gather of the row ids, then one all-reduce of a union x dim buffer, together with the
  flattened dense gradients of the session network) and averaged; every rank then applies the
  same ``RowAdam`` step to the same rows. A rank without examples in a step still joins it with
  zero gradients, so uneven input never leaves a collective waiting.
* **Steps.** A round takes as many steps as the rank with the most examples needs
  (:func:`learn_in_lockstep`); the repeat gate takes the mean of the ranks' updates of each step.

What stays per rank: the replay buffer (draws from the rank's own recent examples), the user
history (each user's clicks on the rank that learned them) and the prequential score. The
followers' table (``item_follows``) takes every rank's clicks after each step.
``owner_rank`` names the one rank that writes an item's point.
"""

from __future__ import annotations

import itertools
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from onevec.models.clickstream.examples import ExampleRecord
from onevec.models.online.base import Example, parse_examples
from onevec.models.online.config import ModelConfig
from onevec.models.online.item_encoder import ItemEncoder
from onevec.models.online.item_follows import clicks_after
from onevec.models.online.repeat_gate import RepeatGate
from onevec.models.online.round import LearningRound, StepOutcome, step_bounds, steps_for
from onevec.models.online.session_encoder import SessionEncoder
from onevec.models.online.trainer import LearnedStep, OnlineTrainer

__all__ = [
    "DataParallelTrainer",
    "SyncedItemEncoder",
    "all_reduce_gradients",
    "learn_in_lockstep",
    "owner_rank",
]

Group = dist.ProcessGroup | None  # None: the default group


def owner_rank(item_id: str, world_size: int) -> int:
    """The rank that writes ``item_id``'s point: a hash that every process computes alike
    (Python's ``hash`` of a str is salted per process)."""
    return zlib.crc32(item_id.encode()) % world_size


def all_reduce_gradients(
    named_parameters: Sequence[tuple[str, nn.Parameter]], sparse: Iterable[nn.Parameter], group: Group = None
) -> int:
    """Replace each parameter's gradient with its mean over the ranks of ``group``.

    ``sparse`` are the embedding tables (gradients from ``F.embedding(..., sparse=True)``, or
    none): their result is sparse over the union of the rows any rank touched. The others are
    dense; a rank without a gradient for one counts zeros, and a parameter no rank has a
    gradient for keeps none. Three collectives whatever the number of parameters: an all-gather
    of the sizes, one of the row ids, one all-reduce of the values. Returns the number of table
    rows in the union (what the all-reduce carried, besides the dense gradients)."""
    table_ids = {id(p) for p in sparse}
    tables = [p for _, p in named_parameters if id(p) in table_ids]
    dense = [p for _, p in named_parameters if id(p) not in table_ids]
    grads = [p.grad.coalesce() if p.grad is not None else None for p in tables]
    rows = [g.indices()[0] if g is not None else torch.zeros(0, dtype=torch.long) for g in grads]
    # Per rank: rows per table, then 1 per dense parameter that has a gradient there.
    local = torch.tensor([len(r) for r in rows] + [int(p.grad is not None) for p in dense], dtype=torch.long)
    sizes = _all_gather(local, group)  # (world, tables + dense)
    unions = _row_unions(rows, sizes[:, : len(tables)], group)
    buffers = []
    for param, grad, local_rows, union in zip(tables, grads, rows, unions, strict=True):
        buffer = param.new_zeros(len(union), *param.shape[1:])
        if grad is not None:
            buffer[torch.searchsorted(union, local_rows)] = grad.values()
        buffers.append(buffer.reshape(-1))
    buffers += [p.grad.reshape(-1) if p.grad is not None else p.new_zeros(p.numel()) for p in dense]
    flat = torch.cat(buffers) if buffers else torch.zeros(0)
    dist.all_reduce(flat, group=group)
    flat /= dist.get_world_size(group)
    parts = iter(flat.split([len(b) for b in buffers]))
    for param, union in zip(tables, unions, strict=True):
        part = next(parts).view(len(union), *param.shape[1:])
        param.grad = (
            torch.sparse_coo_tensor(
                union[None, :], part, param.shape, is_coalesced=True, check_invariants=False
            )
            if len(union)
            else None
        )
    for param, anyone in zip(dense, sizes[:, len(tables) :].sum(0).tolist(), strict=True):
        part = next(parts)
        param.grad = part.view_as(param).clone() if anyone else None
    return sum(len(union) for union in unions)


def _all_gather(tensor: Tensor, group: Group) -> Tensor:
    """(world, *tensor.shape): every rank's ``tensor`` (same shape on every rank)."""
    out = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, tensor, group=group)
    return torch.stack(out)


def _row_unions(rows: Sequence[Tensor], sizes: Tensor, group: Group) -> list[Tensor]:
    """Per table, the sorted union of the rows every rank touched. ``sizes`` (world, tables):
    how many rows each rank has per table; each rank sends its rows padded to the longest."""
    totals = sizes.sum(1)
    width = int(totals.max()) if len(totals) else 0
    if not rows or width == 0:
        return [torch.zeros(0, dtype=torch.long) for _ in rows]
    local = torch.cat(list(rows))
    gathered = _all_gather(torch.cat([local, local.new_zeros(width - len(local))]), group)
    unions: list[list[Tensor]] = [[] for _ in rows]
    for rank in range(gathered.shape[0]):
        start = 0
        for table, count in enumerate(sizes[rank].tolist()):
            unions[table].append(gathered[rank, start : start + count])
            start += count
    return [torch.unique(torch.cat(parts)) for parts in unions]  # sorted


class SyncedItemEncoder(ItemEncoder):
    """An item encoder whose optimiser step uses the ranks' mean gradient (see the module).

    ``sync_seconds``, ``syncs`` and ``synced_rows`` add up the gradient exchanges: their time
    (waiting for the slowest rank included), count and union table rows."""

    def __init__(self, config: ModelConfig, group: Group = None) -> None:
        super().__init__(config)
        self.group = group
        self.sync_seconds = 0.0
        self.syncs = 0
        self.synced_rows = 0

    def step(self, named_parameters: Iterable[tuple[str, nn.Parameter]]) -> None:
        params = list(named_parameters)
        started = time.perf_counter()
        self.synced_rows += all_reduce_gradients(params, self.tables.values(), self.group)
        self.sync_seconds += time.perf_counter() - started
        self.syncs += 1
        super().step(params)


class DataParallelTrainer(OnlineTrainer):
    """An :class:`OnlineTrainer` that learns its rank's examples in step with the other ranks.

    Every rank must call :meth:`learn_with_sessions` (or :meth:`learn`) the same number of
    times, with its own examples or none: each call is one step of the group."""

    def __init__(self, config: ModelConfig | None = None, group: Group = None) -> None:
        super().__init__(config)
        self.group = group
        self.item_encoder = SyncedItemEncoder(self.config, group)
        self.session_encoder = SessionEncoder(self.item_encoder)

    def learn_with_sessions(
        self, batch: Sequence[ExampleRecord], on_sessions: Callable[[LearnedStep], None] | None = None
    ) -> LearnedStep:
        examples = parse_examples(batch)
        if not self._agree(examples) or examples:
            return super().learn_with_sessions(batch, on_sessions)
        # Nothing here, something elsewhere: join the step and its replay steps with no
        # gradient of this rank's own, drawing the negatives each of them draws elsewhere so
        # the encoder's generator (negatives, new rows' initial vectors) stays in step.
        for _ in range(1 + self.config.replay):
            self.item_encoder.sample_negatives(self.config.negatives)
            self.item_encoder.step(self.session_encoder.named_parameters())
        self.steps += 1
        return super().learn_with_sessions([])

    def observe(self, records: Sequence[ExampleRecord]) -> None:
        """The user history takes this rank's clicks (its users' are all here); the followers'
        table takes every rank's, so each rank's gate reads the whole stream's. A collective:
        every rank calls it once per step (``LearningRound.step`` does)."""
        self.user_history.observe_records(records)
        if self.item_follows is None:
            return
        shares: list[Any] = [None] * dist.get_world_size(self.group)
        dist.all_gather_object(shares, clicks_after(records), group=self.group)
        for share in shares:
            for prefix, item in share:
                self.item_follows.observe(prefix, item)

    def _agree(self, examples: Sequence[Example]) -> int:
        """Register every rank's new ids in one order and count every other rank's clicks;
        returns how many examples the group has in this step."""
        encoder = self.item_encoder
        keep = self.config.max_prefix
        # Flattened by C-level chains and deduplicated before the vocabulary is asked: a step's
        # prefixes hold thousands of items but a few hundred distinct ones.
        targets = [e.item_id for e in examples]
        prefixes = itertools.chain.from_iterable(e.prefix[-keep:] for e in examples)
        distinct = dict.fromkeys(itertools.chain(targets, prefixes))
        new_items = [i for i in distinct if encoder.item_vocab.get(i) is None]
        new_users: list[str] = []
        if self.config.objective == "bpr":
            users = encoder.vocabularies["user"]
            new_users = [u for u in dict.fromkeys(e.user_id for e in examples) if users.get(u) is None]
        shares: list[Any] = [None] * dist.get_world_size(self.group)
        dist.all_gather_object(shares, (new_items, new_users, targets), group=self.group)
        encoder.register("item", list(dict.fromkeys(itertools.chain.from_iterable(s[0] for s in shares))))
        if self.config.objective == "bpr":
            encoder.register("user", list(dict.fromkeys(itertools.chain.from_iterable(s[1] for s in shares))))
        me = dist.get_rank(self.group)
        others = [item for rank, share in enumerate(shares) if rank != me for item in share[2]]
        if others:
            # This rank's own clicks are counted by its prepare(), as a single learner counts.
            encoder.count_clicks(torch.tensor(encoder.known_rows(others), dtype=torch.long))
        return sum(len(share[2]) for share in shares)


def learn_in_lockstep(
    learning: LearningRound, examples: Sequence[ExampleRecord], group: Group = None
) -> list[StepOutcome]:
    """``round.learn`` in step with the other ranks: as many steps as the rank with the most
    examples takes (a rank with fewer takes empty ones), the repeat gate taking the mean of the
    ranks' updates of each step. ``learning.trainer`` must be a :class:`DataParallelTrainer`."""
    wanted = torch.tensor([steps_for(len(examples), learning.config.batch_size) if examples else 0])
    dist.all_reduce(wanted, op=dist.ReduceOp.MAX, group=group)
    bounds = step_bounds(len(examples), int(wanted))
    outcomes = []
    for start, end in itertools.pairwise(bounds):
        gate = learning.trainer.repeat_gate
        before = gate.state_dict() if gate is not None else None
        outcomes.append(learning.step(examples[start:end]))
        if gate is not None and before is not None:
            _mean_gate_updates(gate, before, group)
    return outcomes


def _mean_gate_updates(gate: RepeatGate, before: dict[str, Any], group: Group) -> None:
    """Apply every rank's update of the gate in this step: the gate's new state is the state
    before plus the mean of the ranks' changes."""
    after = gate.state_dict()
    keys = ("weights", "squared", "scale", "steps")
    old = torch.cat([torch.as_tensor(before[k], dtype=torch.float64).reshape(-1) for k in keys])
    new = torch.cat([torch.as_tensor(after[k], dtype=torch.float64).reshape(-1) for k in keys])
    delta = new - old
    dist.all_reduce(delta, group=group)
    # The mean of the ranks' steps: each learned from its share of the step's examples, and
    # together they take the step one learner takes (a sum took world-size steps per step).
    summed = old + delta / dist.get_world_size(group)
    weights = len(after["weights"])
    gate.load_state_dict(
        {
            "weights": summed[:weights],
            "squared": summed[weights : 2 * weights + 1],
            "scale": float(summed[-2]),
            "steps": round(float(summed[-1])),
        }
    )
