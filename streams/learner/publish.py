"""Which items a learning round re-publishes to Qdrant.

Clicked items and items new to the model go out at once: that is the freshness users see.
Every step also moves items nobody clicked (through a shared attribute token or a sampled
negative), on MovieLens nearly every item every step; those are marked stale and swept once
per ``refresh_seconds``, at most ``sweep_items`` per full round (a smaller round takes its
share, so the sweep's points cost the same per example learned), and only those whose direction
moved by more than ``min_change`` (cosine distance) since they were last published are sent:
writing them all each time would make the sink the bottleneck for no visible change.

What was published (one unit vector per item row) and the sweep's stamps are the policy's state
(:meth:`PublishPolicy.state_dict`): saved beside the checkpoint, they let a restarted worker
reopen the store those vectors are in instead of publishing every item again (docs/operations.md,
"Restarts").
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np

from onevec.models.fusion import normalise
from onevec.models.online.item_encoder import ItemEncoder
from onevec.monitoring.drift import VectorUpdates

__all__ = ["PublishPolicy", "PublishedVectors"]


SWEEP_SCAN_ROWS = 65_536  # item rows a round's sweep examines at most (a few ms of bag reads)
SWEEP_CHUNK_ROWS = 4_096  # rows examined at a time, until the round's budget is filled


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
        # The unit vector last sent to Qdrant, per item row (valid where _has_unit): one matrix
        # rather than an array per item, so it costs its bytes only and saves in one write.
        self._units = np.zeros((0, encoder.config.dim), dtype=np.float32)
        self._has_unit = np.zeros(0, dtype=bool)
        self.published = PublishedVectors(self)
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
        self._stamp_arrays(len(self.encoder.item_vocab), len(self.encoder.vocabularies["token"]))
        self._row_changed[rows] = self._round
        self._token_changed[tokens] = self._round

    def _sweep(self, budget: int) -> np.ndarray:
        """Up to ``budget`` stale rows from the cursor on (examining at most SWEEP_SCAN_ROWS),
        marked checked; the cursor moves past the last row taken when the budget is filled,
        else past what was examined."""
        limit = min(len(self.encoder.item_vocab), self._cursor + SWEEP_SCAN_ROWS)
        found: list[np.ndarray] = []
        wanted = budget
        # Examined a chunk at a time: where most rows are stale (a large catalogue under steady
        # learning) the budget fills within the first chunk, and the rest would be read for
        # nothing (1.8 ms a round at 1M items when the whole window was read, 0.1 ms by chunks).
        while self._cursor < limit and wanted > 0:
            end = min(limit, self._cursor + max(SWEEP_CHUNK_ROWS, 2 * wanted))
            rows = np.arange(self._cursor, end)
            moved = np.maximum(self._row_changed[rows], self.encoder.bag_max(rows, self._token_changed, 0))
            stale = rows[moved > self._row_checked[rows]][:wanted]
            if len(stale) == wanted:
                end = int(stale[-1]) + 1
            found.append(stale)
            wanted -= len(stale)
            self._cursor = end
        swept = np.concatenate(found) if found else np.zeros(0, dtype=np.int64)
        self._row_checked[swept] = self._round
        return swept

    def everything(self) -> list[str]:
        """Every known item, each to be published (a starting worker republishes all)."""
        ids = self.encoder.item_ids()
        self._stamp()
        self._row_checked[: len(ids)] = self._round
        return ids

    def material_changes(
        self, changed: list[str], always: set[str]
    ) -> tuple[dict[str, np.ndarray], VectorUpdates]:
        """The served vectors of the ``changed`` items worth publishing (those in ``always``,
        never published ones, and any that moved by more than ``min_change``), and the updates
        they make; both are remembered as published."""
        if not changed:
            return {}, VectorUpdates.first([], self._units[:0])
        vectors = self.encode(changed)
        units = normalise(vectors)
        vocab = self.encoder.item_vocab
        rows = np.fromiter(map(vocab.lookup, changed), dtype=np.int64, count=len(changed))
        self._reserve(len(vocab))
        had = self._has_unit[rows]
        previous = self._units[rows]  # a copy: the updates keep what was published before
        due = ~had | np.fromiter((item_id in always for item_id in changed), dtype=bool, count=len(changed))
        seen = np.flatnonzero(~due)
        if len(seen):
            # One batched cosine for all published items instead of one numpy call per item.
            moved = 1.0 - np.einsum("ij,ij->i", units[seen], previous[seen]) > self.min_change
            due[seen[moved]] = True
        chosen = np.flatnonzero(due)
        self._units[rows[chosen]] = units[chosen]
        self._has_unit[rows[chosen]] = True
        publish = {changed[i]: vectors[i] for i in chosen.tolist()}
        everything = len(chosen) == len(changed)  # a first publish: no copies
        had = had[chosen]
        updates = VectorUpdates(
            changed if everything else [changed[i] for i in chosen.tolist()],
            units if everything else units[chosen],
            had,
            np.fromiter((changed[i] in always for i in chosen.tolist()), dtype=bool, count=len(chosen)),
            previous[chosen] if had.any() else None,
        )
        return publish, updates

    def _reserve(self, items: int) -> None:
        self._units = _grown(self._units, items)
        self._has_unit = _grown(self._has_unit, items)

    # -- state saved beside the checkpoint -----------------------------------------------

    def state_dict(self) -> dict[str, np.ndarray]:
        """What was published and the sweep's place, by item row (the rows of the model saved
        with it): arrays only, so it saves with ``np.savez``."""
        items, tokens = len(self.encoder.item_vocab), len(self.encoder.vocabularies["token"])
        self._reserve(items)
        self._stamp_arrays(items, tokens)
        return {
            # Half precision: a checkpoint is written to disk every interval, and a cosine
            # against a rounded unit vector moves by ~1e-7, far below any min_change.
            "units": self._units[:items].astype(np.float16),
            "has_unit": self._has_unit[:items],
            "row_changed": self._row_changed[:items],
            "row_checked": self._row_checked[:items],
            "token_changed": self._token_changed[:tokens],
            "counters": np.array([self._round, self._cursor, self._sweeping], dtype=np.int64),
        }

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Continue from a saved state: the model restored with it has the same rows. The sweep
        resumes where it was, so items that moved and were not yet swept still will be."""
        items, tokens = len(self.encoder.item_vocab), len(self.encoder.vocabularies["token"])
        if len(state["units"]) > items or len(state["token_changed"]) > tokens:
            raise ValueError("the publish state has more rows than the model it is loaded into")
        self._units = _grown(normalise(state["units"]), items)  # unit again after the rounding
        self._has_unit = _grown(np.array(state["has_unit"], dtype=bool), items)
        self._row_changed = _grown(np.array(state["row_changed"], dtype=np.int64), items)
        self._row_checked = _grown(np.array(state["row_checked"], dtype=np.int64), items)
        self._token_changed = _grown(np.array(state["token_changed"], dtype=np.int64), tokens)
        self._round, self._cursor, sweeping = (int(value) for value in state["counters"])
        self._sweeping = bool(sweeping)
        self._last_sweep = time.monotonic()

    def _stamp_arrays(self, items: int, tokens: int) -> None:
        self._row_changed = _grown(self._row_changed, items)
        self._row_checked = _grown(self._row_checked, items)
        self._token_changed = _grown(self._token_changed, tokens)


