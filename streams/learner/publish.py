"""Which items a learning round re-publishes to Qdrant.

Clicked items and items new to the model go out at once: that is the freshness users see.
Every step also moves items nobody clicked (through a shared attribute token or a sampled
negative), on MovieLens nearly every item every step; those are marked stale and swept once
per ``refresh_seconds``, at most ``sweep_items`` per round, and only those whose direction
moved by more than ``min_change`` (cosine distance) since they were last published are sent:
writing them all each time would make the sink the bottleneck for no visible change.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from onevec.models.fusion import normalise
from onevec.models.online.item_encoder import ItemEncoder

__all__ = ["PublishPolicy", "VectorUpdate"]


@dataclass(frozen=True, slots=True)
class VectorUpdate:
    """A served vector replaced: what the drift monitor tracks."""

    item_id: str
    previous: np.ndarray | None  # unit vector published before, None for a first publish
    current: np.ndarray  # unit vector published now
    sampled: bool  # clicked (or new): an unbiased sample of what users touch


class PublishPolicy:
    """Remembers what was published per item and picks what a round publishes."""

    def __init__(
        self,
        encoder: ItemEncoder,
        encode: Callable[[Sequence[str]], np.ndarray],
        *,
        min_change: float,
        refresh_seconds: float,
        sweep_items: int,
    ) -> None:
        self.encoder = encoder
        self.encode = encode  # item ids -> served vectors (the model's, rotated onto the served version)
        self.min_change = min_change
        self.refresh_seconds = refresh_seconds
        self.sweep_items = sweep_items
        self.published: dict[str, np.ndarray] = {}  # unit vector last sent to Qdrant, per item
        self.stale = np.zeros(0, dtype=bool)  # per item row: moved, not clicked, not yet published
        self._last_sweep = time.monotonic()
        self._sweeping = False  # a sweep is spread over rounds
        self._sweep_from = 0

    def due(self, clicked: set[str], known_before: int) -> tuple[list[str], set[str]]:
        """(items to consider publishing, items to publish whatever they moved): the round's
        clicked and new items, plus a slice of the stale ones when a sweep is due."""
        vocab = self.encoder.item_vocab
        if len(self.stale) < len(vocab):  # one flag per item row, grown with the table
            self.stale = np.concatenate([self.stale, np.zeros(2 * len(vocab) - len(self.stale), dtype=bool)])
        self.stale[self.encoder.changed_rows()] = True
        always_rows = [row for item in clicked if (row := vocab.get(item)) is not None]
        always_rows.extend(range(known_before, len(vocab)))  # new to the model
        self.stale[always_rows] = False
        always = {vocab.key(row) for row in always_rows}
        now = time.monotonic()
        if not self._sweeping and now - self._last_sweep < self.refresh_seconds:
            return sorted(always), always
        # A sweep takes at most sweep_items per round, from where the last round stopped, so a
        # large catalogue is swept over several rounds instead of in one burst of points.
        stale = np.flatnonzero(self.stale)
        order = np.concatenate([stale[stale >= self._sweep_from], stale[stale < self._sweep_from]])
        swept = order[: self.sweep_items]
        self.stale[swept] = False
        self._sweep_from = int(swept[-1]) + 1 if len(swept) else 0
        self._sweeping = len(swept) < len(order)
        if not self._sweeping:
            self._last_sweep = now
        return sorted(always | {vocab.key(row) for row in swept.tolist()}), always

    def everything(self) -> tuple[list[str], set[str]]:
        """Every known item, each to be published (a starting worker republishes all)."""
        ids = self.encoder.item_ids()
        self.encoder.changed_rows()  # drained: every item is published now
        return ids, set(ids)

    def material_changes(
        self, changed: list[str], always: set[str]
    ) -> tuple[dict[str, np.ndarray], list[VectorUpdate]]:
        """The served vectors of the ``changed`` items worth publishing (those in ``always``,
        never published ones, and any that moved by more than ``min_change``), and the updates
        they make; both are remembered as published."""
        if not changed:
            return {}, []
        vectors = self.encode(changed)
        units = normalise(vectors)
        lasts = [self.published.get(item_id) for item_id in changed]
        due = np.fromiter(
            (last is None or item_id in always for item_id, last in zip(changed, lasts, strict=True)),
            dtype=bool,
            count=len(changed),
        )
        seen = np.flatnonzero(~due)
        if len(seen):
            # One batched cosine for all published items instead of one numpy call per item.
            previous = np.array([lasts[i] for i in seen])
            moved = 1.0 - np.einsum("ij,ij->i", units[seen], previous) > self.min_change
            due[seen[moved]] = True
        publish: dict[str, np.ndarray] = {}
        updates: list[VectorUpdate] = []
        for i in np.flatnonzero(due):
            item_id, unit = changed[i], units[i].copy()  # a copy: a row view would keep all of units alive
            publish[item_id] = vectors[i]
            updates.append(VectorUpdate(item_id, lasts[i], unit, sampled=item_id in always))
            self.published[item_id] = unit
        return publish, updates
