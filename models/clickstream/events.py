"""The click event format and its validation.

An event is one JSON object: ``user_id``, optional ``session_id``, ``item_id``, ``event_type``
(view, click, add_to_cart, purchase, return), ``timestamp`` (seconds since the epoch, or an
ISO 8601 string), optional ``price`` and ``quantity``. Anything else is rejected with a reason
that says what is wrong; nothing here raises on bad input (JSON nested deeper than
``MAX_JSON_DEPTH``, integers too large for a float and over-long numbers included).
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

__all__ = [
    "MAX_JSON_DEPTH",
    "TOO_DEEP",
    "Event",
    "EventType",
    "Rejection",
    "ValidationLimits",
    "deeper_than",
    "json_error",
    "parse_event",
    "session_key",
    "validate_event",
]

MAX_ID_CHARS = 256
# An event is a flat object; nesting this deep is an attack or a bug. A fixed cap (checked after
# parsing) gives the same answer in every process, whatever its stack depth and recursion limit.
MAX_JSON_DEPTH = 32


class EventType(StrEnum):
    VIEW = "view"
    CLICK = "click"
    ADD_TO_CART = "add_to_cart"
    PURCHASE = "purchase"
    RETURN = "return"


def _as_id(value: object) -> str:
    # Ids may be sent as JSON strings or integers; anything else (floats, bools, objects)
    # is a producer bug we want to surface, not coerce.
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError("must be a string or an integer")
    text = str(value).strip()
    if not text:
        raise ValueError("must not be empty")
    if len(text) > MAX_ID_CHARS:
        raise ValueError(f"longer than {MAX_ID_CHARS} characters")
    return text


def _as_float(value: int | float) -> float:
    # JSON integers have no size limit: float(10**400) raises OverflowError, which pydantic
    # would not turn into a validation error.
    try:
        return float(value)
    except OverflowError:
        raise ValueError("is out of range") from None


def _as_epoch_seconds(value: object) -> float:
    if isinstance(value, bool):
        raise ValueError("must be a number of seconds or an ISO 8601 string")
    if isinstance(value, (int, float)):
        seconds = _as_float(value)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("is not an ISO 8601 date-time") from None
        if parsed.tzinfo is None:
            raise ValueError("ISO 8601 date-time needs a UTC offset")
        seconds = parsed.timestamp()
    else:
        raise ValueError("must be a number of seconds or an ISO 8601 string")
    if not math.isfinite(seconds):
        raise ValueError("is not finite")
    return seconds


class Event(BaseModel):
    """One accepted click event (ids normalised to strings, time in epoch seconds)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    user_id: str
    item_id: str
    event_type: EventType
    timestamp: float
    session_id: str | None = None
    price: float | None = Field(default=None, ge=0)
    quantity: int | None = Field(default=None, ge=1, le=1_000_000)

    @field_validator("user_id", "item_id", mode="before")
    @classmethod
    def _id(cls, value: object) -> str:
        return _as_id(value)

    @field_validator("session_id", mode="before")
    @classmethod
    def _session_id(cls, value: object) -> str | None:
        return None if value is None else _as_id(value)

    @field_validator("timestamp", mode="before")
    @classmethod
    def _timestamp(cls, value: object) -> float:
        return _as_epoch_seconds(value)

    @field_validator("price", mode="before")
    @classmethod
    def _price(cls, value: object) -> float | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError("must be a number")
        price = _as_float(value)
        if not math.isfinite(price):
            raise ValueError("is not finite")
        return price

    @field_validator("quantity", mode="before")
    @classmethod
    def _quantity(cls, value: object) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("must be an integer")
        return value

    def to_json(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()


TimestampUnit = Literal["s", "ms", "auto"]
MILLISECONDS_ABOVE = 1e11  # as seconds the year 5138, as milliseconds 1973: "auto" reads ms above


@dataclass(frozen=True, slots=True)
class ValidationLimits:
    max_event_bytes: int = 64 * 1024
    min_event_time: float = 631_152_000.0
    max_clock_skew_seconds: float = 86_400.0
    timestamp_unit: TimestampUnit = "s"  # of numeric timestamps (ISO 8601 strings carry their own)


def in_seconds(timestamp: float, unit: TimestampUnit) -> float:
    """A numeric timestamp in ``unit`` as epoch seconds."""
    if unit == "ms" or (unit == "auto" and timestamp > MILLISECONDS_ABOVE):
        return timestamp / 1000.0
    return timestamp


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why an input was refused. ``reason`` is a short stable code (a metric label);
    ``detail`` is the human-readable explanation sent with the dead letter."""

    reason: str
    detail: str


TOO_DEEP = Rejection("bad_json", f"not JSON: nested deeper than {MAX_JSON_DEPTH} levels")


_CONTAINERS = frozenset({dict, list})


def deeper_than(value: Any, limit: int) -> bool:
    """True when a decoded JSON value nests lists/objects more than ``limit`` levels deep
    (iterative, so the check itself cannot hit the recursion limit)."""
    if type(value) is dict and _CONTAINERS.isdisjoint(map(type, value.values())):
        return limit < 1  # a flat object, as every event is: one level
    stack = [(value, 1)] if isinstance(value, (dict, list)) else []
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def _describe(error: ValidationError) -> Rejection:
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "event"
    kind = first["type"]
    if kind == "missing":
        return Rejection("missing_field", f"missing field '{field}'")
    if field == "event_type":
        allowed = ", ".join(e.value for e in EventType)
        return Rejection("unknown_event_type", f"event_type must be one of: {allowed}")
    message = first["msg"].removeprefix("Value error, ")
    return Rejection("invalid_field", f"'{field}' {message}")


def parse_event(data: Any, limits: ValidationLimits, now: float | None = None) -> Event | Rejection:
    """Validate an already-decoded JSON value."""
    if not isinstance(data, dict):
        return Rejection("not_an_object", f"expected a JSON object, got {type(data).__name__}")
    try:
        event = Event.model_validate(data)
    except ValidationError as error:
        return _describe(error)
    if limits.timestamp_unit != "s" and isinstance(data.get("timestamp"), (int, float)):
        event = event.model_copy(update={"timestamp": in_seconds(event.timestamp, limits.timestamp_unit)})
    now = time.time() if now is None else now
    if event.timestamp < limits.min_event_time:
        return Rejection("absurd_timestamp", f"timestamp {event.timestamp} is before the minimum")
    if event.timestamp > now + limits.max_clock_skew_seconds:
        return Rejection(
            "absurd_timestamp",
            f"timestamp {event.timestamp} is in the future (expected seconds since the epoch;"
            " milliseconds are read with the timestamp unit ms or auto)",
        )
    return event


def validate_event(raw: bytes, limits: ValidationLimits, now: float | None = None) -> Event | Rejection:
    """Validate one raw Kafka message value."""
    if len(raw) > limits.max_event_bytes:
        return Rejection("oversize", f"{len(raw)} bytes exceeds the {limits.max_event_bytes} limit")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return Rejection("bad_encoding", f"not UTF-8: {error.reason} at byte {error.start}")
    try:
        if text.startswith("\ufeff"):  # json.loads refuses it; the decoder it calls does not check
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        data = _DECODER.decode(text)
    except RecursionError:  # not a ValueError: deep nesting exhausts the parser's recursion
        return TOO_DEEP
    except ValueError as error:
        return Rejection("bad_json", f"not JSON: {json_error(error)}")
    if deeper_than(data, MAX_JSON_DEPTH):
        return TOO_DEEP
    return parse_event(data, limits, now)


def json_error(error: ValueError) -> str:
    """What a json.loads ValueError means, for a client."""
    if "integer string conversion" in str(error):  # int() refuses over-long digit strings
        return f"a number has more than {sys.get_int_max_str_digits()} digits"
    return str(error)


def _refuse_constant(name: str) -> None:
    # json accepts NaN/Infinity by default; they are not JSON and never a valid field value.
    raise ValueError(f"{name} is not valid JSON")


# One decoder for every event: json.loads with an option builds a new one per call.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def session_key(event: Event) -> str:
    """The Kafka key and session-table key: the session id, or the user when sessions are
    derived by idle gap in the stream."""
    return event.session_id if event.session_id is not None else f"user:{event.user_id}"
