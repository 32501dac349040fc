"""ChangelogBatchStore: what a micro-batch of session updates sends to the changelog.

The table here is a stand-in that only records ``send_changelog`` calls (Faust sends them from
inside a running app); the real changelogged table is exercised end to end by
tests/streams/test_restart.py, where a restarted worker continues every session from it.
"""

from __future__ import annotations

from typing import Any

from onevec.models.clickstream.events import Event, EventType
from onevec.models.clickstream.sessions import SessionBook, SessionWindow
from onevec.streams.kafka.session_table import ChangelogBatchStore


class RecordingTable:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.sent: list[tuple[int, str, Any, str | None]] = []

    def send_changelog(
        self, partition: int, key: str, value: Any, value_serializer: str | None = None
    ) -> None:
        self.sent.append((partition, key, value, value_serializer))


def click(user: str, item: str, ts: float) -> Event:
    return Event(user_id=user, item_id=item, event_type=EventType.CLICK, timestamp=ts)


def test_one_changelog_record_per_changed_session_per_flush() -> None:
    table = RecordingTable()
    store = ChangelogBatchStore(table)
    book = SessionBook(store, SessionWindow(gap=100.0))
    for offset, (user, item, ts) in enumerate([("a", "x", 1e9), ("a", "y", 1e9 + 1), ("b", "z", 1e9 + 2)]):
        book.process(click(user, item, ts), partition=3, offset=offset)
    assert store.pending == 2 and table.sent == []  # nothing sent before the flush
    assert store.flush() == 2
    sent = {key: (partition, value) for partition, key, value, _ in table.sent}
    assert set(sent) == {"user:a", "user:b"}
    assert sent["user:a"][0] == 3 and sent["user:a"][1]["items"] == ["x", "y"]  # the final state
    assert store.flush() == 0  # drained


def test_a_deleted_session_sends_a_tombstone_to_its_partition() -> None:
    table = RecordingTable()
    store = ChangelogBatchStore(table)
    store["k"] = {"partition": 2, "items": []}
    store.flush()
    del store["k"]
    store.flush()
    assert table.sent[-1] == (2, "k", None, "raw")  # a Kafka tombstone, not the JSON "null"
    assert "k" not in table.data
