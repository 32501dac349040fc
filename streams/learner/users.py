"""The users' points: each user's vector and history, from the trainer's user history.

A user's vector is the session encoder's vector of their newest items, across sessions: the
items of their earlier sessions by when they last had them, then their latest session's in
click order. It is what the session encoder would predict if the user's recent items were one
session, so it ranks items by the same inner product the model is trained and evaluated with,
and it is recomputed with the current weights whenever the user is active (a decayed mean of
stored session vectors would mix the coordinates of many model versions and need state of its
own). The history keeps counts, not order, so within an earlier session items are ordered by
count (the encoder weighs the newest items most).

The history itself is the trainer's (``OnlineTrainer.user_history``): checkpointed with the
model, so after a crash it comes back with the weights and the examples after the checkpoint
are learned (and observed) again from the examples topic.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from onevec.models.online.user_history import Recalled, UserHistory
from onevec.streams.qdrant import UserRecord

__all__ = ["UserContext", "every_user", "newest_items", "user_contexts", "user_records"]


@dataclass(frozen=True, slots=True)
class UserContext:
    """What a user's point is built from."""

    session_id: str  # the user's latest session
    had: Recalled  # their history as of that session
    newest: list[str]  # their newest items, oldest first: what their vector encodes


def newest_items(had: Recalled, session: Sequence[str]) -> list[str]:
    """A user's items oldest first: their earlier sessions' (least recent first, then by
    count), then ``session``, their latest, in click order."""
    current = set(session)
    order = np.lexsort((had.counts, -had.ago)).tolist()  # sessions ago, descending; then count
    return [*(had.items[i] for i in order if had.items[i] not in current), *session]


def user_contexts(
    history: UserHistory, latest: Mapping[str, str], sessions: Mapping[str, Sequence[str]]
) -> dict[str, UserContext]:
    """The contexts of users (user -> their latest session id) whose latest session's items
    are in ``sessions`` (session -> items in click order) when known."""
    contexts = {}
    for user_id, session_id in latest.items():
        had = history.recall_arrays(user_id, session_id)
        contexts[user_id] = UserContext(session_id, had, newest_items(had, sessions.get(session_id, ())))
    return contexts


def every_user(history: UserHistory) -> dict[str, str]:
    """Every user the history holds, with their latest session id."""
    state = history.state_dict()
    return dict(zip(state["users"], state["sessions"], strict=True))


def user_records(contexts: Mapping[str, UserContext], vectors: np.ndarray, now: float) -> list[UserRecord]:
    """The users' records, ``vectors`` in the order of ``contexts``."""
    return [
        UserRecord(user_id, vector, context.session_id, now, context.had)
        for (user_id, context), vector in zip(contexts.items(), vectors, strict=True)
    ]
