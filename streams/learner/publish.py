"""Which items a learning round re-publishes to Qdrant.

Clicked items and items new to the model go out at once: that is the freshness users see.
Every step also moves items nobody clicked (through a shared attribute token or a sampled
negative), on MovieLens nearly every item every step; those are marked stale and swept once
per ``refresh_seconds``, at most ``sweep_items`` per full round (a smaller round takes its
share, so the sweep's points cost the same per example learned), and only those whose direction
moved by more than ``min_change`` (cosine distance) since they were last published are sent:
writing them all each time would make the sink the bottleneck for no visible change.
"""

from __future__ import annotations

import itertools
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


SWEEP_SCAN_ROWS = 65_536  # item rows a round's sweep examines at most (a few ms of bag reads)


class PublishPolicy:
    """Remembers what was published per item and picks what a round publishes.

    Nothing here reads the whole catalogue per round: the encoder reports the item and token
    rows a round changed, and each gets a stamp (the round it changed in). An item is stale
    when its row or one of its tokens changed after it was last checked; a sweep walks the
    rows with a cursor, reading the stamps of at most ``SWEEP_SCAN_ROWS`` rows per round."""

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
        self._round = 0  # rounds so far: the stamps below
        self._row_changed = np.zeros(0, dtype=np.int64)  # per item row: last round it moved
        self._token_changed = np.zeros(0, dtype=np.int64)  # per token row: last round it moved
        self._row_checked = np.zeros(0, dtype=np.int64)  # per item row: last round it was due
        self._last_sweep = time.monotonic()
        self._sweeping = False  # a sweep is spread over rounds
        self._cursor = 0  # the next item row the sweep examines

    def due(self, clicked: set[str], known_before: int, share: float = 1.0) -> tuple[list[str], set[str]]:
        """(items to consider publishing, items to publish whatever they moved): the round's
        clicked and new items, plus stale ones when a sweep is due: at most ``share`` of
        ``sweep_items`` (a round smaller than a full one takes its share)."""
        vocab = self.encoder.item_vocab
        self._stamp()
        always_rows = np.fromiter(
            itertools.chain(
                (row for item in clicked if (row := vocab.get(item)) is not None),
                range(known_before, len(vocab)),
            ),
            dtype=np.int64,
        )
        self._row_checked[always_rows] = self._round
        always = {vocab.key(row) for row in always_rows.tolist()}
        now = time.monotonic()
        if not self._sweeping and now - self._last_sweep < self.refresh_seconds:
            return sorted(always), always
        # A sweep is one pass of the cursor over every row, spread over rounds so a large
        # catalogue is swept in slices instead of one burst of points; the next pass starts
        # refresh_seconds after this one ends.
        swept = self._sweep(max(1, round(self.sweep_items * share)))
        self._sweeping = self._cursor < len(vocab)
        if not self._sweeping:
            self._cursor = 0
            self._last_sweep = now
        return sorted(always | {vocab.key(row) for row in swept.tolist()}), always

    def _stamp(self) -> None:
        """A new round: the rows and tokens changed since the last one get its stamp."""
        self._round += 1
        rows, tokens = self.encoder.drain_changes()
        items = len(self.encoder.item_vocab)
        self._row_changed = _grown(self._row_changed, items)
        self._row_checked = _grown(self._row_checked, items)
        self._token_changed = _grown(self._token_changed, len(self.encoder.vocabularies["token"]))
        self._row_changed[rows] = self._round
        self._token_changed[tokens] = self._round

    def _sweep(self, budget: int) -> np.ndarray:
        """Up to ``budget`` stale rows from the cursor on (examining at most SWEEP_SCAN_ROWS),
        marked checked; the cursor moves past what was examined."""
        end = min(len(self.encoder.item_vocab), self._cursor + SWEEP_SCAN_ROWS)
        rows = np.arange(self._cursor, end)
        moved = np.maximum(self._row_changed[rows], self.encoder.bag_max(rows, self._token_changed, 0))
        stale = rows[moved > self._row_checked[rows]]
        if len(stale) > budget:
            stale = stale[:budget]
            end = int(stale[-1]) + 1
        self._row_checked[stale] = self._round
        self._cursor = end
        return stale

    def everything(self) -> tuple[list[str], set[str]]:
        """Every known item, each to be published (a starting worker republishes all)."""
        ids = self.encoder.item_ids()
        self._stamp()
        self._row_checked[: len(ids)] = self._round
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


def _grown(stamps: np.ndarray, size: int) -> np.ndarray:
    """``stamps`` holding at least ``size`` rows (doubled, so growth is amortised O(1))."""
    if len(stamps) >= size:
        return stamps
    return np.concatenate([stamps, np.zeros(max(size, 2 * len(stamps)) - len(stamps), dtype=stamps.dtype)])
