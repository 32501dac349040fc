"""Examples records: one record per sessionize micro-batch, split under the size limit."""

from __future__ import annotations

import json

import pytest

from streams.example_records import decode_examples, encode_examples


def example(n: int, prefix_items: int = 3) -> dict:
    return {
        "event_id": f"e{n}",
        "session_id": f"s{n % 7}",
        "user_id": "u",
        "item_id": f"item-{n}",
        "event_type": "click",
        "timestamp": 1e9 + n,
        "prefix": [f"item-{n - k}" for k in range(prefix_items, 0, -1)],
        "duplicate": False,
    }


def test_a_batch_round_trips_in_order() -> None:
    batch = [example(n) for n in range(40)]
    values = encode_examples(batch, max_bytes=1 << 20)
    assert len(values) == 1
    assert decode_examples(json.loads(values[0])) == batch


def test_a_batch_over_the_limit_is_split_in_order_and_every_record_fits() -> None:
    batch = [example(n, prefix_items=50) for n in range(300)]
    whole = len(encode_examples(batch, max_bytes=1 << 30)[0])
    limit = whole // 5
    values = encode_examples(batch, max_bytes=limit)
    assert len(values) >= 5
    assert all(len(value) <= limit for value in values)
    assert [e for value in values for e in decode_examples(json.loads(value))] == batch


def test_one_example_larger_than_the_limit_still_gets_a_record() -> None:
    big = example(1, prefix_items=50)
    values = encode_examples([big, example(2)], max_bytes=100)
    assert [decode_examples(json.loads(v)) for v in values] == [[big], [example(2)]]


def test_a_bare_example_of_an_older_onevec_reads_as_a_batch_of_one() -> None:
    assert decode_examples(example(3)) == [example(3)]


@pytest.mark.parametrize("value", [None, [], {"examples": "x"}, {"foo": 1}, "text"])
def test_anything_else_is_refused(value: object) -> None:
    with pytest.raises(ValueError, match="not an examples record"):
        decode_examples(value)
