"""The per-user history: decayed counts per session, its bounds, and its checkpoint state."""

from __future__ import annotations

import pytest
import torch

from onevec.models.online.user_history import Had, UserHistory


def test_counts_decay_per_session_and_grow_per_event() -> None:
    history = UserHistory(decay=0.5)
    history.observe("u", "milk", "s1")
    history.observe("u", "milk", "s1")
    history.observe("u", "bread", "s1")
    # As of the current session s1: nothing decayed yet.
    assert history.items("u", "s1") == {"milk": 2.0, "bread": 1.0}
    # As of the next session (any other id, or None): one session of decay.
    assert history.items("u") == {"milk": 1.0, "bread": 0.5}
    assert history.recall("u", "s2") == {"milk": Had(1.0, 1), "bread": Had(0.5, 1)}
    history.observe("u", "eggs", "s2")
    history.observe("u", "eggs", "s3")
    history.observe("u", "milk", "s3")
    # milk: 2 decayed over two sessions (s1 -> s3) plus one; eggs: 1 * 0.5 + 1.
    assert history.recall("u", "s3") == {"milk": Had(1.5, 0), "bread": Had(0.25, 2), "eggs": Had(1.5, 0)}


def test_unknown_user_has_nothing() -> None:
    assert UserHistory().items("nobody") == {}
    assert "nobody" not in UserHistory()


def test_records_skip_duplicates() -> None:
    history = UserHistory()
    records = [
        {"user_id": "u", "item_id": "a", "session_id": "s", "duplicate": False},
        {"user_id": "u", "item_id": "a", "session_id": "s", "duplicate": True},
        {"user_id": 7, "item_id": 3, "session_id": "t"},  # foreign ids: their strings
    ]
    history.observe_records(records)
    assert history.items("u", "s") == {"a": 1.0}
    assert history.items("7", "t") == {"3": 1.0}


def test_bounded_in_users_least_recently_active_goes_first() -> None:
    history = UserHistory(max_users=2)
    history.observe("a", "x", "s")
    history.observe("b", "x", "s")
    history.observe("a", "y", "s")  # a is now the more recent
    history.observe("c", "x", "s")
    assert "b" not in history and "a" in history and "c" in history
    assert len(history) == 2
    assert (history.forgotten_users, history.forgotten_items) == (1, 0)


def test_bounded_in_items_weakest_count_goes_first() -> None:
    history = UserHistory(decay=0.5, max_items=2)
    history.observe("u", "old", "s1")
    history.observe("u", "often", "s1")
    history.observe("u", "often", "s1")
    history.observe("u", "new", "s2")  # old (0.5 now) is weaker than often (1.0)
    assert set(history.items("u", "s2")) == {"often", "new"}
    assert (history.forgotten_users, history.forgotten_items) == (0, 1)


def test_state_round_trip_through_a_weights_only_checkpoint(tmp_path: object) -> None:
    history = UserHistory(decay=0.7, max_users=3)
    for user, item, session in [("a", "x", "1"), ("b", "y", "1"), ("a", "z", "2"), ("c", "x", "9")]:
        history.observe(user, item, session)
    path = f"{tmp_path}/history.pt"
    torch.save(history.state_dict(), path)
    restored = UserHistory(decay=0.7, max_users=3)
    restored.load_state_dict(torch.load(path, weights_only=True))
    for user in ("a", "b", "c"):
        assert restored.recall(user, "2") == history.recall(user, "2")
    # The activity order came back too: the next new user evicts b, as it would have.
    restored.observe("d", "x", "1")
    assert "b" not in restored and "a" in restored


def test_a_smaller_bound_on_load_keeps_the_most_recent() -> None:
    history = UserHistory(max_items=3)
    for item in ("a", "b", "c"):
        history.observe("u", item, "s")
    history.observe("v", "a", "s")
    smaller = UserHistory(max_users=1, max_items=2)
    smaller.load_state_dict(history.state_dict())
    assert "v" in smaller and "u" not in smaller
    assert smaller.forgotten_users == 1


def test_invalid_settings_and_state_are_refused() -> None:
    with pytest.raises(ValueError):
        UserHistory(decay=0.0)
    state = UserHistory().state_dict()
    state["sizes"] = torch.tensor([3])
    with pytest.raises(ValueError):
        UserHistory().load_state_dict(state)
