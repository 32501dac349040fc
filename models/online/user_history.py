"""What each user had before: items with counts decayed per session, bounded, checkpointable.

People come back, and in repeat-purchase commerce most of what a user buys they bought before,
so a user's own earlier items are a strong signal (personal frequency, "P-Pop"). This module
only *keeps* that history; :mod:`onevec.models.online.repeat_gate` learns how much it pays.

A user's sessions are numbered in the order they arrive (the session ordinal). An item's count
is multiplied by ``decay`` per session that passed since the user last had it, and grows by one
per event, so ``count`` of an item had once, three sessions ago, is ``decay ** 3``.

API (stable; the learner's prequential scoring and the serving side both use it)::

    history = UserHistory(decay=1.0, max_users=50_000, max_items=100)   # 1.0: plain counts
    history.observe(user_id, item_id, session_id)      # one event the user had
    history.observe_records(records)                   # example records, duplicates skipped
    history.items(user_id) -> dict[str, float]         # decayed counts, as of the user's next session
    history.items(user_id, session_id)                 # ... as of that session (the current one,
                                                       #     when it is the user's latest)
    history.recall(user_id, session_id=None) -> dict[str, Had]   # Had(count, ago): what the gate reads
    history.recall_arrays(user_id, session_id=None) -> Recalled  # the same as parallel arrays
    history.state_dict() / history.load_state_dict(state)

"As of a session": for the user's latest session (events of it were observed) counts are
decayed to that session; for any other session id, or None, to the session after it (a new
session). Only what was observed is there: a caller that observes an event only after it
scored it never lets a user's future into a score.

Bounds: at most ``max_users`` users (the least recently active is forgotten first) and
``max_items`` items per user (the item with the smallest decayed count goes first). A user's
``forgotten_users`` and ``forgotten_items``
count what the bounds dropped, for the learner to export (never silently). A user's
sessions are assumed not to interleave (the session window cuts them by idle gaps): an event of
a session id other than the user's latest starts a new session.
"""

from __future__ import annotations

from array import array
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["Had", "Recalled", "UserHistory"]


@dataclass(frozen=True, slots=True)
class Had:
    """One item of a user's history, as of some session."""

    count: float  # the decayed count
    ago: int  # sessions since the user last had it (0: in this very session)


@dataclass(frozen=True, slots=True)
class Recalled:
    """A user's items as of some session, as parallel arrays (what scoring a batch reads)."""

    items: list[str]
    counts: np.ndarray  # (n,) float64 decayed counts
    ago: np.ndarray  # (n,) int64 sessions since the user last had each

    @classmethod
    def of(cls, history: Mapping[str, Had]) -> Recalled:
        had = list(history.values())
        return cls(
            list(history),
            np.fromiter((h.count for h in had), dtype=np.float64, count=len(had)),
            np.fromiter((h.ago for h in had), dtype=np.int64, count=len(had)),
        )


_NOTHING = Recalled([], np.zeros(0), np.zeros(0, dtype=np.int64))


@dataclass(slots=True)
class _User:
    """Slot-indexed parallel arrays: an item's count is decayed to ``last``, the ordinal of
    the latest session in which the user had it."""

    session: str  # the latest session id
    ordinal: int  # its ordinal among the user's sessions (0 = first)
    slots: dict[str, int] = field(default_factory=dict)
    items: list[str] = field(default_factory=list)
    counts: array = field(default_factory=lambda: array("d"))
    last: array = field(default_factory=lambda: array("q"))

    def decayed(self, decay: float, now: int) -> tuple[np.ndarray, np.ndarray]:
        """(counts decayed to session ``now``, sessions ago) of every slot."""
        ago = now - np.frombuffer(self.last, dtype=np.int64) if self.last else np.zeros(0, dtype=np.int64)
        counts = np.frombuffer(self.counts, dtype=np.float64) if self.counts else np.zeros(0)
        return counts * decay**ago, ago

    def remove(self, slot: int) -> None:
        """Drop a slot; the last slot takes its place (order carries no meaning)."""
        del self.slots[self.items[slot]]
        end = len(self.items) - 1
        if slot != end:
            moved = self.items[end]
            self.items[slot], self.counts[slot], self.last[slot] = moved, self.counts[end], self.last[end]
            self.slots[moved] = slot
        self.items.pop()
        self.counts.pop()
        self.last.pop()


