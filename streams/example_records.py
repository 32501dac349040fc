"""Records of the examples topic: one record per sessionize micro-batch and input partition.

A record's value is ``{"examples": [example, ...]}`` (each example as documented in the
README: ``event_id, session_id, user_id, item_id, event_type, timestamp, prefix, duplicate``
plus ``ingested_at``), in input order, sent to the examples partition with the same number as
the clicks partition it came from. One record per micro-batch instead of one per event:
producing and consuming a record costs Faust the same whatever its size, and that per-record
cost was most of the pipeline's (docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["chunked", "decode_examples", "encode_examples"]


def encode_examples(examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {"examples": list(examples)}


def decode_examples(value: Any) -> list[dict[str, Any]]:
    """The examples of one record. A record of an older onevec (one bare example per record)
    is read as a batch of one, so a rolling upgrade needs no migration."""
    if isinstance(value, dict) and isinstance(value.get("examples"), list):
        return value["examples"]
    if isinstance(value, dict) and "item_id" in value:
        return [value]
    raise ValueError(f"not an examples record: {str(value)[:80]!r}")


def chunked(examples: Sequence[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    """Consecutive chunks of at most ``size`` examples (bounds a record's size)."""
    for start in range(0, len(examples), size):
        yield list(examples[start : start + size])
