"""The sessionize agent's own check that every record of its input partitions reaches it.

Between the broker and the agent, Faust passes records through a fetch loop, a flow control
and per-stream queues, and around seeks and rebalances each of them can drop records it fetched
(onevec.streams.kafka.faust_fixes corrects the places found so far). Seen after a graceful
restart even so (1 in about 8 looped runs of tests/streams/test_restart.py): the restarted
worker's post-recovery seek ran while records already flowed, one partition's records 452-694
never reached the agent, and two other partitions were never fetched again, with nothing in the
log. So the agent checks what it receives rather than trusting each buffer: per partition it
knows the offset the next record must have (the group's committed offset at assignment, then
one past each record taken).

- A record past that offset: the broker is asked what it holds from the missing offset. If it
  holds records there, the consumer is sought back to it, and records past it are passed over
  (acknowledged unprocessed: the commit cannot pass the missing offset, which nobody
  acknowledged) until it arrives. If not, the jump is accepted (retention removed the records,
  say).
- A record before that offset (read again after a seek back, its first copy taken in this
  assignment): passed over, since its example went out or goes out with the batch. Taken again,
  a copy read in the same batch as the first would go out unflagged: the session book flags by
  what the examples topic holds, and the batch is not out yet. (One looped kill -9 run of
  tests/reliability/test_worker_faults.py had 1 unflagged duplicate of 38; this is the path
  found that gives one, not traced in that run.)
- A partition whose records stop reaching a working agent while the broker holds more: the
  consumer is sought back to its next offset.

Each of these is logged (WARNING) and counted in ``onevec_input_offset_gaps_total``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from kafka import TopicPartition

from onevec.streams.kafka.topics import plain_consumer
from onevec.streams.settings import Settings

__all__ = ["InputWatch", "Verdict", "first_offset_from", "start_offsets"]

# How long records past a missing offset are passed over after a seek back before the seek is
# made again, and how long a lagging partition may go without a record before it is sought.
REFETCH_PATIENCE_SECONDS = 5.0
STALL_SECONDS = 10.0

Verdict = Literal["take", "pass", "gap"]


@dataclass
class _Partition:
    expected: int  # the offset the next record must have
    last_taken: float
    sought_at: float | None = None  # when it was last sought back, until the record arrives


class InputWatch:
    """Per input partition, the offset the next record must have, and what to do with one."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._partitions: dict[int, _Partition] = {}
        self._busy_since: float | None = None  # the agent's current batch started then

    def unknown(self, partitions: Iterable[int]) -> list[int]:
        """The partitions of ``partitions`` whose start offset is not known yet."""
        return sorted(p for p in set(partitions) if p not in self._partitions)

    def start(self, partition: int, offset: int) -> None:
        """The partition was assigned and its next record is at ``offset``."""
        self._partitions[partition] = _Partition(offset, self._clock())

    def forget(self, partition: int) -> None:
        self._partitions.pop(partition, None)

    def expected(self, partition: int) -> int:
        return self._partitions[partition].expected

    def verdict(self, partition: int, offset: int) -> Verdict:
        """``take`` the record at the next offset; ``pass`` over one before it (taken already
        in this assignment: Faust's seek to the committed offsets can land while records flow,
        and the copy read again, in the same batch as the first, would go out as a new example)
        and one past it while a seek back is under way; a ``gap`` otherwise. A partition
        revoked meanwhile (the agent's batch was taken before) is not checked: its next
        assignment starts afresh."""
        state = self._partitions.get(partition)
        if state is None or offset == state.expected:
            return "take"
        if offset < state.expected:
            return "pass"
        if state.sought_at is not None and self._clock() - state.sought_at < REFETCH_PATIENCE_SECONDS:
            return "pass"
        return "gap"

    def taken(self, partition: int, offset: int) -> None:
        state = self._partitions.get(partition)
        if state is not None:
            state.expected, state.last_taken, state.sought_at = offset + 1, self._clock(), None

    def sought(self, partition: int) -> None:
        """The consumer was sought back to the partition's next offset."""
        state = self._partitions.get(partition)
        if state is not None:
            state.sought_at = self._clock()

    def accept(self, partition: int, offset: int) -> None:
        """The broker holds nothing between the next offset and ``offset``: read on from there."""
        state = self._partitions.get(partition)
        if state is not None:
            state.expected, state.sought_at = offset, None

    def batch_started(self) -> None:
        self._busy_since = self._clock()

    def batch_done(self) -> None:
        self._busy_since = None

    def stalled(self, ends: dict[int, int]) -> list[int]:
        """The partitions that have records on the broker (``ends``: partition -> end offset)
        but gave the agent none for a while, although the agent is not stuck in a batch (a
        broker outage holds it in one; the partitions then wait for it, not for the fetcher)."""
        now = self._clock()
        if self._busy_since is not None and now - self._busy_since >= STALL_SECONDS:
            return []
        return sorted(
            partition
            for partition, state in self._partitions.items()
            if ends.get(partition, 0) > state.expected
            and now - max(state.last_taken, state.sought_at or 0.0) >= STALL_SECONDS
        )


def start_offsets(settings: Settings, topic: str, partitions: list[int]) -> dict[int, int]:
    """Where the group's consumer starts on each partition: its committed offset, or the first
    offset on the broker when none is committed."""
    wanted = [TopicPartition(topic, p) for p in partitions]
    consumer = plain_consumer(settings, group_id=settings.group_id)
    try:
        committed = {tp: consumer.committed(tp) for tp in wanted}
        uncommitted = [tp for tp, offset in committed.items() if not offset]
        firsts = consumer.beginning_offsets(uncommitted) if uncommitted else {}
        return {tp.partition: committed[tp] or firsts[tp] for tp in wanted}
    finally:
        consumer.close()


def first_offset_from(
    settings: Settings, topic: str, partition: int, offset: int, timeout: float = 5.0
) -> int | None:
    """The offset of the first record at or after ``offset`` on the broker; None when none is
    read within ``timeout``."""
    tp = TopicPartition(topic, partition)
    consumer = plain_consumer(settings)
    try:
        consumer.assign([tp])
        consumer.seek(tp, offset)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            records = consumer.poll(timeout_ms=300, max_records=1).get(tp)
            if records:
                return min(record.offset for record in records)
        return None
    finally:
        consumer.close()