class UserHistory:
    """Per user: the items they had, with decayed counts and the last session ordinal."""

    def __init__(self, decay: float = 1.0, max_users: int = 50_000, max_items: int = 100) -> None:
        if not 0 < decay <= 1:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        if max_users < 1 or max_items < 1:
            raise ValueError("max_users and max_items must be at least 1")
        self.decay = decay
        self.max_users = max_users
        self.max_items = max_items
        self._users: OrderedDict[str, _User] = OrderedDict()  # least recently active first
        self.forgotten_users = 0  # dropped by the bounds since this instance was made
        self.forgotten_items = 0  # a kept user's items dropped by the per-user bound

    def __len__(self) -> int:
        return len(self._users)

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._users

    def observe(self, user_id: str, item_id: str, session_id: str) -> None:
        """Record that ``user_id`` had ``item_id`` in session ``session_id``."""
        user = self._users.get(user_id)
        if user is None:
            user = self._users[user_id] = _User(session_id, 0)
            if len(self._users) > self.max_users:
                self._users.popitem(last=False)
                self.forgotten_users += 1
        else:
            self._users.move_to_end(user_id)
            if session_id != user.session:
                user.session, user.ordinal = session_id, user.ordinal + 1
        now = user.ordinal
        slot = user.slots.get(item_id)
        if slot is None:
            if len(user.items) >= self.max_items:
                self._forget_weakest(user)
            user.slots[item_id] = len(user.items)
            user.items.append(item_id)
            user.counts.append(1.0)
            user.last.append(now)
        else:
            user.counts[slot] = user.counts[slot] * self.decay ** (now - user.last[slot]) + 1.0
            user.last[slot] = now

    def observe_records(self, records: Iterable[Mapping[str, Any]]) -> None:
        """Observe example records in order (``user_id``, ``item_id``, ``session_id``),
        skipping redelivered duplicates: a click counts once."""
        for record in records:
            if not record.get("duplicate", False):
                self.observe(str(record["user_id"]), str(record["item_id"]), str(record["session_id"]))

    def _forget_weakest(self, user: _User) -> None:
        # Decayed to a common session: the smallest count now; among equals the oldest.
        counts, ago = user.decayed(self.decay, user.ordinal)
        user.remove(int(np.lexsort((-ago, counts))[0]))
        self.forgotten_items += 1

    def recall_arrays(self, user_id: str, session_id: str | None = None) -> Recalled:
        """The user's items as of session ``session_id`` (see the module doc), as arrays;
        empty for an unknown user."""
        user = self._users.get(user_id)
        if user is None:
            return _NOTHING
        now = user.ordinal if session_id is not None and session_id == user.session else user.ordinal + 1
        counts, ago = user.decayed(self.decay, now)
        return Recalled(list(user.items), counts, ago)

    def recall(self, user_id: str, session_id: str | None = None) -> dict[str, Had]:
        """The user's items as of session ``session_id`` (see the module doc); empty for an
        unknown user."""
        recalled = self.recall_arrays(user_id, session_id)
        return {
            item: Had(count, ago)
            for item, count, ago in zip(
                recalled.items, recalled.counts.tolist(), recalled.ago.tolist(), strict=True
            )
        }

    def items(self, user_id: str, session_id: str | None = None) -> dict[str, float]:
        """Decayed counts of the user's items as of session ``session_id``."""
        recalled = self.recall_arrays(user_id, session_id)
        return dict(zip(recalled.items, recalled.counts.tolist(), strict=True))

    # ---- state --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Plain lists and tensors (a checkpoint is loaded with ``weights_only``); users in
        activity order, so the bound forgets the same users after a restart."""
        users = list(self._users.values())
        return {
            "users": list(self._users),
            "sessions": [user.session for user in users],
            "ordinals": torch.tensor([user.ordinal for user in users], dtype=torch.int64),
            "sizes": torch.tensor([len(user.items) for user in users], dtype=torch.int64),
            "items": [item for user in users for item in user.items],
            "counts": torch.tensor([c for user in users for c in user.counts], dtype=torch.float64),
            "last": torch.tensor([last for user in users for last in user.last], dtype=torch.int64),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        sizes = state["sizes"].tolist()
        if not len(state["users"]) == len(state["sessions"]) == len(sizes) == len(state["ordinals"]):
            raise ValueError("user history state: users, sessions, ordinals and sizes differ in length")
        if not sum(sizes) == len(state["items"]) == len(state["counts"]) == len(state["last"]):
            raise ValueError("user history state: item count does not match the users' sizes")
        counts, last = state["counts"].tolist(), state["last"].tolist()
        users: OrderedDict[str, _User] = OrderedDict()
        start = 0
        for user_id, session, ordinal, size in zip(
            state["users"], state["sessions"], state["ordinals"].tolist(), sizes, strict=True
        ):
            end = start + size
            items = list(state["items"][start:end])
            users[user_id] = _User(
                session,
                ordinal,
                {item: slot for slot, item in enumerate(items)},
                items,
                array("d", counts[start:end]),
                array("q", last[start:end]),
            )
            start = end
        # The bounds of this instance govern (a restart may lower them): keep the most recent.
        while len(users) > self.max_users:
            users.popitem(last=False)
            self.forgotten_users += 1
        self._users = users
        for user in users.values():
            while len(user.items) > self.max_items:
                self._forget_weakest(user)
