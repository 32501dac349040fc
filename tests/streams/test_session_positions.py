"""The session book with input positions of packed records (offset + line / PACK_SLOTS) and
with the fingerprint test narrowed to the events at a session's last time: redeliveries,
emitted claims per whole record, and a producer's resends, on plain dict stores."""

from __future__ import annotations

from onevec.models.clickstream.events import Event
from onevec.models.clickstream.packed import input_position
from onevec.models.clickstream.sessions import SessionBook, SessionWindow

GAP = 100.0


def ev(item: str, ts: float, user: str = "u1") -> Event:
    return Event(user_id=user, item_id=item, event_type="click", timestamp=ts)


def pack(book: SessionBook, offset: int, items: str, ts: float = 1000.0) -> list[tuple[str, bool, list[str]]]:
    """The events of one packed record at ``offset``, all at time ``ts``: (item, flag, prefix)."""
    sent = [book.process(ev(item, ts), 0, input_position(offset, line))[0] for line, item in enumerate(items)]
    return [(e.item_id, e.duplicate, e.prefix) for e in sent]


def test_the_events_of_one_record_are_distinct_and_a_redelivery_is_recognised() -> None:
    store: dict[str, dict] = {}
    book = SessionBook(store, SessionWindow(gap=GAP))
    assert pack(book, 10, "abc") == [("a", False, []), ("b", False, ["a"]), ("c", False, ["a", "b"])]
    assert pack(book, 11, "d") == [("d", False, ["a", "b", "c"])]
    # The whole record again (a redelivery after a crash): the same positions, all flagged,
    # each with the prefix it had, and the session unchanged.
    assert pack(book, 10, "abc") == [("a", True, []), ("b", True, ["a"]), ("c", True, ["a", "b"])]
    assert store["user:u1"]["n_events"] == 4


def test_emitted_claims_are_whole_records() -> None:
    """emitted_upto names the last clicks record whose events all reached the examples topic:
    the events of that record are emitted, those of the next one are not."""
    store: dict[str, dict] = {}
    book = SessionBook(store, SessionWindow(gap=GAP))
    pack(book, 10, "ab")
    pack(book, 11, "cd")
    book.emitted_upto[0] = 10
    assert pack(book, 10, "ab") == [("a", True, []), ("b", True, ["a"])]
    assert pack(book, 11, "cd") == [("c", False, ["a", "b"]), ("d", False, ["a", "b", "c"])]
    # A table that lost record 11 (a fresh book over the changelog of record 10 only) applies
    # its events again, flagged when the claim covers them.
    lost = SessionBook({}, SessionWindow(gap=GAP))
    pack(lost, 10, "ab")
    lost.emitted_upto[0] = 11
    assert pack(lost, 11, "cd") == [("c", True, ["a", "b"]), ("d", True, ["a", "b", "c"])]
    assert lost.store["user:u1"]["n_events"] == 4


def test_a_resend_at_the_sessions_last_time_is_found_among_the_events_at_that_time() -> None:
    """Five events at the session's last time after one before it: a producer's resend (a new
    position) of any of them, or of the earlier one, is flagged with its original prefix."""
    store: dict[str, dict] = {}
    book = SessionBook(store, SessionWindow(gap=GAP))
    book.process(ev("z", 999.0), 0, 0)
    pack(book, 1, "abcde")
    assert store["user:u1"]["at_last"] == 5
    assert pack(book, 2, "b") == [("b", True, ["z", "a"])]
    assert pack(book, 3, "z", ts=999.0) == [("z", True, [])]
    assert pack(book, 4, "f") == [("f", False, ["z", "a", "b", "c", "d", "e"])]
    assert store["user:u1"]["n_events"] == 7


def test_a_state_from_before_the_counter_is_read_whole() -> None:
    """A session written by an older onevec (no at_last) is searched through all its kept
    events, and starts counting at its next later event."""
    store: dict[str, dict] = {}
    book = SessionBook(store, SessionWindow(gap=GAP))
    pack(book, 1, "abc")
    del store["user:u1"]["at_last"]
    book.forget_partition(0)
    assert pack(book, 2, "a") == [("a", True, [])]
    assert pack(book, 3, "d") == [("d", False, ["a", "b", "c"])]
    assert "at_last" not in store["user:u1"]  # at the same time: still not known
    book.process(ev("e", 1001.0), 0, 4)
    assert store["user:u1"]["at_last"] == 1


def test_a_resend_of_a_session_a_gap_closed_is_found_in_its_snapshot() -> None:
    store: dict[str, dict] = {}
    book = SessionBook(store, SessionWindow(gap=GAP))
    pack(book, 1, "ab")
    pack(book, 2, "c", ts=2000.0)  # the gap closes a, b's session
    assert store["user:u1"]["previous"]["last"] == 1000.0
    resent, _ = book.process(ev("b", 1000.0), 0, 3)
    assert resent.duplicate and resent.session_id == "user:u1@1000" and resent.prefix == ["a"]
    fresh, _ = book.process(ev("d", 2000.0), 0, 4)
    assert not fresh.duplicate and fresh.prefix == ["c"]
