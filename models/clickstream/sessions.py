"""Session windows over click events, driven by event time.

Pure logic with no Kafka in it: the Faust agent hands each accepted event to a
:class:`SessionBook` whose ``store`` is the changelogged Faust table, and sends what it returns.
The tests drive the same class with a plain dict.

Rules (all in event time, so a fast replay closes sessions exactly as live traffic would):

* A session is keyed by the event's ``session_id``, or by its user when the id is absent.
* An event more than ``gap`` seconds after the session's last event closes the session
  (reason ``gap``) and opens a new one.
* Each partition keeps a watermark (the latest event time seen on it). After every event, the
  sessions of that partition idle for more than ``gap`` before the watermark are closed
  (reason ``idle``).
* Out-of-order events join the open session in arrival order; they never move its last time
  backwards. An event already in the session (same item, type and time) is a duplicate: the
  session is unchanged and its example is sent again, flagged, so at-least-once redelivery
  after a crash loses nothing and the learner can skip it.
* State is bounded: a session keeps its last ``max_items`` items and event fingerprints, and
  a partition keeps at most ``max_open`` sessions (the longest idle is closed, ``evicted``).

Input positions. The ``offset`` an event is processed with is its input position on its
partition (onevec.models.clickstream.packed): the offset of its record, and for the events of
a packed record a fraction above it (``offset + line / PACK_SLOTS``), so that every event has
its own position, the same at every redelivery.

Redelivery. The table's changelog can run ahead of the committed input offsets: after a
kill -9, events are delivered again to a table that already holds their effects, including
the closing of their session. So a key remembers its last closed session (items and event
fingerprints): when an idle or evicted session closes, the key keeps a tombstone holding it
until ``redelivery_window`` more records of the partition have gone by (more than Faust ever
leaves uncommitted), and a session opened after a gap keeps its predecessor. A redelivered
event is then recognised and its example re-sent, flagged, with its original prefix.

What was emitted. The changelog and the examples are two writes: a crash between them leaves
the table holding events whose examples never reached the topic (flagged on redelivery, they
would never be learned), or the reverse (sent again unflagged, learned twice). So the caller
tells the book, per partition, the highest input offset (record) all of whose events have
their examples on the examples topic (``emitted_upto``, read back from the topic's last record
after an assignment). A redelivered event of a record at or below it is flagged even when the
table lost it (and applied again); one above it whose example never went out is sent
unflagged, at its position (its prefix then holds only the items the table still keeps,
which is why the agent writes a batch's examples before its changelog: the table is then never
ahead of the examples, and every unflagged example carries its whole prefix). An event the
table holds under another input position (a producer's resend) is flagged as always.
"""

from __future__ import annotations

import hashlib
import heapq
from collections import deque
from collections.abc import MutableMapping
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Literal

from onevec.models.clickstream.events import Event, session_key
from onevec.models.clickstream.examples import ExampleRecord

__all__ = ["ClosedSession", "Example", "SessionBook", "SessionWindow", "session_id_for"]

CloseReason = Literal["gap", "idle", "evicted"]


def session_id_for(key: str, explicit: bool, start: float) -> str:
    # An explicit id names the session itself; a session derived from a user's idle gaps is
    # named by the user and its start time so that each derived session gets its own id.
    return key if explicit else f"{key}@{int(start)}"


def fingerprint(event: Event) -> str:
    raw = f"{event.item_id}\x1f{event.event_type}\x1f{event.timestamp!r}"
    return hashlib.blake2b(raw.encode(), digest_size=8).hexdigest()


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs 4x, once per event
class Example:
    """A training example: the session prefix (oldest first) and the item that came next."""

    event_id: str
    session_id: str
    user_id: str
    item_id: str
    event_type: str
    timestamp: float
    prefix: list[str]
    duplicate: bool

    def to_dict(self) -> ExampleRecord:
        return {
            "event_id": self.event_id,
            "session_id": self.session_id,
            "user_id": self.user_id,
            "item_id": self.item_id,
            "event_type": self.event_type,
            "timestamp": self.timestamp,
            "prefix": self.prefix,
            "duplicate": self.duplicate,
        }


@dataclass(frozen=True, slots=True)
class ClosedSession:
    session_id: str
    user_id: str
    start: float
    end: float
    n_events: int
    items: list[str]
    counts: dict[str, int]
    reason: CloseReason

    def to_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "user_id": self.user_id,
            "start": self.start,
            "end": self.end,
            "n_events": self.n_events,
            "items": self.items,
            "counts": self.counts,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class SessionWindow:
    """The window parameters."""

    gap: float = 1800.0
    max_items: int = 50
    max_open: int = 200_000
    redelivery_window: int = 50_000


