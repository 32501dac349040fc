"""An independent model of what the sessionizer must emit, written without its code.

Plain loops over the replayed events: per session, the items in arrival order; per partition
(kafka-python's murmur2 partitioner, the one the producer uses), the event-time watermark
that closes idle sessions.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import pandas as pd
from kafka.partitioner.default import murmur2

MAX_ITEMS = 50


def partition_of(key: str, partitions: int) -> int:
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


@dataclass
class Expected:
    examples: list[tuple[str, str, float, tuple[str, ...]]]  # session, item, ts, prefix
    closed: dict[str, tuple[int, tuple[str, ...]]]  # session -> (n_events, last items)
    open_sessions: set[str]


def expected_output(events: pd.DataFrame, partitions: int, gap: float) -> Expected:
    """Events carry explicit session ids here (replays derive them), so one key = one session."""
    items: dict[str, list[str]] = defaultdict(list)
    last: dict[str, float] = {}
    open_by_partition: dict[int, set[str]] = defaultdict(set)
    watermark: dict[int, float] = {}
    examples = []
    closed: dict[str, tuple[int, tuple[str, ...]]] = {}
    for row in events.itertuples(index=False):
        session, item, ts = row.session_id, row.item_id, float(row.timestamp)
        part = partition_of(session, partitions)
        examples.append((session, item, ts, tuple(items[session][-MAX_ITEMS:])))
        items[session].append(item)
        last[session] = max(last.get(session, ts), ts)
        open_by_partition[part].add(session)
        watermark[part] = max(watermark.get(part, ts), ts)
        for other in sorted(open_by_partition[part]):
            if last[other] < watermark[part] - gap:
                open_by_partition[part].discard(other)
                closed[other] = (len(items[other]), tuple(items[other][-MAX_ITEMS:]))
    still_open = set().union(*open_by_partition.values()) if open_by_partition else set()
    return Expected(examples, closed, still_open)
