"""Checkpoints of a data-parallel group: one file per rank, written at the same step, restored
together.

A group checkpoint is numbered: rank 0 picks the next number and every rank writes
``learner-{number}-rank{r}-of-{world}.pt`` (its ``OnlineTrainer`` checkpoint: the weights, the
same on every rank; its own replay buffer, user history and the input offsets it learned). A
restore takes the newest number that *every* rank wrote, so a rank killed while writing leaves
the previous checkpoint in force, and returns the offsets of all the ranks merged (the newest
per partition), since the consumer group may deal the partitions out differently after the
restart. Each rank reads only its own files (one directory shared, or one volume per rank):
which numbers are complete is agreed by an all-gather. A rank deletes its older files only
after every rank wrote the new one, so a complete checkpoint exists at every moment.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from onevec.models.online.trainer import OnlineTrainer

__all__ = ["restore_group_checkpoint", "save_group_checkpoint"]

Group = dist.ProcessGroup | None

_NAME = re.compile(r"learner-(\d+)-rank(\d+)-of-(\d+)\.pt")


def _path(directory: Path, number: int, rank: int, world: int) -> Path:
    return directory / f"learner-{number:08d}-rank{rank}-of-{world}.pt"


def _own_numbers(directory: Path, rank: int, world: int) -> list[int]:
    """The checkpoint numbers this rank has a file of, for this world size."""
    numbers = []
    for path in directory.glob("learner-*-rank*-of-*.pt"):
        match = _NAME.fullmatch(path.name)
        if match and (int(match[2]), int(match[3])) == (rank, world):
            numbers.append(int(match[1]))
    return sorted(numbers)


def save_group_checkpoint(
    trainer: OnlineTrainer, directory: Path, offsets: dict[str, int], group: Group = None
) -> int:
    """Collective: write this rank's file of the group's next checkpoint; returns its number."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    own = _own_numbers(directory, rank, world)
    # Past every rank's files, complete or not: no rank overwrites a file a restore may read.
    number = torch.tensor([own[-1] + 1 if own else 1])
    dist.all_reduce(number, op=dist.ReduceOp.MAX, group=group)
    trainer.save_checkpoint(_path(directory, int(number), rank, world), offsets)
    dist.barrier(group=group)  # every rank wrote it: the older ones are no longer needed
    for old in own:
        _path(directory, old, rank, world).unlink(missing_ok=True)
    return int(number)


def restore_group_checkpoint(trainer: OnlineTrainer, directory: Path, group: Group = None) -> dict[str, int]:
    """Collective: load the newest checkpoint every rank wrote; returns the offsets of all the
    ranks merged (empty, with the trainer untouched, when no complete one exists)."""
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    owned: list[Any] = [None] * world
    dist.all_gather_object(owned, _own_numbers(directory, rank, world), group=group)
    complete = set.intersection(*(set(numbers) for numbers in owned))
    offsets: dict[str, int] = (
        trainer.load_checkpoint(_path(directory, max(complete), rank, world)) if complete else {}
    )
    everyone: list[Any] = [None] * world
    dist.all_gather_object(everyone, offsets, group=group)
    merged: dict[str, int] = {}
    for share in everyone:
        for key, offset in share.items():
            merged[key] = max(offset, merged.get(key, -1))
    return merged
