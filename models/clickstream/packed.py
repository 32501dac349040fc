"""Packed click records: many events of one clicks partition in one Kafka record.

A packed record carries the header ``onevec-pack: jsonl`` and holds JSON lines: one event per
line, each line exactly what a single-event record would hold (docs/events.md). Producers pack
the events whose keys hash to the same partition, so a session's events still share one
partition, in order. Any record without the header is one event, as before: both kinds mix on
one topic.

Each line is validated on its own: a bad line is dead-lettered with its index and the rest of
the record is kept. A line is numbered from 0 in the record, blank lines included (they are
skipped), so an event's number does not depend on what else the record holds.

An event's *input position* orders the events of a partition: a single-event record's offset,
and for the event on line ``index`` of a packed record ``offset + index / PACK_SLOTS``. It is
unique and grows along the partition, it is the same at every redelivery, and it is exact in
a float up to offset 2**37. A record stays what the redelivery rules count (the session book's
``redelivery_window``) and what the examples topic's header claims (whole records).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence

__all__ = [
    "PACK_FORMAT",
    "PACK_HEADER",
    "PACK_SLOTS",
    "input_position",
    "pack_format",
    "pack_lines",
    "unpack",
]

PACK_HEADER = "onevec-pack"
PACK_FORMAT = b"jsonl"  # the header's value: JSON lines, one event per line
PACK_SLOTS = 1 << 16  # the most lines a packed record may hold; positions step by 1 / PACK_SLOTS

Headers = Sequence[tuple[str, bytes]] | Mapping[str, bytes] | None


def pack_format(headers: Headers) -> bytes | None:
    """The value of a record's pack header; None for a single-event record."""
    if not headers:
        return None
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in pairs:
        if name == PACK_HEADER:
            return bytes(value)
    return None


def unpack(value: bytes) -> Iterator[tuple[int, bytes]]:
    """The non-blank lines of a packed record's value, each with its line number."""
    for index, line in enumerate(value.split(b"\n")):
        if line.strip():
            yield index, line


def input_position(offset: int, index: int) -> float:
    """The input position of the event on line ``index`` of the record at ``offset`` (an int,
    the offset itself, for line 0)."""
    return offset + index / PACK_SLOTS if index else offset


def pack_lines(lines: Iterable[bytes], max_bytes: int) -> list[bytes]:
    """Record values of JSON lines, each at most ``max_bytes`` (a longer line gets one of its
    own) and at most ``PACK_SLOTS`` lines. The lines must hold no newline (compact JSON)."""
    packs: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for line in lines:
        if current and (size + len(line) > max_bytes or len(current) == PACK_SLOTS):
            packs.append(b"\n".join(current))
            current, size = [], 0
        current.append(line)
        size += len(line) + 1
    if current:
        packs.append(b"\n".join(current))
    return packs
