"""Recommendations ranked by Qdrant: for a user, a live session or a list of items.

The query vector is a user's or a session's (both the session encoder's output, in the space of
the items' ``behaviour`` vectors), so items are ranked by the inner product the model was
trained and is evaluated with. The repeat gate's term
(:class:`~onevec.models.online.repeat_gate.RepeatGate`) is non-zero only on the user's own items
(at most ``history_items`` of them) and on the items that followed the session's items on the
stream (the learner's :class:`~onevec.models.online.item_follows.ItemFollows`), so a ranking is
the merge of three parts, re-scored by the gate:

* the catalogue: Qdrant's top k by inner product, over-fetched by as many items as are excluded
  (the user's and the session's own), which are dropped;
* the user's own items: their stored ``behaviour`` vectors read from Qdrant by id, scored by the
  same inner product;
* the session's followers with the largest gate term (``4 k`` of them), read and scored alike.

Point-id filters (``has_id`` / ``must_not has_id``) would say the same to Qdrant, but local mode
(the embedded default) evaluates them point by point in Python: ~10x an unfiltered query
(``python -m onevec.streams.tools.bench.users`` measures both).

Modes: ``again`` ranks only items the user had, ``discover`` only items they never had,
``mixed`` (the default) both. A session's own items are never recommended for it (as ranking
excludes them in the evaluation); a user asked about without a session is served as at the
start of their next session.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np

from onevec.models.online.item_follows import Followed, ItemFollows
from onevec.models.online.repeat_gate import RepeatGate
from onevec.models.online.user_history import Had
from onevec.streams.qdrant import ItemHit, QdrantStore

__all__ = ["MODES", "Mode", "Recommendation", "Recommended", "Recommender", "UnknownSession", "UnknownUser"]

Mode = Literal["mixed", "again", "discover"]
MODES: tuple[Mode, ...] = get_args(Mode)


class UnknownUser(KeyError):
    """No point for this user in Qdrant: the learner's history never had them."""


class UnknownSession(KeyError):
    """No live session point with this id in Qdrant."""


@dataclass(frozen=True, slots=True)
class Recommended:
    item_id: str
    score: float  # the ranking's score: the gate's mixture where there is a gate
    attributes: dict[str, Any]
    had: float | None  # the user's decayed count of this item, None when they never had it


@dataclass(frozen=True, slots=True)
class Recommendation:
    user_id: str | None
    session_id: str | None
    items: list[str]  # what it was asked for: the session's items, or the given ones
    mode: Mode
    recommended: list[Recommended]


class Recommender:
    """Lookups over one store. ``gate`` gives the learner's current repeat gate (None: the
    session score alone); ``decay`` is the user history's per-session decay, which turns the
    history Qdrant holds (as of the user's latest session) into the history as of their next;
    ``follows`` gives the learner's table of what followed what, the gate's other features."""

    def __init__(
        self,
        store: QdrantStore,
        gate: Callable[[], RepeatGate | None],
        decay: float,
        follows: Callable[[], ItemFollows | None] = lambda: None,
    ) -> None:
        self.store = store
        self.gate = gate
        self.decay = decay
        self.follows = follows

    async def for_user(self, user_id: str, k: int, mode: Mode = "mixed") -> Recommendation:
        """What to show ``user_id`` as their next session starts."""
        user = await self.store.get_user(user_id)
        if user is None:
            raise UnknownUser(user_id)
        history = self._next_session(user.history)
        ranked = await self._rank(user.vector, history, (), k, mode)
        return Recommendation(user_id, None, [], mode, ranked)

    async def for_session(self, session_id: str, k: int, mode: Mode = "mixed") -> Recommendation:
        """Next items for a live session, with its user's history when Qdrant has the user."""
        session = await self.store.get_session(session_id)
        if session is None:
            raise UnknownSession(session_id)
        history: dict[str, Had] = {}
        user = None if session.user_id is None else await self.store.get_user(session.user_id)
        if user is not None:
            # The user's history as of this session: Qdrant holds it as of their latest one.
            latest = user.session_id == session_id
            history = user.history if latest else self._next_session(user.history)
        ranked = await self._rank(session.vector, history, session.items, k, mode)
        return Recommendation(session.user_id, session_id, session.items, mode, ranked)

    async def for_vector(self, vector: Sequence[float], items: list[str], k: int) -> Recommendation:
        """Next items after ``items`` (no user), from their session vector."""
        return Recommendation(None, None, items, "mixed", await self._rank(vector, {}, items, k, "mixed"))

    @staticmethod
    def _strongest_followers(
        gate: RepeatGate, followed: Followed, taken: Collection[str], k: int
    ) -> list[str]:
        """The ``4 k`` followers not yet among the candidates with the largest gate term: the
        ones that can enter the top k (Qdrant's top k holds the best by session score)."""
        bonus = followed.values @ gate.weights[-followed.values.shape[1] :]
        order = np.argsort(-bonus, kind="stable")
        return [followed.items[i] for i in order.tolist() if followed.items[i] not in taken][: 4 * k]

    def _next_session(self, history: Mapping[str, Had]) -> dict[str, Had]:
        # One session later every count decays once more and lies one session further back
        # (UserHistory's rule).
        return {item: Had(had.count * self.decay, had.ago + 1) for item, had in history.items()}

    async def _rank(
        self,
        vector: Sequence[float],
        history: Mapping[str, Had],
        session_items: Sequence[str],
        k: int,
        mode: Mode,
    ) -> list[Recommended]:
        excluded = set(session_items)
        had = {item: entry for item, entry in history.items() if item not in excluded}
        gate, table = self.gate(), self.follows()
        followed = None if gate is None or table is None else table.followed(session_items)
        hits: list[ItemHit] = []
        if mode != "again":
            dropped = excluded | had.keys()
            found = await self.store.rank_items(vector, k + len(dropped))
            hits.extend([hit for hit in found if hit.item_id not in dropped][:k])
        extra = [] if mode == "discover" else list(had)
        if followed is not None and gate is not None and mode != "again":
            taken = excluded | had.keys() | {hit.item_id for hit in hits}
            extra += self._strongest_followers(gate, followed, taken, k)
        if extra:
            query = np.asarray(vector, dtype=np.float32)
            for item in await self.store.get_items(extra):
                score = float(query @ np.asarray(item.vectors["behaviour"], dtype=np.float32))
                hits.append(ItemHit(item.item_id, score, item.payload))
        scores = np.array([hit.score for hit in hits], dtype=np.float64)
        if gate is not None and hits:
            scores = gate.combine(scores, [hit.item_id for hit in hits], had, followed)
        order = np.argsort(-scores, kind="stable")[:k]
        return [
            Recommended(
                item_id=hits[i].item_id,
                score=float(scores[i]),
                attributes=hits[i].payload.get("attributes", {}),
                had=had[hits[i].item_id].count if hits[i].item_id in had else None,
            )
            for i in order.tolist()
        ]
