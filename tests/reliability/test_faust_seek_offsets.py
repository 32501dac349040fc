"""Corrections 4 and 6 of onevec.streams.kafka.faust_fixes, replayed step by step on the real
classes. 4: the read offset a record fetched before a seek leaves behind (records handed out
before a seek, the seek, the record in flight setting its read offset, then the records fetched
again from the sought offset). 6: a fetch position that jumps over records never handed on."""

from __future__ import annotations

import asyncio
import inspect
from collections import defaultdict
from collections.abc import MutableMapping
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from aiokafka.consumer.fetcher import Fetcher
from faust.transport.consumer import Consumer
from faust.types import TP

from onevec.streams.kafka import faust_fixes
from onevec.streams.kafka.faust_fixes import apply_faust_fixes

PARTITION = TP("clicks", 2)
COMMITTED = 1044


class StubFetcher:
    """What aiokafka's ``Fetcher.seek_to`` touches."""

    def __init__(self) -> None:
        self._subscriptions = SimpleNamespace(seek=lambda tp, offset: None)
        self._records: dict[Any, Any] = {}
        self._wait_consume_future = None

    def _notify(self, future: Any) -> None:
        pass


def record(offset: int) -> SimpleNamespace:
    return SimpleNamespace(offset=offset)


def fetched(fetcher: StubFetcher, offsets: range) -> list[SimpleNamespace]:
    """A batch of records as the corrected fetch hands it to Faust's fetch loop."""
    return faust_fixes._UntilSought([record(o) for o in offsets], faust_fixes._seek_state(fetcher), PARTITION)


def drain(read_offsets: MutableMapping[Any, int | None], records: Any) -> list[int]:
    """Faust's fetch loop on one partition: each record at or above the read offset is handed
    on and its offset becomes the read offset; a record below it is dropped. Returns the
    dropped offsets."""
    dropped = []
    for fetched in records:
        read = read_offsets[PARTITION]
        if read is None or fetched.offset >= read:
            read_offsets[PARTITION] = fetched.offset
        else:
            dropped.append(fetched.offset)
    return dropped


def restart_sequence(read_offsets: MutableMapping[Any, int | None], fetcher: StubFetcher) -> list[int]:
    """Records 1044-1086 fetched before the post-recovery seek; 1044-1085 handed out, 1086 in
    flight when the seek lands; then the records fetched again from 1044."""
    before = fetched(fetcher, range(COMMITTED, 1090))
    handed_out = iter(before)
    drain(read_offsets, [next(handed_out) for _ in range(COMMITTED, 1086)])
    in_flight = next(handed_out)
    Fetcher.seek_to(fetcher, PARTITION, COMMITTED)  # seek_to_committed, on the consumer thread
    read_offsets.update({PARTITION: COMMITTED})  # then Consumer.perform_seek
    read_offsets[PARTITION] = in_flight.offset  # the loop finishes the record in flight
    assert list(handed_out) == []  # the rest of the old batch is not handed out
    again = fetched(fetcher, range(COMMITTED, 1100))
    return drain(read_offsets, again)


def bind(read_offsets: Any, fetcher: StubFetcher) -> None:
    """What the corrected fetch does the first time it fetches."""
    state = faust_fixes._seek_state(fetcher)
    read_offsets.state, state.read_offsets = state, read_offsets


@pytest.fixture
def consumer_read_offsets() -> MutableMapping[Any, int | None]:
    apply_faust_fixes()
    app = faust.App("seek-offsets", broker="kafka://127.0.0.1:1", web_enabled=False)
    return app.consumer._read_offset


def test_records_fetched_again_after_a_seek_are_not_dropped(consumer_read_offsets) -> None:
    fetcher = StubFetcher()
    bind(consumer_read_offsets, fetcher)
    assert restart_sequence(consumer_read_offsets, fetcher) == []
    assert consumer_read_offsets[PARTITION] == 1099


def test_records_fetched_again_before_faust_sets_the_read_offset_are_not_dropped(
    consumer_read_offsets,
) -> None:
    """Faust sets the read offsets once every partition is sought; records of a partition
    sought first can be fetched again and handed out before that."""
    fetcher = StubFetcher()
    bind(consumer_read_offsets, fetcher)
    drain(consumer_read_offsets, fetched(fetcher, range(COMMITTED, 1086)))
    Fetcher.seek_to(fetcher, PARTITION, COMMITTED)
    assert drain(consumer_read_offsets, fetched(fetcher, range(COMMITTED, 1100))) == []


def test_without_the_correction_they_are_dropped() -> None:
    apply_faust_fixes()
    dropped = restart_sequence(defaultdict(lambda: None), StubFetcher())
    assert dropped == list(range(COMMITTED, 1086))


