"""Examples records: one record per sessionize micro-batch, split under the size limit."""

from __future__ import annotations

import json
import time

import pytest

from onevec.models.clickstream.examples import decode_examples, encode_examples


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
    assert decode_examples(values[0]) == batch


def test_a_batch_over_the_limit_is_split_in_order_and_every_record_fits() -> None:
    batch = [example(n, prefix_items=50) for n in range(300)]
    whole = len(encode_examples(batch, max_bytes=1 << 30)[0])
    limit = whole // 5
    values = encode_examples(batch, max_bytes=limit)
    assert len(values) >= 5
    assert all(len(value) <= limit for value in values)
    assert [e for value in values for e in decode_examples(value)] == batch


def test_one_example_larger_than_the_limit_still_gets_a_record() -> None:
    big = example(1, prefix_items=50)
    values = encode_examples([big, example(2)], max_bytes=100)
    assert [decode_examples(v) for v in values] == [[big], [example(2)]]


def test_a_bare_example_of_an_older_onevec_reads_as_a_batch_of_one() -> None:
    assert decode_examples(json.dumps(example(3)).encode()) == [example(3)]


@pytest.mark.parametrize(
    "value", [b"null", b"[]", b'{"examples": "x"}', b'{"foo": 1}', b'"text"', b"not json", b"\xff\xfe"]
)
def test_anything_else_is_refused(value: bytes) -> None:
    with pytest.raises(ValueError, match="not an examples record"):
        decode_examples(value)


def test_a_foreign_examples_record_is_dead_lettered_and_learning_goes_on(settings, start_worker) -> None:
    """Against the real broker and a worker: a record on the examples topic that is not an
    examples record goes to the dead-letter topic with its bytes and reason, is counted, and
    the worker still learns the records after it."""
    from kafka import KafkaProducer

    from onevec.streams.kafka.topics import bootstrap_servers
    from onevec.streams.worker import metric_total
    from tests.kafka_helpers import read_topic

    worker = start_worker()
    foreign = json.dumps({"not": "examples"}).encode()
    producer = KafkaProducer(bootstrap_servers=bootstrap_servers(settings))
    producer.send(settings.examples_topic, foreign, partition=0)
    broken = b"\xffnot json"
    producer.send(settings.examples_topic, broken, partition=0)
    for value in encode_examples([example(n) for n in range(10)], 1 << 16):
        producer.send(settings.examples_topic, value, partition=0)
    producer.flush()
    producer.close()

    dead = read_topic(settings, settings.dlq_topic, 2)
    # Sorted: dead letters without a key land on any partition of the dead-letter topic.
    assert sorted(
        (r.value, dict(r.headers)["onevec-reason"], dict(r.headers)["onevec-stage"]) for r in dead
    ) == [
        (foreign, b"bad_examples_record", b"learn"),
        (broken, b"bad_examples_record", b"learn"),
    ]
    deadline = time.monotonic() + 60
    while metric_total(worker.metrics(), "onevec_examples_learned_total") < 10:
        assert time.monotonic() < deadline, "the examples after the foreign record were never learned"
        time.sleep(0.2)
    samples = worker.metrics()
    assert samples["onevec_events_rejected_total{reason=bad_examples_record,stage=learn}"] == 2
