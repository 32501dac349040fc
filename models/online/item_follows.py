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

Bounds: at most ``max_next`` followers per item, and ``max_entries`` followers over all items
(the least recently clicked items' lists are forgotten first), so memory stays near
``max_entries`` x 85 bytes whatever the catalogue (measured: the 100,000 events of
ml-latest-small make 247,455 entries in 20.6 MB). A new follower of a full item takes the
place of the weakest with that weight plus its own (space-saving), so a follower that keeps
coming gets in. ``forgotten`` counts the followers either bound dropped, for the learner to
export (a bounded table forgets, but never silently).

Learned from example records (each carries its session's prefix), after they were scored, so
no score reads the future; the state is checkpointed with the model.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["Followed", "ItemFollows", "clicks_after"]


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
    """A session's followers: item ids and their (follows_last, follows_session) features."""

    items: list[str]
    values: np.ndarray  # (n, 2) float64, each column's maximum 1 (or all zero)


_NOTHING = Followed([], np.zeros((0, 2)))


class ItemFollows:
    """Per item: the items that came after it in sessions, weighted by 1 / gap."""

    def __init__(self, window: int = 5, max_entries: int = 1_000_000, max_next: int = 100) -> None:
        if window < 1 or max_entries < 1 or max_next < 1:
            raise ValueError("window, max_entries and max_next must be at least 1")
        self.window = window
        self.max_entries = max_entries
        self.max_next = max_next
        self._next: OrderedDict[str, dict[str, float]] = OrderedDict()  # least recently clicked first
        self._entries = 0  # followers over all items
        self.forgotten = 0  # followers dropped by the bounds since this instance was made

    def __len__(self) -> int:
        """The items with followers."""
        return len(self._next)

    @property
    def entries(self) -> int:
        """Followers over all items."""
        return self._entries

    def observe(self, prefix: Sequence[str], item_id: str) -> None:
        """``item_id`` was clicked after ``prefix`` (its session's earlier items, oldest first)."""
        for gap, previous in enumerate(reversed(prefix[-self.window :]), 1):
            if previous != item_id:
                self._add(previous, item_id, 1.0 / gap)

    def observe_records(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Observe example records in order, skipping redelivered duplicates."""
        for prefix, item_id in clicks_after(records):
            self.observe(prefix, item_id)

    def _add(self, source: str, follower: str, weight: float) -> None:
        followers = self._next.get(source)
        if followers is None:
            followers = self._next[source] = {}
        else:
            self._next.move_to_end(source)
        if follower in followers:
            followers[follower] += weight
        elif len(followers) < self.max_next:
            followers[follower] = weight
            self._entries += 1
            self._forget_oldest()
        else:
            weakest = min(followers, key=followers.__getitem__)
            followers[follower] = followers.pop(weakest) + weight
            self.forgotten += 1

    def _forget_oldest(self) -> None:
        # The newest item's list is never forgotten: max_entries >= 1 >= its one new follower.
        while self._entries > self.max_entries:
            _, forgotten = self._next.popitem(last=False)
            self._entries -= len(forgotten)
            self.forgotten += len(forgotten)

    def followers(self, item_id: str) -> dict[str, float]:
        """A copy of ``item_id``'s followers and weights (empty when it has none)."""
        # dict() of a dict is one C call: safe to read while the learner thread writes.
        return dict(self._next.get(item_id, {}))

    def followed(self, prefix: Sequence[str]) -> Followed:
        """The features of every item that followed the session's items (see the module doc)."""
        recent = list(prefix[-self.window :])
        if not recent:
            return _NOTHING
        length = len(prefix)
        last: dict[str, float] = self.followers(recent[-1])
        session: dict[str, float] = {}
        for position, item in enumerate(recent, length - len(recent) + 1):
            share = position / length
            for follower, weight in self.followers(item).items():
                session[follower] = session.get(follower, 0.0) + share * weight
        if not session:
            return _NOTHING
        items = list(session)
        values = np.zeros((len(items), 2))
        values[:, 0] = [last.get(item, 0.0) for item in items]
        values[:, 1] = [session[item] for item in items]
        values /= np.maximum(values.max(axis=0), 1e-12)
        return Followed(items, values)

    # ---- state --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Plain lists and tensors (a checkpoint is loaded ``weights_only``), sources in
        activity order so the bound forgets the same items after a restart."""
        tables = list(self._next.values())
        return {
            "sources": list(self._next),
            "sizes": torch.tensor([len(t) for t in tables], dtype=torch.int64),
            "followers": [item for t in tables for item in t],
            "weights": torch.tensor([w for t in tables for w in t.values()], dtype=torch.float64),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        sizes = state["sizes"].tolist()
        followers_count = len(state["followers"])
        if len(sizes) != len(state["sources"]) or not sum(sizes) == followers_count == len(state["weights"]):
            raise ValueError("item follows state: sources, sizes and followers do not match")
        weights = state["weights"].tolist()
        tables: OrderedDict[str, dict[str, float]] = OrderedDict()
        start = 0
        for source, size in zip(state["sources"], sizes, strict=True):
            end = start + size
            followers = dict(zip(state["followers"][start:end], weights[start:end], strict=True))
            # The bounds of this instance govern (a restart may lower them): keep the strongest.
            if len(followers) > self.max_next:
                self.forgotten += len(followers) - self.max_next
                followers = dict(sorted(followers.items(), key=lambda kv: -kv[1])[: self.max_next])
            tables[source] = followers
            start = end
        self._next = tables
        self._entries = sum(len(t) for t in tables.values())
        self._forget_oldest()