def _new_state(event: Event, partition: int, previous: dict[str, Any] | None) -> dict[str, Any]:
    key = session_key(event)
    explicit = event.session_id is not None
    return {
        "session_id": session_id_for(key, explicit, event.timestamp),
        "user_id": event.user_id,
        "partition": partition,
        "start": event.timestamp,
        "last": event.timestamp,
        "n_events": 0,
        "items": [],
        "counts": {},
        "seen": [],  # [fingerprint, position, input offset] of the last max_items events
        "at_last": 0,  # events appended to seen since the first one at the time "last"
        "first_offset": -1,  # input offset of the first event applied
        "offset": -1,  # input offset of the last event applied
        "previous": previous,  # the key's last closed session, to recognise its redeliveries
    }


def _snapshot(state: dict[str, Any]) -> dict[str, Any]:
    fields = (
        "session_id",
        "user_id",
        "n_events",
        "items",
        "seen",
        "first_offset",
        "offset",
        "last",
        "at_last",
    )
    return {name: state[name] for name in fields if name in state}


def _closed(state: dict[str, Any], reason: CloseReason) -> ClosedSession:
    return ClosedSession(
        session_id=state["session_id"],
        user_id=state["user_id"],
        start=state["start"],
        end=state["last"],
        n_events=state["n_events"],
        items=list(state["items"]),
        counts=dict(state["counts"]),
        reason=reason,
    )


def _prefix_at(session: dict[str, Any], position: int) -> list[str]:
    """The items before absolute event position ``position`` that are still kept."""
    items: list[str] = session["items"]
    first_kept = session["n_events"] - len(items)
    return items[: max(0, position - first_kept)]


def _already_applied(
    session: dict[str, Any] | None, mark: str, offset: float | None, timestamp: float | None = None
) -> tuple[bool, int | None, bool]:
    """Whether the event is already in ``session``, its position if still kept, and whether
    its input offset says so (it was read before, not resent by its producer).

    Two tests: the fingerprint (a producer that sent the same event twice), and the input
    offset (a redelivery after a crash, which can reach further back than the kept
    fingerprints: all events of a key share one partition, whose offsets only grow).
    ``timestamp`` (the event's time) narrows the fingerprints to read: none when the event is
    later than the session's last event (none applied to it can share its fingerprint, and an
    event in time order is almost always later), only the last ``at_last`` when it is at that
    time (every event at that time came after the first one at it). States written before these
    fields existed are read whole.
    """
    if session is None:
        return False, None, False
    # The session's own span of input offsets (a state from before first_offset spans from 0):
    # an event of its key read in that span was applied to it, not to a session it followed.
    by_offset = offset is not None and session.get("first_offset", -1) <= offset <= session.get("offset", -1)
    seen: list[list[Any]] = session["seen"]
    last = session.get("last")
    if timestamp is not None and last is not None:
        if timestamp > last:
            return by_offset, None, by_offset
        at_last = session.get("at_last", 0) if timestamp == last else 0
        if 0 < at_last < len(seen):
            seen = seen[-at_last:]
    # A C-level membership test first: almost every event is new.
    entry = next((e for e in seen if e[0] == mark), None) if mark in map(_FIRST, seen) else None
    if entry is None:
        return by_offset, None, by_offset
    # Kept with the offset it was read at (older states keep none): another offset is a resend.
    reread = entry[2] == offset if len(entry) > 2 else by_offset
    return True, entry[1], reread


_FIRST = itemgetter(0)


def _applied_flag(reread: bool, emitted: bool | None) -> bool:
    """The flag of an event its session already holds: a duplicate, unless it was read before
    and its example is known never to have gone out."""
    return not (reread and emitted is False)


def _is_open(state: dict[str, Any] | None) -> bool:
    return state is not None and not state.get("tombstone", False)


def _current(state: dict[str, Any] | None, last: float) -> bool:
    """Whether a heap entry of a key's last event time is that of its open session."""
    return state is not None and not state.get("tombstone", False) and state["last"] == last


