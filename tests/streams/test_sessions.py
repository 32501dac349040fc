"""Session windows as scenario tables: events in; examples, closures and state out."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from onevec.models.clickstream.events import Event
from onevec.models.clickstream.sessions import SessionBook, SessionWindow

GAP = 100.0


def ev(user: str, item: str, ts: float, session: str | None = None, kind: str = "click") -> Event:
    return Event(user_id=user, item_id=item, event_type=kind, timestamp=ts, session_id=session)


@dataclass
class Step:
    event: Event
    prefix: list[str]  # expected example prefix
    closed: list[tuple[str, str]] = field(default_factory=list)  # (session_id, reason)
    duplicate: bool = False
    partition: int = 0


SCENARIOS: dict[str, tuple[list[Step], dict[str, list[str]]]] = {
    "one session grows": (
        [
            Step(ev("u1", "a", 1000), []),
            Step(ev("u1", "b", 1010), ["a"]),
            Step(ev("u1", "c", 1020), ["a", "b"]),
        ],
        {"user:u1": ["a", "b", "c"]},
    ),
    "gap on the same key closes and reopens": (
        [
            Step(ev("u1", "a", 1000), []),
            Step(ev("u1", "b", 1050), ["a"]),
            Step(ev("u1", "c", 1151), [], closed=[("user:u1@1000", "gap")]),
        ],
        {"user:u1": ["c"]},
    ),
    "exactly the gap stays in the session": (
        [Step(ev("u1", "a", 1000), []), Step(ev("u1", "b", 1100), ["a"])],
        {"user:u1": ["a", "b"]},
    ),
    "watermark closes idle sessions of the partition": (
        [
            Step(ev("u1", "a", 1000), []),
            Step(ev("u2", "x", 1050), []),
            Step(ev("u2", "y", 1101), ["x"], closed=[("user:u1@1000", "idle")]),
        ],
        {"user:u2": ["x", "y"]},
    ),
    "other partitions have their own watermark": (
        [
            Step(ev("u1", "a", 1000), [], partition=0),
            Step(ev("u2", "x", 5000), [], partition=1),
        ],
        {"user:u1": ["a"], "user:u2": ["x"]},
    ),
    "out-of-order event joins in arrival order": (
        [
            Step(ev("u1", "a", 1000), []),
            Step(ev("u1", "b", 1030), ["a"]),
            Step(ev("u1", "c", 1010), ["a", "b"]),
            Step(ev("u1", "d", 1125), ["a", "b", "c"]),  # within gap of last=1030, not of 1010
        ],
        {"user:u1": ["a", "b", "c", "d"]},
    ),
    "duplicate is flagged, re-sent with its original prefix, state unchanged": (
        [
            Step(ev("u1", "a", 1000), []),
            Step(ev("u1", "b", 1010), ["a"]),
            Step(ev("u1", "c", 1020), ["a", "b"]),
            Step(ev("u1", "b", 1010), ["a"], duplicate=True),
        ],
        {"user:u1": ["a", "b", "c"]},
    ),
    "same item at another time is not a duplicate": (
        [Step(ev("u1", "a", 1000), []), Step(ev("u1", "a", 1001), ["a"])],
        {"user:u1": ["a", "a"]},
    ),
    "explicit session id names the session": (
        [
            Step(ev("u1", "a", 1000, session="s-1"), []),
            Step(ev("u2", "b", 1001, session="s-1"), ["a"]),
            Step(ev("u1", "c", 1002), []),
        ],
        {"s-1": ["a", "b"], "user:u1": ["c"]},
    ),
    "late event after its session closed opens a short new one that closes at once": (
        [
            Step(ev("u1", "a", 1000), []),
            Step(ev("u2", "x", 1200), [], closed=[("user:u1@1000", "idle")]),
            Step(ev("u1", "b", 1005), [], closed=[("user:u1@1005", "idle")]),
        ],
        {"user:u2": ["x"]},
    ),
    "redelivery after an idle close is recognised, with its original prefix": (
        [
            Step(ev("u1", "a", 1000), []),
            Step(ev("u1", "b", 1010), ["a"]),
            Step(ev("u2", "x", 1200), [], closed=[("user:u1@1000", "idle")]),
            Step(ev("u1", "b", 1010), ["a"], duplicate=True),  # redelivered after a crash
            Step(ev("u1", "c", 1300), []),  # a genuinely new event opens a new session
        ],
        {"user:u2": ["x"], "user:u1": ["c"]},
    ),
    "redelivery after a gap close is recognised too": (
        [
            Step(ev("u1", "a", 1000), []),
            Step(ev("u1", "b", 1010), ["a"]),
            Step(ev("u1", "c", 1500), [], closed=[("user:u1@1000", "gap")]),
            Step(ev("u1", "b", 1010), ["a"], duplicate=True),
        ],
        {"user:u1": ["c"]},
    ),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_session_scenario(name: str) -> None:
    steps, final_items = SCENARIOS[name]
    store: dict[str, dict] = {}
    book = SessionBook(store, SessionWindow(gap=GAP, max_items=10, max_open=100))
    for number, step in enumerate(steps):
        example, closed = book.process(step.event, step.partition, offset=number)
        assert example.item_id == step.event.item_id, f"step {number}"
        assert example.prefix == step.prefix, f"step {number}"
        assert example.duplicate == step.duplicate, f"step {number}"
        assert [(c.session_id, c.reason) for c in closed] == step.closed, f"step {number}"
    open_states = {key: state for key, state in store.items() if not state.get("tombstone")}
    assert {key: state["items"] for key, state in open_states.items()} == final_items
    assert book.open_sessions() == len(final_items)


def test_closed_record_summarises_the_session() -> None:
    book = SessionBook({}, SessionWindow(gap=GAP))
    book.process(ev("u1", "a", 1000, kind="view"))
    book.process(ev("u1", "b", 1010, kind="add_to_cart"))
    book.process(ev("u1", "b", 1020, kind="purchase"))
    _, closed = book.process(ev("u1", "z", 2000))
    (record,) = closed
    assert record.to_dict() == {
        "session_id": "user:u1@1000",
        "user_id": "u1",
        "start": 1000,
        "end": 1020,
        "n_events": 3,
        "items": ["a", "b", "b"],
        "counts": {"view": 1, "add_to_cart": 1, "purchase": 1},
        "reason": "gap",
    }


def test_state_is_bounded_per_session_and_per_partition() -> None:
    store: dict[str, dict] = {}
    book = SessionBook(store, SessionWindow(gap=GAP, max_items=3, max_open=2))
    for i in range(10):
        example, _ = book.process(ev("u1", f"i{i}", 1000 + i))
    assert example.prefix == ["i6", "i7", "i8"]
    assert store["user:u1"]["items"] == ["i7", "i8", "i9"]
    assert len(store["user:u1"]["seen"]) == 3
    assert store["user:u1"]["n_events"] == 10
    book.process(ev("u2", "x", 1011))
    _, closed = book.process(ev("u3", "y", 1012))
    assert [(c.session_id, c.reason) for c in closed] == [("user:u1@1000", "evicted")]
    assert {k for k, state in store.items() if not state.get("tombstone")} == {"user:u2", "user:u3"}


def test_index_is_rebuilt_from_a_restored_store() -> None:
    """After a restart the table comes back from the changelog but the heap does not."""
    store: dict[str, dict] = {}
    first = SessionBook(store, SessionWindow(gap=GAP))
    first.process(ev("u1", "a", 1000), partition=2)
    first.process(ev("u2", "b", 1050), partition=2)
    restarted = SessionBook(dict(store), SessionWindow(gap=GAP))
    example, closed = restarted.process(ev("u2", "c", 1120), partition=2)
    assert example.prefix == ["b"]
    assert [(c.session_id, c.reason) for c in closed] == [("user:u1@1000", "idle")]
    assert restarted.open_sessions() == 1


def test_tombstones_are_purged_after_the_redelivery_window() -> None:
    store: dict[str, dict] = {}
    book = SessionBook(store, SessionWindow(gap=GAP, redelivery_window=10))
    book.process(ev("u1", "a", 1000), offset=0)
    book.process(ev("u2", "x", 1200), offset=1)  # closes u1, leaving a tombstone
    assert store["user:u1"]["tombstone"]
    book.process(ev("u2", "y", 1201), offset=11)
    assert "user:u1" in store
    book.process(ev("u2", "z", 1202), offset=12)
    assert "user:u1" not in store
    example, _ = book.process(ev("u1", "a", 1000), offset=13)
    assert not example.duplicate  # past the window an old event counts as new


def test_redelivery_older_than_the_kept_fingerprints_is_recognised_by_offset() -> None:
    store: dict[str, dict] = {}
    book = SessionBook(store, SessionWindow(gap=GAP, max_items=2))
    for offset, item in enumerate("abcd"):
        book.process(ev("u1", item, 1000 + offset), offset=offset)
    redelivered, _ = book.process(ev("u1", "a", 1000), offset=0)
    assert redelivered.duplicate and redelivered.prefix == []
    assert store["user:u1"]["n_events"] == 4
    again, _ = book.process(ev("u1", "d", 1003), offset=3)
    assert again.duplicate and again.prefix == ["c"]
    fresh, _ = book.process(ev("u1", "e", 1004), offset=4)
    assert not fresh.duplicate and fresh.prefix == ["c", "d"]


def test_an_applied_event_whose_example_never_went_out_is_sent_unflagged() -> None:
    """The table's changelog landed, the examples record did not (kill -9 between the two): the
    redelivered events above the emitted offset are sent unflagged, at their positions."""
    store: dict[str, dict] = {}
    book = SessionBook(store, SessionWindow(gap=GAP))
    for offset, item in enumerate("abcd"):
        book.process(ev("u1", item, 1000 + offset), offset=offset)
    book.emitted_upto[0] = 1  # the examples of offsets 0-1 are on the topic, of 2-3 not
    sent = [
        book.process(ev("u1", item, 1000 + offset), offset=offset)[0] for offset, item in enumerate("abcd")
    ]
    assert [(e.item_id, e.duplicate, e.prefix) for e in sent] == [
        ("a", True, []),
        ("b", True, ["a"]),
        ("c", False, ["a", "b"]),
        ("d", False, ["a", "b", "c"]),
    ]
    assert store["user:u1"]["n_events"] == 4  # applied once


def test_an_event_the_table_lost_but_whose_example_went_out_is_applied_again_flagged() -> None:
    """The examples record landed, the changelog did not: the redelivered events are applied
    to the session again (the next event's prefix has them) and flagged."""
    store: dict[str, dict] = {}
    book = SessionBook(store, SessionWindow(gap=GAP))
    book.process(ev("u1", "a", 1000), offset=0)
    book.emitted_upto[0] = 2  # offsets 1-2 emitted; the table only knows offset 0
    replayed = [
        book.process(ev("u1", item, 1000 + offset), offset=offset)[0] for offset, item in ((1, "b"), (2, "c"))
    ]
    assert [(e.item_id, e.duplicate, e.prefix) for e in replayed] == [
        ("b", True, ["a"]),
        ("c", True, ["a", "b"]),
    ]
    fresh, _ = book.process(ev("u1", "d", 1003), offset=3)
    assert not fresh.duplicate and fresh.prefix == ["a", "b", "c"]


def test_a_producers_resend_is_flagged_whatever_was_emitted() -> None:
    store: dict[str, dict] = {}
    book = SessionBook(store, SessionWindow(gap=GAP))
    book.process(ev("u1", "a", 1000), offset=0)
    book.process(ev("u1", "b", 1001), offset=1)
    book.emitted_upto[0] = 1
    resent, _ = book.process(ev("u1", "a", 1000), offset=2)  # the same event, a new offset
    assert resent.duplicate and store["user:u1"]["n_events"] == 2
    book.forget_partition(0)
    assert 0 not in book.emitted_upto  # a new assignment reads it again


def test_a_resend_read_before_stays_flagged_when_its_copy_never_went_out() -> None:
    """A producer's resend (same event, new offset) was applied as a duplicate; redelivered
    after a crash with nothing emitted past the first copy, it is still a resend: flagged."""
    store: dict[str, dict] = {}
    book = SessionBook(store, SessionWindow(gap=GAP))
    book.process(ev("u1", "a", 1000), offset=0)
    book.process(ev("u1", "b", 1001), offset=1)
    book.process(ev("u1", "a", 1000), offset=2)  # the resend
    book.emitted_upto[0] = 1
    redelivered, _ = book.process(ev("u1", "a", 1000), offset=2)
    assert redelivered.duplicate


def test_events_of_a_session_closed_by_a_gap_are_resent_from_that_session() -> None:
    """a, b form a session that c closes by the gap; none of their examples went out: redelivered,
    a and b are sent unflagged from their own session, with their prefixes."""
    store: dict[str, dict] = {}
    book = SessionBook(store, SessionWindow(gap=GAP))
    for offset, (item, ts) in enumerate((("a", 1000), ("b", 1010), ("c", 1500))):
        book.process(ev("u1", item, ts), offset=offset)
    book.emitted_upto[0] = -1
    sent = [
        book.process(ev("u1", item, ts), offset=o)[0]
        for o, (item, ts) in enumerate((("a", 1000), ("b", 1010)))
    ]
    assert [(e.session_id, e.prefix, e.duplicate) for e in sent] == [
        ("user:u1@1000", [], False),
        ("user:u1@1000", ["a"], False),
    ]
    assert store["user:u1"]["n_events"] == 1  # c's session is unchanged
