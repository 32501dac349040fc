"""Hypothesis strategies for hostile click and catalogue records: malformed, oversize,
non-UTF-8, NaN / infinite and adversarial values, JSON nested past the parser's recursion,
numbers past float range or with thousands of digits, very long strings, mixed with valid ones."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from onevec.models.clickstream.events import EventType

REASONS = {
    "oversize",
    "bad_encoding",
    "bad_json",
    "not_an_object",
    "missing_field",
    "unknown_event_type",
    "invalid_field",
    "absurd_timestamp",
}

_any_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_ids = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.text(max_size=300),
    st.sampled_from(["", " ", "\u0000", "x" * 257, "../../etc/passwd", "' OR 1=1 --", "\ud7ff\ufeff"]),
    st.floats(),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=2),
)
_good_ids = st.one_of(
    st.integers(min_value=0, max_value=10**6), st.text(min_size=1, max_size=12).map(str.strip)
)
_timestamps = st.one_of(
    st.floats(min_value=9e8, max_value=1.7e9),  # plausible
    st.floats(),  # NaN, infinities, subnormals, negatives
    st.integers(min_value=-(2**80), max_value=2**80),
    st.text(max_size=30),
    st.sampled_from(["2024-03-01T10:00:00+00:00", "2024-03-01T10:00:00", "yesterday", "1e309", "NaN"]),
)
_event_types = st.one_of(st.sampled_from([e.value for e in EventType]), st.text(max_size=12), st.integers())
_numbers = st.one_of(
    st.none(), st.floats(), st.integers(min_value=-(2**64), max_value=2**64), st.text(max_size=5)
)

event_like = st.fixed_dictionaries(
    {},
    optional={
        "user_id": _ids,
        "item_id": _ids,
        "event_type": _event_types,
        "timestamp": _timestamps,
        "session_id": _ids,
        "price": _numbers,
        "quantity": _numbers,
        "extra": _any_json,
    },
)
valid_event = st.fixed_dictionaries(
    {
        "user_id": _good_ids,
        "item_id": _good_ids,
        "event_type": st.sampled_from([e.value for e in EventType]),
        "timestamp": st.floats(min_value=9e8, max_value=1.7e9),
    }
).filter(lambda e: str(e["user_id"]).strip() and str(e["item_id"]).strip())


# Valid but for one field: reaches the checks behind the parser (timestamps, price, ids).
one_bad_field = st.one_of(
    st.builds(lambda e, t: {**e, "timestamp": t}, valid_event, _timestamps),
    st.builds(lambda e, v: {**e, "price": v}, valid_event, _numbers),
    st.builds(lambda e, v: {**e, "quantity": v}, valid_event, _numbers),
    st.builds(lambda e, v: {**e, "item_id": v}, valid_event, _ids),
    st.builds(lambda e, v: {**e, "event_type": v}, valid_event, _event_types),
)


def dumps(value: Any) -> bytes:
    # allow_nan: emit the NaN / Infinity tokens that are not JSON, as a sloppy producer would.
    return json.dumps(value, allow_nan=True).encode()


@st.composite
def mangled(draw: st.DrawFn, max_event_bytes: int) -> bytes:
    """A JSON-ish record, then maybe truncated, given a non-UTF-8 byte or padded past the limit."""
    raw = dumps(draw(st.one_of(event_like, valid_event, one_bad_field, _any_json)))
    how = draw(st.sampled_from(["none", "none", "truncate", "bad_byte", "oversize", "bom"]))
    if how == "truncate" and raw:
        raw = raw[: draw(st.integers(min_value=0, max_value=len(raw) - 1))]
    elif how == "bad_byte":
        at = draw(st.integers(min_value=0, max_value=len(raw)))
        raw = raw[:at] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80"])) + raw[at:]
    elif how == "oversize":
        pad = draw(st.sampled_from([max_event_bytes, max_event_bytes * 2 + 7]))
        raw = dumps({**draw(valid_event), "pad": "x" * pad})
    elif how == "bom":
        raw = b"\xef\xbb\xbf" + raw
    return raw


# Raw JSON text that json.dumps never writes, spliced into otherwise valid records.
_VALID_FIELDS = {"user_id": '"u"', "item_id": '"i"', "event_type": '"click"', "timestamp": "1.6e9"}
_huge_numbers = st.sampled_from(
    [
        "1e400",  # parses to inf
        "-1e400",
        "1e-400",  # underflows to 0.0
        "1E+99999",
        "1" + "0" * 400,  # an int beyond float range: float() raises OverflowError
        "-" + "9" * 1000,
        "0." + "0" * 500 + "1",
        "9" * 5000,  # over int()'s 4300-digit limit: json.loads raises ValueError
    ]
)


def _object_text(fields: dict[str, str]) -> str:
    return "{" + ",".join(f'"{name}":{value}' for name, value in fields.items()) + "}"


@st.composite
def deep_nesting(draw: st.DrawFn, template: dict[str, str] = _VALID_FIELDS) -> bytes:
    """Lists/objects nested a few to thousands of levels, at the top or as a field's value, closed
    or not (unclosed, a few bytes reach depths where the parser runs out of recursion)."""
    depth = draw(st.one_of(st.integers(1, 2500), st.sampled_from([31, 32, 33, 999, 1000, 1001, 20_000])))
    opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}"), ('[{"k":', "}]")]))
    closed = draw(st.booleans())
    nested = opener * depth + "1" + (closer * depth if closed else "")
    field = draw(st.sampled_from([None, "extra", *template]))
    return (nested if field is None else _object_text({**template, field: nested})).encode()


@st.composite
def huge_number(draw: st.DrawFn, template: dict[str, str] = _VALID_FIELDS) -> bytes:
    """A record whose field (or an extra one) is a number past float range or thousands of digits."""
    field = draw(st.sampled_from(["extra", "price", "quantity", "session_id", *template]))
    return _object_text({**template, field: draw(_huge_numbers)}).encode()


def long_strings(max_bytes: int) -> st.SearchStrategy[bytes]:
    return st.builds(
        lambda event, field, size: dumps({**event, field: "x" * size}),
        valid_event,
        st.sampled_from(["user_id", "item_id", "session_id", "event_type", "timestamp", "extra"]),
        st.sampled_from([257, 1000, max_bytes // 2, max_bytes + 1]),
    )


def hostile_json(max_bytes: int) -> st.SearchStrategy[bytes]:
    """JSON built to break parsers rather than validators, cut to just over ``max_bytes`` (so a
    batch of them still fits an HTTP body; a cut record is unclosed, hostile all the same)."""
    hostile = st.one_of(deep_nesting(), huge_number(), long_strings(max_bytes))
    return hostile.map(lambda raw: raw[: max_bytes + 64])


def records(max_event_bytes: int) -> st.SearchStrategy[bytes]:
    """Any record a hostile or buggy producer might send."""
    return st.one_of(
        mangled(max_event_bytes),
        st.binary(max_size=200),
        valid_event.map(dumps),
        hostile_json(max_event_bytes),
    )


# Catalogue records (onevec.models.catalog.validate_catalog_record). Image path columns are left out:
# what a path may point at is tested with real files in tests/streams/test_catalog_records.py.
CATALOG_REASONS = {
    "oversize",
    "bad_encoding",
    "bad_json",
    "not_an_object",
    "missing_field",
    "invalid_field",
    "wrong_shape",
    "broken_image",
}
_CATALOG_FIELDS = {"item_id": "7", "title": '"Toy Story (1995)"', "department": '"Dresses"'}
_column_values = st.one_of(
    st.text(max_size=200),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.none(),
    _any_json,
    st.sampled_from(["https://example.com/a.png", "01-Jan-1995", "Dresses", "x" * 65, "x" * 100_001]),
)
_pixel_values = st.one_of(
    st.integers(0, 255).map(lambda v: [v] * 784),  # valid, flat
    st.integers(0, 255).map(lambda v: [[v] * 28] * 28),  # valid, 28 rows
    st.builds(
        lambda base, at, bad: [*base[:at], bad, *base[at + 1 :]],
        st.integers(0, 255).map(lambda v: [v] * 784),
        st.integers(0, 783),
        st.one_of(
            st.floats(), st.integers(), st.text(max_size=3), st.none(), st.lists(st.integers(), max_size=2)
        ),
    ),
    st.lists(st.integers(0, 255), max_size=30),
    _any_json,
)
_column_names = st.text(max_size=12).filter(lambda name: not name.lower().startswith("image"))
catalog_like = st.builds(
    lambda known, other: {**other, **known},
    st.fixed_dictionaries(
        {},
        optional={
            "item_id": _ids,
            "title": _column_values,
            "description": _column_values,
            "category": _column_values,
            "brand": _column_values,
            "release_date": _column_values,
            "Comedy": _column_values,
            "rating": _numbers,
            "image_pixels": _pixel_values,
        },
    ),
    st.dictionaries(_column_names, _column_values, max_size=4),
)
valid_catalog_record = st.fixed_dictionaries(
    {"item_id": _good_ids, "title": st.text(max_size=40)},
    optional={"image_pixels": _pixel_values, "department": st.sampled_from(["Dresses", "Tops"])},
).filter(lambda record: str(record["item_id"]).strip())


@st.composite
def mangled_catalog(draw: st.DrawFn) -> bytes:
    raw = dumps(draw(st.one_of(catalog_like, valid_catalog_record, _any_json)))
    how = draw(st.sampled_from(["none", "none", "truncate", "bad_byte"]))
    if how == "truncate" and raw:
        raw = raw[: draw(st.integers(min_value=0, max_value=len(raw) - 1))]
    elif how == "bad_byte":
        at = draw(st.integers(min_value=0, max_value=len(raw)))
        raw = raw[:at] + draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80"])) + raw[at:]
    return raw


def _pixels_with(number: str) -> bytes:
    """A 28x28 image, as flat pixels, whose last pixel is ``number``."""
    pixels = "[" + "0," * 783 + number + "]"
    return _object_text({**_CATALOG_FIELDS, "image_pixels": pixels}).encode()


def catalog_records_raw() -> st.SearchStrategy[bytes]:
    """Any catalogue record a hostile or buggy publisher might send."""
    return st.one_of(
        mangled_catalog(),
        st.binary(max_size=200),
        deep_nesting(_CATALOG_FIELDS),
        huge_number(_CATALOG_FIELDS),
        _huge_numbers.map(_pixels_with),
    )