def test_a_seek_that_writes_its_offset_directly_still_lands(consumer_read_offsets) -> None:
    fetcher = StubFetcher()
    bind(consumer_read_offsets, fetcher)
    handed_out = iter(fetched(fetcher, range(500, 501)))
    drain(consumer_read_offsets, [next(handed_out)])
    Fetcher.seek_to(fetcher, PARTITION, 120)  # Consumer.seek and the recovery's seeks
    consumer_read_offsets[PARTITION] = 120
    assert consumer_read_offsets[PARTITION] == 120
    consumer_read_offsets[PARTITION] = None
    assert consumer_read_offsets[PARTITION] is None


def test_faust_still_works_as_the_correction_assumes() -> None:
    """Fails when faust-streaming changes the code the correction is written against."""
    drain_source = inspect.getsource(Consumer._drain_messages)
    assert "set_read_offset = self._read_offset.__setitem__" in drain_source
    assert "if r_offset is None or offset >= r_offset:" in drain_source
    assert "read_offset.update(" in inspect.getsource(Consumer.perform_seek)
    # The commit's tolerance of a one-offset hole at the head of a partition.
    assert "if min(acked) - committed_offset > 1:" in inspect.getsource(faust_fixes._new_offset)


class StubThread:
    """What correction 6 reaches through the consumer thread: its aiokafka consumer, whose
    seek goes through aiokafka's (corrected) ``Fetcher.seek_to``, and ``call_thread``."""

    def __init__(self, fetcher: StubFetcher) -> None:
        self._fetcher = fetcher

    def _ensure_consumer(self) -> Any:
        return self

    def seek(self, tp: Any, offset: int) -> None:
        Fetcher.seek_to(self._fetcher, tp, offset)

    async def call_thread(self, fun: Any, *args: Any) -> Any:
        return await fun(*args)


def test_records_passed_over_are_fetched_again(monkeypatch) -> None:
    """Correction 6: the fetch position jumps from 1050 to 1600 without a seek the fetcher saw
    (as in the chaos soak); the record at 1600 is not handed on, the partition is sought back
    to 1050 and the records fetched again are; a jump the broker repeats right after that
    seek (it has no records there) is accepted, counted and logged."""
    apply_faust_fixes()
    app = faust.App("seek-jumps", broker="kafka://127.0.0.1:1", web_enabled=False)
    consumer = app.consumer
    fetcher = StubFetcher()
    consumer._thread = StubThread(fetcher)
    Fetcher.seek_to(fetcher, PARTITION, COMMITTED)  # the post-recovery seek
    batches = iter(
        [
            range(COMMITTED, 1050),
            range(1600, 1610),  # the jump: 1050-1599 were never handed on
            range(1050, 1700),  # after the seek back
            range(1700, 1701),
            range(2000, 2001),  # a second jump, refetched ...
            range(2000, 2001),  # ... and the broker still has nothing at 1701-1999
        ]
    )

    async def batch(self: Any, timeout: float) -> Any:
        for offset in fetched(fetcher, next(batches)):
            yield PARTITION, offset

    async def handed_on() -> list[int]:
        offsets = []
        for _ in range(6):
            offsets += [
                message.offset async for _, message in faust_fixes._getmany_without_jumps(consumer, 1.0)
            ]
        return offsets

    monkeypatch.setattr(faust_fixes, "_getmany", batch)
    refetched = faust_fixes.INPUT_OFFSET_GAPS.labels("refetched")._value.get()
    accepted = faust_fixes.INPUT_OFFSET_GAPS.labels("accepted")._value.get()
    offsets = asyncio.run(handed_on())
    assert offsets == [*range(COMMITTED, 1701), 2000]
    assert faust_fixes.INPUT_OFFSET_GAPS.labels("refetched")._value.get() - refetched == 2
    assert faust_fixes.INPUT_OFFSET_GAPS.labels("accepted")._value.get() - accepted == 1


def test_the_commit_waits_for_the_record_at_the_committed_offset() -> None:
    """Correction 7: the record at the committed offset (450) is not acknowledged, the next two
    are; Faust's rule would commit 453 past it, the corrected one holds the commit back until
    450 itself is acknowledged."""
    apply_faust_fixes()
    app = faust.App("head-hole", broker="kafka://127.0.0.1:1", web_enabled=False)
    consumer = app.consumer
    consumer._committed_offset[PARTITION] = 450
    consumer._acked[PARTITION] = [451, 452]
    assert faust_fixes._new_offset(consumer, PARTITION) == 453  # Faust's own rule skips 450
    assert consumer._new_offset(PARTITION) is None
    consumer._acked[PARTITION] = [450, 451, 452]
    assert consumer._new_offset(PARTITION) == 453
