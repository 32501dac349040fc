"""Constructed streams for the baseline tests: sessions of named users, one after the other in time,
as the example records the session window emits."""

from __future__ import annotations

from onevec.models.clickstream.examples import ExampleRecord
from onevec.models.evaluation.harness import Query


def sessions(*rows: tuple[str, list[str]], start: float = 0.0, prefix: str = "s") -> list[ExampleRecord]:
    """Records of (user, items) sessions, one second apart, each session after the previous one."""
    records: list[ExampleRecord] = []
    clock = start
    for number, (user, items) in enumerate(rows):
        for position, item in enumerate(items):
            clock += 1.0
            records.append(
                {
                    "event_id": f"{prefix}{number}:{position}",
                    "session_id": f"{prefix}{number}",
                    "user_id": user,
                    "item_id": item,
                    "event_type": "click",
                    "timestamp": clock,
                    "prefix": items[:position],
                    "duplicate": False,
                }
            )
    return records


def query(prefix: tuple[str, ...], user: str = "new", session: str = "now") -> Query:
    return Query(session_id=session, user_id=user, prefix=prefix, timestamp=1e9)
