"""Records of the examples topic: one record per sessionize micro-batch and input partition.

A record's value is the JSON object ``{"examples": [example, ...]}`` (each example as documented
in the README: ``event_id, session_id, user_id, item_id, event_type, timestamp, prefix,
duplicate`` plus ``ingested_at``), in input order, sent to the examples partition with the same
number as the clicks partition it came from. One record per micro-batch instead of one per
event: producing and consuming a record costs Faust the same whatever its size, and that
per-record cost was most of the pipeline's (docs/performance.md). A micro-batch whose JSON would
exceed the record size limit is split into several records.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import NotRequired, TypedDict, cast

__all__ = ["ExampleRecord", "decode_examples", "encode_example_chunks", "encode_examples"]


class ExampleRecord(TypedDict):
    """One training example as it crosses the stages (examples topic, learner, evaluation): a
    plain dict, so encoding it is one ``json.dumps``."""

    event_id: str
    session_id: str
    user_id: str
    item_id: str
    event_type: str
    timestamp: float
    prefix: list[str]  # the session's previous items, oldest first
    duplicate: bool  # a redelivered event already applied: not learned again
    ingested_at: NotRequired[float | None]  # the click's Kafka timestamp (freshness clock)


def encode_examples(examples: Sequence[ExampleRecord], max_bytes: int) -> list[bytes]:
    """The examples as record values of at most ``max_bytes`` each (halved until they fit; a
    single example over the limit still gets a record of its own)."""
    return [value for value, _ in encode_example_chunks(examples, max_bytes)]


def encode_example_chunks(examples: Sequence[ExampleRecord], max_bytes: int) -> list[tuple[bytes, int]]:
    """As :func:`encode_examples`, each value with how many examples (in order) it holds."""
    value = json.dumps({"examples": list(examples)}, separators=(",", ":")).encode()
    if len(value) <= max_bytes or len(examples) <= 1:
        return [(value, len(examples))]
    half = len(examples) // 2
    return encode_example_chunks(examples[:half], max_bytes) + encode_example_chunks(
        examples[half:], max_bytes
    )


def decode_examples(raw: bytes) -> list[ExampleRecord]:
    """The examples of one record value (ValueError when it is not one). A record of an older
    onevec (one bare example per record) is read as a batch of one, so a rolling upgrade needs
    no migration."""
    try:
        value = json.loads(raw)
    except ValueError as error:  # not UTF-8, or not JSON
        raise ValueError(f"not an examples record: {error}") from None
    if isinstance(value, dict) and isinstance(value.get("examples"), list):
        return cast(list[ExampleRecord], value["examples"])
    if isinstance(value, dict) and "item_id" in value:
        return [cast(ExampleRecord, value)]
    raise ValueError(f"not an examples record: {str(value)[:80]!r}")