class PublishedVectors(Mapping[str, np.ndarray]):
    """Item -> the unit vector last published, read off the policy's row matrix (what the
    drift monitor compares). A value is a view of that matrix: read it, do not keep it."""

    def __init__(self, policy: PublishPolicy) -> None:
        self._policy = policy
        # (ids, vocabulary generation, their rows) of the last vectors_of call
        self._rows_of: tuple[Sequence[str], int, np.ndarray] | None = None

    def _row(self, item_id: str) -> int | None:
        row = self._policy.encoder.item_vocab.get(item_id)
        has = self._policy._has_unit
        return row if row is not None and row < len(has) and has[row] else None

    def __getitem__(self, item_id: str) -> np.ndarray:
        row = self._row(item_id)
        if row is None:
            raise KeyError(item_id)
        return self._policy._units[row]

    def __contains__(self, item_id: object) -> bool:
        return isinstance(item_id, str) and self._row(item_id) is not None

    def rows(self) -> np.ndarray:
        """The item rows that have a published vector."""
        return np.flatnonzero(self._policy._has_unit)

    def __iter__(self) -> Iterator[str]:
        return iter(self._policy.encoder.item_vocab.keys_at(self.rows().tolist()))

    def sample_ids(self, count: int, rng: np.random.Generator) -> list[str]:
        """At most ``count`` published items, drawn uniformly, in row order (the drift
        monitor's reference sample, without listing every id)."""
        rows = self.rows()
        if len(rows) > count:
            rows = np.sort(rng.choice(rows, count, replace=False))
        vocab = self._policy.encoder.item_vocab
        ids = vocab.keys_at(rows.tolist())
        # The monitor asks for these vectors next: their rows are known (at a million items,
        # looking 20,000 ids up again took 20 ms).
        self._rows_of = (ids, vocab.generation, rows)
        return ids

    def vectors_of(self, item_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(which of ``item_ids`` have a published vector, their unit vectors), in one gather.
        The rows of the last list asked for are kept: the drift monitor asks for the same
        reference sample every window."""
        has, vocab = self._policy._has_unit, self._policy.encoder.item_vocab
        known = self._rows_of
        if known is not None and known[0] is item_ids and known[1] == vocab.generation:
            rows = known[2]  # rows never change within a generation; a missing id is asked again
            missing = np.flatnonzero(rows < 0)
            rows[missing] = vocab.rows([item_ids[i] for i in missing.tolist()])
        else:
            rows = vocab.rows(item_ids)
            self._rows_of = (item_ids, vocab.generation, rows)
        rows = np.where(rows < len(has), rows, -1)
        present = rows >= 0
        present[present] = has[rows[present]]
        return present, self._policy._units[rows[present]]

    def __len__(self) -> int:
        return int(np.count_nonzero(self._policy._has_unit))


def _grown(array: np.ndarray, size: int) -> np.ndarray:
    """``array`` holding at least ``size`` rows (doubled, so growth is amortised O(1)). The new
    rows are zeros from ``np.zeros``, whose pages the OS maps only once they are written, so
    the spare capacity costs no memory until used."""
    if len(array) >= size:
        return array
    grown = np.zeros((max(size, 2 * len(array)), *array.shape[1:]), dtype=array.dtype)
    grown[: len(array)] = array
    return grown
