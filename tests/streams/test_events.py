"""Validation of the event format: every rejection has a stable reason code."""

from __future__ import annotations

import json

import pytest

from onevec.models.clickstream.events import (
    MAX_JSON_DEPTH,
    Event,
    EventType,
    Rejection,
    ValidationLimits,
    validate_event,
)

LIMITS = ValidationLimits(max_event_bytes=1024)
NOW = 1_700_000_000.0
GOOD = {"user_id": 7, "item_id": "sku-1", "event_type": "add_to_cart", "timestamp": 1_600_000_000}


def check(raw: bytes) -> Event | Rejection:
    return validate_event(raw, LIMITS, now=NOW)


def with_(**changes: object) -> bytes:
    event = {**GOOD, **changes}
    return json.dumps({k: v for k, v in event.items() if v is not ...}).encode()


def test_good_event_is_normalised() -> None:
    event = check(with_(session_id=12, price=9.5, quantity=2))
    assert isinstance(event, Event)
    assert (event.user_id, event.item_id, event.session_id) == ("7", "sku-1", "12")
    assert event.event_type is EventType.ADD_TO_CART
    assert (event.price, event.quantity) == (9.5, 2)


def test_iso_timestamp_with_offset_is_accepted() -> None:
    event = check(with_(timestamp="2020-09-13T12:26:40+00:00"))
    assert isinstance(event, Event) and event.timestamp == 1_600_000_000


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "bad_json"),
        (b'{"a": NaN}', "bad_json"),
        (b'{"a": Infinity}', "bad_json"),
        ("é".encode("latin-1"), "bad_encoding"),
        (b'"a string"', "not_an_object"),
        (b"null", "not_an_object"),
        (with_(item_id=...), "missing_field"),
        (with_(user_id=...), "missing_field"),
        (with_(event_type=...), "missing_field"),
        (with_(timestamp=...), "missing_field"),
        (with_(event_type="teleport"), "unknown_event_type"),
        (with_(event_type=3), "unknown_event_type"),
        (with_(user_id=1.5), "invalid_field"),
        (with_(user_id=True), "invalid_field"),
        (with_(item_id=""), "invalid_field"),
        (with_(item_id="x" * 300), "invalid_field"),
        (with_(item_id={"id": 1}), "invalid_field"),
        (with_(timestamp="yesterday"), "invalid_field"),
        (with_(timestamp="2020-09-13T12:26:40"), "invalid_field"),  # no offset: ambiguous
        (with_(timestamp=[1]), "invalid_field"),
        (with_(price=-1), "invalid_field"),
        (with_(price="12"), "invalid_field"),
        (with_(quantity=0), "invalid_field"),
        (with_(quantity=1.5), "invalid_field"),
        (with_(timestamp=5), "absurd_timestamp"),
        (with_(timestamp=NOW * 1000), "absurd_timestamp"),  # milliseconds, not seconds
        (with_(pad="x" * 2000), "oversize"),
    ],
)
def test_rejections_carry_a_reason(raw: bytes, reason: str) -> None:
    result = check(raw)
    assert isinstance(result, Rejection)
    assert result.reason == reason
    assert result.detail


BIG = ValidationLimits(max_event_bytes=1 << 20)  # hostile JSON within the size limit reaches the parser
HUGE_INT = "1" + "0" * 400  # beyond float range: float() raises OverflowError


def nested(depth: int, closed: bool = True) -> str:
    return "[" * depth + "1" + ("]" * depth if closed else "")


def raw_event(**fields: str) -> bytes:
    text = {"user_id": '"u"', "item_id": '"i"', "event_type": '"click"', "timestamp": "1600000000"} | fields
    return ("{" + ",".join(f'"{k}":{v}' for k, v in text.items()) + "}").encode()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"[" * 200_000, "bad_json"),  # RecursionError inside json.loads
        (b'{"a":' * 100_000, "bad_json"),
        (raw_event(extra=nested(5_000, closed=False)), "bad_json"),
        (raw_event(extra=nested(MAX_JSON_DEPTH)), "bad_json"),  # the value is depth 33 of the event
        (raw_event(extra=nested(900)), "bad_json"),  # parses, but deeper than the cap
        (raw_event(user_id=nested(40)), "bad_json"),
        (raw_event(timestamp=HUGE_INT), "invalid_field"),
        (raw_event(price=HUGE_INT), "invalid_field"),
        (raw_event(price="-" + HUGE_INT), "invalid_field"),
        (raw_event(timestamp="1e400"), "invalid_field"),  # json reads it as inf
        (raw_event(quantity=HUGE_INT), "invalid_field"),
        (raw_event(user_id=HUGE_INT), "invalid_field"),  # 401 characters as an id
        (raw_event(timestamp="9" * 5000), "bad_json"),  # over int()'s 4300-digit limit
        (raw_event(item_id='"' + "x" * 500_000 + '"'), "invalid_field"),
    ],
)
def test_hostile_json_is_a_rejection_not_an_exception(raw: bytes, reason: str) -> None:
    result = validate_event(raw, BIG, now=NOW)
    assert isinstance(result, Rejection), result
    assert result.reason == reason and result.detail
    if reason == "bad_json" and b"9999" not in raw:
        assert "nested deeper than" in result.detail
    if b"9" * 5000 in raw:
        assert "more than 4300 digits" in result.detail


def test_nesting_up_to_the_cap_is_accepted() -> None:
    result = validate_event(raw_event(extra=nested(MAX_JSON_DEPTH - 1)), BIG, now=NOW)
    assert isinstance(result, Event) and result.user_id == "u"


@pytest.mark.parametrize(
    ("unit", "timestamp", "seconds"),
    [
        ("ms", NOW * 1000, NOW),
        ("ms", int(NOW * 1000) + 250, int(NOW) + 0.25),
        ("auto", NOW * 1000, NOW),
        ("auto", NOW, NOW),  # below 1e11: seconds
        ("ms", "2023-11-14T22:13:20+00:00", NOW),  # an ISO string carries its own unit
    ],
)
def test_timestamps_in_milliseconds_when_the_unit_says_so(
    unit: str, timestamp: object, seconds: float
) -> None:
    limits = ValidationLimits(max_event_bytes=1024, timestamp_unit=unit)  # type: ignore[arg-type]
    event = validate_event(with_(timestamp=timestamp), limits, now=NOW)
    assert isinstance(event, Event) and event.timestamp == pytest.approx(seconds)


def test_milliseconds_read_as_seconds_are_refused_with_a_hint() -> None:
    rejection = check(with_(timestamp=NOW * 1000))
    assert isinstance(rejection, Rejection) and rejection.reason == "absurd_timestamp"
    assert "milliseconds" in rejection.detail
