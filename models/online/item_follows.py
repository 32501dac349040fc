"""What tends to follow what: sequential rules over the stream's sessions, for the repeat gate.

An item clicked once is a row the encoders have hardly moved; a neighbour method can use it
after one occurrence. On a short stream (ml-latest-small's first 20,000 events) session-kNN and
item transitions beat the trained vectors for that reason. This table keeps, per item ``p``,
the items that came after ``p`` in a session: ``weight(p -> i)`` grows by ``1 / gap`` each time
``i`` is clicked ``gap`` clicks after ``p`` (gap at most ``window``), the "sequential rules" of
Ludewig & Jannach's session-based baselines. :mod:`onevec.models.online.repeat_gate` learns
online how much it pays next to the session encoder, as it does for a user's own history.

A session's two features of candidate ``i`` (:meth:`ItemFollows.followed`), each divided by
its largest value over the candidates so it lies in (0, 1]:

* ``follows_last``: ``weight(last item -> i)``;
* ``follows_session``: ``sum over the session's newest items p at position j of L`` (1 =
  oldest) ``of (j / L) * weight(p -> i)`` (the newest ``window`` items).

Bounds: at most ``max_next`` followers per item, and ``max_entries`` followers over all
items (the least recently clicked items' lists are forgotten first), so the lists stay near
``max_entries`` x 16 bytes whatever the catalogue; the interned ids add one entry per item
ever seen, as the encoder's vocabulary does (measured: the 100,000 events of ml-latest-small
make 247,449 entries in 6.6 MiB, all included, 28 bytes an entry, tracemalloc). A new
follower of a full item takes the place of the weakest with that weight plus its own
(space-saving), so a follower that keeps coming gets in. ``forgotten`` counts the followers either
bound dropped, for the learner to export (a bounded table forgets, but never silently).

Items are interned as integers (their own vocabulary), each item's followers held in two
growing byte arrays, so a session's features are a few array operations rather than a Python loop
over up to ``window x max_next`` followers (that loop halved the learner's examples/s).

Learned from example records (each carries its session's prefix), after they were scored, so
no score reads the future; the state is checkpointed with the model.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from onevec.models.online.vocab import Vocabulary

__all__ = ["Followed", "FollowedMany", "ItemFollows", "clicks_after"]


def clicks_after(records: Iterable[Mapping[str, Any]]) -> list[tuple[list[str], str]]:
    """(session prefix, item id) of each example record that is not a redelivered duplicate:
    what :meth:`ItemFollows.observe` takes."""
    return [
        ([str(p) for p in record.get("prefix") or ()], str(record["item_id"]))
        for record in records
        if not record.get("duplicate", False)
    ]


@dataclass(frozen=True, slots=True)
class Followed:
    """A session's followers: the table's ids of them and their (follows_last,
    follows_session) features."""

    ids: np.ndarray  # (n,) int64, the table's interned ids
    values: np.ndarray  # (n, 2) float64, each column's maximum 1 (or all zero)
    names: Vocabulary = field(default_factory=Vocabulary)  # id -> item id

    @classmethod
    def of(cls, items: Sequence[str], values: np.ndarray) -> Followed:
        """Followers given by item id (a table of their own)."""
        names = Vocabulary()
        return cls(np.asarray(names.index_many(list(items)), dtype=np.int64), values, names)

    @property
    def items(self) -> list[str]:
        """The followers' item ids."""
        return [self.names.key(i) for i in self.ids.tolist()]


@dataclass(frozen=True, slots=True)
class FollowedMany:
    """The followers of many sessions: (query, follower id, features) triples, one per pair,
    sorted by query."""

    rows: np.ndarray  # (m,) int64 query index
    ids: np.ndarray  # (m,) int64, the table's interned ids
    values: np.ndarray  # (m, 2) float64, each query's column maximum 1 (or all zero)


# An item's followers: their interned ids and weights, packed as native int64 and float64 in
# two bytearrays. Not array objects: the garbage collector tracks those (two per item with
# followers), and its full collections over them stalled the learner (18-31 ms at 1M items).
# A tuple of untracked objects is untracked too.
_Lists = tuple[bytearray, bytearray]
_ID = struct.Struct("q")
_WEIGHT = struct.Struct("d")


def _position(ids: bytearray, follower: int) -> int:
    """The index of ``follower`` in ``ids``, -1 if absent: a C-level scan (a match must start
    on an id's boundary, so one that straddles two ids is skipped)."""
    packed = _ID.pack(follower)
    at = ids.find(packed)
    while at % _ID.size and at >= 0:
        at = ids.find(packed, at + 1)
    return at // _ID.size if at >= 0 else -1


