"""Validation of the event format: every rejection has a stable reason code."""

from __future__ import annotations

import json

import pytest

from streams.events import Event, EventType, Rejection, ValidationLimits, validate_event

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