class SessionBook:
    """Applies events to session states kept in ``store`` (a dict or a Faust table).

    Holds in-memory indexes per partition (a heap of last-event times for expiry, a queue of
    tombstones for purging) so nothing scans the table per event; they are rebuilt from the
    store the first time a partition is seen, which is what happens after a restart restores
    the table from its changelog.
    """

    def __init__(self, store: MutableMapping[str, dict[str, Any]], window: SessionWindow) -> None:
        self.store = store
        self.window = window
        self._watermarks: dict[int, float] = {}
        self._heaps: dict[int, list[tuple[float, str]]] = {}
        self._tombstones: dict[int, deque[tuple[float, str]]] = {}
        self._open: dict[int, int] = {}
        self.duplicates = 0
        # Per partition, the highest input offset (record) whose examples were all emitted (see
        # the module's docstring); a partition without an entry keeps the table-only rules.
        self.emitted_upto: dict[int, int] = {}

    def open_sessions(self) -> int:
        return sum(self._open.values())

    def forget_partition(self, partition: int) -> None:
        """Drop the in-memory indexes of a partition this worker no longer owns."""
        for index in (self._heaps, self._tombstones, self._open, self._watermarks, self.emitted_upto):
            index.pop(partition, None)

    def process(
        self, event: Event, partition: int = 0, offset: float | None = None
    ) -> tuple[Example, list[ClosedSession]]:
        """Apply one accepted event (read at input ``offset``, when known); return its example
        and the sessions it closed."""
        if partition not in self._heaps:
            self._load_partition(partition)
        closed: list[ClosedSession] = []
        key = session_key(event)
        mark = fingerprint(event)
        state = self.store.get(key)
        current = state if _is_open(state) else None
        previous = state.get("previous") if state is not None else None

        emitted = self._emitted(partition, offset)
        in_current, position, reread = _already_applied(current, mark, offset, event.timestamp)
        in_previous, previous_position, reread_previous = (
            (False, None, False)
            if previous is None
            else _already_applied(previous, mark, offset, event.timestamp)
        )
        if in_previous and not in_current:
            flag = _applied_flag(reread_previous, emitted)
            return self._example(previous, event, mark, previous_position, duplicate=flag), closed  # type: ignore[arg-type]
        # An event already applied is no later than its session's last event: no gap closes it.
        if current is not None and event.timestamp - current["last"] > self.window.gap:
            closed.append(self._close(partition, key, "gap", offset or 0))
            previous, current = _snapshot(current), None
        fresh = current is None
        if current is None:
            closed.extend(self._evict_if_full(partition, offset or 0))
            current = _new_state(event, partition, previous)
            self._open[partition] += 1
        last = current["last"]

        # An event the table holds because it was read before (not a producer's resend) but
        # whose example never went out is sent now, unflagged; one the table lost but whose
        # example went out is applied again, flagged.
        duplicate = _applied_flag(reread, emitted) if in_current else bool(emitted)
        example = self._apply(current, event, mark, offset, in_current, position, duplicate)
        self.store[key] = current  # reassign: a Faust table only changelogs on __setitem__
        if fresh or current["last"] != last:  # otherwise the entry pushed before is still current
            heapq.heappush(self._heaps[partition], (current["last"], key))

        watermark = max(self._watermarks.get(partition, event.timestamp), event.timestamp)
        self._watermarks[partition] = watermark
        position_in_input = offset if offset is not None else 0
        closed.extend(self._expire(partition, watermark - self.window.gap, position_in_input))
        tombstones = self._tombstones[partition]
        if tombstones and tombstones[0][0] < position_in_input - self.window.redelivery_window:
            self._purge_tombstones(partition, position_in_input)
        if len(self._heaps[partition]) > 4 * self._open[partition] + 1024:
            self._compact(partition)
        return example, closed

    def _emitted(self, partition: int, offset: float | None) -> bool | None:
        """Whether the example of the event at input position ``offset`` was emitted (None: not
        known). A packed record's events sit between its offset and the next one."""
        upto = self.emitted_upto.get(partition)
        return None if upto is None or offset is None else offset < upto + 1

    def _apply(
        self,
        state: dict[str, Any],
        event: Event,
        mark: str,
        offset: float | None,
        applied: bool,
        position: int | None,
        duplicate: bool,
    ) -> Example:
        """Apply ``event`` to ``state`` unless ``applied`` already (at ``position``, if kept);
        its example is flagged with ``duplicate``."""
        if applied:
            return self._example(state, event, mark, position, duplicate=duplicate)
        example = self._example(state, event, mark, state["n_events"], duplicate=duplicate)
        # In place: the lists belong to this state alone (prefixes and closed sessions copy).
        seen, items = state["seen"], state["items"]
        seen.append([mark, state["n_events"], offset])
        items.append(event.item_id)
        excess = len(items) - self.window.max_items
        if excess > 0:
            del items[:excess]
        excess = len(seen) - self.window.max_items
        if excess > 0:
            del seen[:excess]
        state["n_events"] += 1
        counts = state["counts"]
        kind = str(event.event_type)  # a StrEnum's value; Enum.value is a slow descriptor
        counts[kind] = counts.get(kind, 0) + 1
        if event.timestamp > state["last"]:
            state["last"], state["at_last"] = event.timestamp, 1
        elif "at_last" in state:  # an older state starts counting at its next later event
            state["at_last"] += 1
        if offset is not None:
            if state["n_events"] == 1:
                state["first_offset"] = offset
            state["offset"] = offset
        return example

    def _example(
        self,
        session: dict[str, Any],
        event: Event,
        mark: str,
        position: int | None,
        duplicate: bool,
    ) -> Example:
        """The example of an event at ``position`` in ``session``; a redelivered event whose
        position is no longer kept gets an empty prefix."""
        if duplicate:
            self.duplicates += 1
        return Example(
            event_id=mark,
            session_id=session["session_id"],
            user_id=event.user_id,
            item_id=event.item_id,
            event_type=str(event.event_type),
            timestamp=event.timestamp,
            prefix=_prefix_at(session, position) if position is not None else [],
            duplicate=duplicate,
        )

    def _load_partition(self, partition: int) -> None:
        heap, tombstones = [], []
        for key, state in self.store.items():
            if state.get("partition") != partition:
                continue
            if state.get("tombstone"):
                tombstones.append((state["closed_offset"], key))
            else:
                heap.append((state["last"], key))
        heapq.heapify(heap)
        self._heaps[partition] = heap
        self._tombstones[partition] = deque(sorted(tombstones))
        self._open[partition] = len(heap)

    def _close(self, partition: int, key: str, reason: CloseReason, offset: float) -> ClosedSession:
        """Close the open session of ``key``; idle and evicted ones leave a tombstone."""
        state = self.store[key]
        self._open[partition] -= 1
        if reason == "gap":
            del self.store[key]  # the caller opens the successor, which keeps the snapshot
        else:
            self.store[key] = {
                "tombstone": True,
                "partition": partition,
                "closed_offset": offset,
                "previous": _snapshot(state),
            }
            self._tombstones[partition].append((offset, key))
        return _closed(state, reason)

    def _oldest(self, heap: list[tuple[float, str]]) -> tuple[float, str] | None:
        """The heap's oldest open entry; entries older than the stored state are dropped."""
        while heap:
            last, key = heap[0]
            if _current(self.store.get(key), last):
                return last, key
            heapq.heappop(heap)
        return None

    def _expire(self, partition: int, cutoff: float, offset: float) -> list[ClosedSession]:
        heap = self._heaps[partition]
        closed = []
        # The first test alone is almost always false: no entry, stale or not, is that old.
        while (
            heap and heap[0][0] < cutoff and (entry := self._oldest(heap)) is not None and entry[0] < cutoff
        ):
            heapq.heappop(heap)
            closed.append(self._close(partition, entry[1], "idle", offset))
        return closed

    def _evict_if_full(self, partition: int, offset: float) -> list[ClosedSession]:
        heap = self._heaps[partition]
        closed = []
        while self._open[partition] >= self.window.max_open:
            entry = self._oldest(heap)
            if entry is None:
                break
            heapq.heappop(heap)
            closed.append(self._close(partition, entry[1], "evicted", offset))
        return closed

    def _purge_tombstones(self, partition: int, offset: float) -> None:
        queue = self._tombstones[partition]
        while queue and queue[0][0] < offset - self.window.redelivery_window:
            closed_offset, key = queue.popleft()
            state = self.store.get(key)
            if state is not None and state.get("tombstone") and state["closed_offset"] == closed_offset:
                del self.store[key]

    def _compact(self, partition: int) -> None:
        # Every later event pushes a fresh heap entry; the stale ones are dropped once they
        # dominate. Reads only the heap's keys: a scan of the whole store (every partition's
        # sessions and tombstones, through the Faust table) cost more than the rest of the book.
        heap = self._heaps[partition]
        get = self.store.get
        heap[:] = [entry for entry in set(heap) if _current(get(entry[1]), entry[0])]
        heapq.heapify(heap)