def _add_weight(weights: bytearray, index: int, weight: float) -> None:
    offset = index * _WEIGHT.size
    _WEIGHT.pack_into(weights, offset, _WEIGHT.unpack_from(weights, offset)[0] + weight)


def _copies(lists: _Lists) -> tuple[np.ndarray, np.ndarray]:
    """Copies of (ids, weights) as arrays. The learner thread may append meanwhile, so both
    are cut to the shorter; slices are copies, so no view keeps the learner from growing them."""
    ids, weights = lists
    n = min(len(ids), len(weights)) // _ID.size
    return (
        np.frombuffer(ids[: n * _ID.size], dtype=np.int64),
        np.frombuffer(weights[: n * _WEIGHT.size], dtype=np.float64),
    )


class ItemFollows:
    """Per item: the items that came after it in sessions, weighted by 1 / gap."""

    def __init__(self, window: int = 5, max_entries: int = 1_000_000, max_next: int = 100) -> None:
        if window < 1 or max_entries < 1 or max_next < 1:
            raise ValueError("window, max_entries and max_next must be at least 1")
        self.window = window
        self.max_entries = max_entries
        self.max_next = max_next
        self._names = Vocabulary()  # item id <-> interned id, never reused
        self._next: OrderedDict[int, _Lists] = OrderedDict()  # least recently clicked first
        self._entries = 0  # followers over all items
        self.forgotten = 0  # followers dropped by the bounds since this instance was made
        self._columns: tuple[Vocabulary, int, np.ndarray] | None = None  # see columns_in

    def __len__(self) -> int:
        """The items with followers."""
        return len(self._next)

    @property
    def entries(self) -> int:
        """Followers over all items."""
        return self._entries

    def observe(self, prefix: Sequence[str], item_id: str) -> None:
        """``item_id`` was clicked after ``prefix`` (its session's earlier items, oldest first)."""
        recent = list(prefix[-self.window :])
        follower, *sources = self._names.index_many([item_id, *reversed(recent)])
        for gap, source in enumerate(sources, 1):
            if source != follower:
                self._add(source, follower, 1.0 / gap)

    def observe_records(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Observe example records in order, skipping redelivered duplicates."""
        for prefix, item_id in clicks_after(records):
            self.observe(prefix, item_id)

    def _add(self, source: int, follower: int, weight: float) -> None:
        lists = self._next.get(source)
        if lists is None:
            lists = self._next[source] = (bytearray(), bytearray())
        else:
            self._next.move_to_end(source)
        ids, weights = lists
        at = _position(ids, follower)
        if at >= 0:
            _add_weight(weights, at, weight)
        elif len(ids) < self.max_next * _ID.size:
            ids += _ID.pack(follower)
            weights += _WEIGHT.pack(weight)
            self._entries += 1
            self._forget_oldest()
        else:
            weakest = int(np.argmin(np.frombuffer(weights, dtype=np.float64)))  # a view, gone at once
            _ID.pack_into(ids, weakest * _ID.size, follower)
            _add_weight(weights, weakest, weight)
            self.forgotten += 1

    def _forget_oldest(self) -> None:
        # The newest item's list is never forgotten: max_entries >= 1 >= its one new follower.
        while self._entries > self.max_entries:
            _, (forgotten, _) = self._next.popitem(last=False)
            self._entries -= len(forgotten) // _ID.size
            self.forgotten += len(forgotten) // _ID.size

    def followers(self, item_id: str) -> dict[str, float]:
        """A copy of ``item_id``'s followers and weights (empty when it has none)."""
        source = self._names.get(item_id)
        lists = None if source is None else self._next.get(source)
        if lists is None:
            return {}
        ids, weights = _copies(lists)
        return dict(zip(self._names.keys_at(ids.tolist()), weights.tolist(), strict=True))

    def followed(self, prefix: Sequence[str]) -> Followed:
        """The features of every item that followed the session's items (see the module doc)."""
        many = self.followed_many([prefix])
        return Followed(many.ids, many.values, self._names)

    def followed_many(self, prefixes: Sequence[Sequence[str]]) -> FollowedMany:
        """:meth:`followed` of many sessions at once: one sort for them all, where a query at a
        time spent most of its time in small array calls."""
        ids, weights = bytearray(), bytearray()
        queries: list[int] = []  # per gathered list, its query
        sizes: list[int] = []
        shares: list[float] = []
        for query, prefix in enumerate(prefixes):
            recent = list(prefix[-self.window :])
            length = len(prefix)
            for position, source in enumerate(map(self._names.lookup, recent), length - len(recent) + 1):
                lists = None if source is None else self._next.get(source)
                if lists is not None:
                    # The learner thread may append meanwhile: both cut to the shorter (sliced
                    # copies: a view would keep it from growing them).
                    n = min(len(lists[0]), len(lists[1])) // _ID.size
                    ids += lists[0][: n * _ID.size]
                    weights += lists[1][: n * _WEIGHT.size]
                    queries.append(query)
                    sizes.append(n)
                    shares.append(position / length)
        if not sizes:
            return FollowedMany(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros((0, 2)))
        found = np.frombuffer(ids, dtype=np.int64)
        rows = np.repeat(np.asarray(queries, dtype=np.int64), sizes)
        # One key per (query, follower): sorted by query first.
        keys, where = np.unique(rows * len(self._names) + found, return_inverse=True)
        gathered = np.frombuffer(weights, dtype=np.float64)
        values = np.zeros((len(keys), 2))
        last = np.repeat(np.asarray(shares) == 1.0, sizes)  # the list of a session's last item
        values[:, 0] = np.bincount(where, np.where(last, gathered, 0.0), minlength=len(keys))
        values[:, 1] = np.bincount(where, gathered * np.repeat(shares, sizes), minlength=len(keys))
        query_of, follower = np.divmod(keys, len(self._names))
        starts = np.flatnonzero(np.r_[True, query_of[1:] != query_of[:-1]])
        peaks = np.maximum.reduceat(values, starts, axis=0)
        values /= np.maximum(np.repeat(peaks, np.diff(np.r_[starts, len(keys)]), axis=0), 1e-12)
        return FollowedMany(query_of, follower, values)

    def names(self, ids: np.ndarray) -> list[str]:
        """The item ids of the table's interned ``ids``."""
        return [self._names.key(i) for i in ids.tolist()]

    def columns_in(self, followed: Followed | FollowedMany, vocabulary: Vocabulary) -> np.ndarray:
        """The rows of ``followed``'s items in ``vocabulary`` (-1 for an item it lacks). Cached
        per vocabulary and its generation (rows are only added within one); an item the
        vocabulary lacked is looked up again."""
        cached = self._columns
        if cached is None or cached[0] is not vocabulary or cached[1] != vocabulary.generation:
            cached = (vocabulary, vocabulary.generation, np.zeros(0, dtype=np.int64))
        rows = cached[2]
        if len(rows) < len(self._names):
            new = self._names.slice(len(rows), len(self._names))
            rows = np.concatenate([rows, vocabulary.rows(new)])
        self._columns = (vocabulary, vocabulary.generation, rows)
        columns = rows[followed.ids]
        missing = np.flatnonzero(columns < 0)
        if len(missing):
            columns[missing] = vocabulary.rows(self.names(followed.ids[missing]))
            rows[followed.ids[missing]] = columns[missing]
        return columns

    # ---- state --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Plain lists and tensors (a checkpoint is loaded ``weights_only``), sources in
        activity order so the bound forgets the same items after a restart."""
        tables = [_copies(lists) for lists in self._next.values()]
        ids = np.concatenate([t[0] for t in tables]) if tables else np.zeros(0, dtype=np.int64)
        weights = np.concatenate([t[1] for t in tables]) if tables else np.zeros(0)
        return {
            "sources": self._names.keys_at(list(self._next)),
            "sizes": torch.tensor([len(t[0]) for t in tables], dtype=torch.int64),
            "followers": self._names.keys_at(ids.tolist()),
            "weights": torch.from_numpy(weights.astype(np.float64)),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        sizes = state["sizes"].tolist()
        followers_count = len(state["followers"])
        if len(sizes) != len(state["sources"]) or not sum(sizes) == followers_count == len(state["weights"]):
            raise ValueError("item follows state: sources, sizes and followers do not match")
        weights = state["weights"].tolist()
        names = Vocabulary()
        tables: OrderedDict[int, _Lists] = OrderedDict()
        start = 0
        for source, size in zip(state["sources"], sizes, strict=True):
            end = start + size
            kept = list(zip(state["followers"][start:end], weights[start:end], strict=True))
            # The bounds of this instance govern (a restart may lower them): keep the strongest.
            if len(kept) > self.max_next:
                self.forgotten += len(kept) - self.max_next
                kept = sorted(kept, key=lambda kv: -kv[1])[: self.max_next]
            ids = names.index_many([follower for follower, _ in kept])
            tables[names.index(source)] = (
                bytearray(np.asarray(ids, dtype=np.int64).tobytes()),
                bytearray(np.asarray([w for _, w in kept], dtype=np.float64).tobytes()),
            )
            start = end
        # New ids: the cached columns belonged to the old ones.
        self._names, self._next, self._columns = names, tables, None
        self._entries = sum(len(ids) for ids, _ in tables.values()) // _ID.size
        self._forget_oldest()
