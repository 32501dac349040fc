"""ChangelogBatchStore: what a micro-batch of session updates sends to the changelog.

The table here is a stand-in that records ``send_changelog`` calls and answers each with a
future the test resolves, as the broker's acknowledgement would (Faust sends them from inside a
running app); the real changelogged table is exercised end to end by
tests/streams/test_restart.py, where a restarted worker continues every session from it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from onevec.models.clickstream.events import Event, EventType
from onevec.models.clickstream.sessions import SessionBook, SessionWindow
from onevec.streams.kafka.session_table import ChangelogBatchStore


class ChangelogTopic:
    def get_topic_name(self) -> str:
        return "onevec-sessions-changelog"


class RecordingTable:
    """Acknowledges every record at once, except the first ``fail`` ones, which fail."""

    def __init__(self, fail: int = 0) -> None:
        self.data: dict[str, Any] = {}
        self.sent: list[tuple[int, str, Any, str | None]] = []
        self.acks: list[asyncio.Future[None]] = []
        self.fail = fail
        self.hold = False  # leave the acknowledgements for the test to give
        self.changelog_topic = ChangelogTopic()

    def send_changelog(
        self, partition: int, key: str, value: Any, value_serializer: str | None = None
    ) -> asyncio.Future[None]:
        self.sent.append((partition, key, value, value_serializer))
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.acks.append(ack)
        if self.fail > 0:
            self.fail -= 1
            ack.set_exception(ConnectionError("broker gone"))
        elif not self.hold:
            ack.set_result(None)
        return ack


def click(user: str, item: str, ts: float) -> Event:
    return Event(user_id=user, item_id=item, event_type=EventType.CLICK, timestamp=ts)


def test_one_changelog_record_per_changed_session_per_flush() -> None:
    table = RecordingTable()
    store = ChangelogBatchStore(table)
    book = SessionBook(store, SessionWindow(gap=100.0))
    for offset, (user, item, ts) in enumerate([("a", "x", 1e9), ("a", "y", 1e9 + 1), ("b", "z", 1e9 + 2)]):
        book.process(click(user, item, ts), partition=3, offset=offset)
    assert store.pending == 2 and table.sent == []  # nothing sent before the flush
    assert asyncio.run(store.flush()) == 2
    sent = {key: (partition, value) for partition, key, value, _ in table.sent}
    assert set(sent) == {"user:a", "user:b"}
    assert sent["user:a"][0] == 3 and sent["user:a"][1]["items"] == ["x", "y"]  # the final state
    assert asyncio.run(store.flush()) == 0  # drained


def test_a_deleted_session_sends_a_tombstone_to_its_partition() -> None:
    table = RecordingTable()
    store = ChangelogBatchStore(table)
    store["k"] = {"partition": 2, "items": []}
    asyncio.run(store.flush())
    del store["k"]
    asyncio.run(store.flush())
    assert table.sent[-1] == (2, "k", None, "raw")  # a Kafka tombstone, not the JSON "null"
    assert "k" not in table.data


def test_flush_returns_only_once_the_broker_acknowledged_every_record() -> None:
    table = RecordingTable()
    table.hold = True
    store = ChangelogBatchStore(table)
    store["a"] = {"partition": 0, "items": ["x"]}
    store["b"] = {"partition": 1, "items": ["y"]}

    async def scenario() -> list[bool]:
        flush = asyncio.ensure_future(store.flush())
        done = []
        await asyncio.sleep(0.01)  # the flush hands both records over
        assert len(table.acks) == 2
        table.acks[0].set_result(None)
        await asyncio.sleep(0.01)
        done.append(flush.done())  # one acknowledgement is not enough
        table.acks[1].set_result(None)
        await asyncio.wait_for(flush, 1)
        done.append(flush.done())
        return done

    assert asyncio.run(scenario()) == [False, True]


def test_a_record_the_broker_did_not_acknowledge_is_sent_again_with_the_state_as_it_is() -> None:
    table = RecordingTable(fail=1)
    store = ChangelogBatchStore(table)
    store["a"] = {"partition": 0, "items": ["x"]}
    store["b"] = {"partition": 1, "items": ["y"]}
    assert asyncio.run(store.flush()) == 2
    keys = [key for _, key, _, _ in table.sent]
    assert keys == ["a", "b", "a"]  # the failed one again, the acknowledged one not
    assert store.pending == 0
