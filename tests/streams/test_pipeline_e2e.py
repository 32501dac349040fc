"""End to end on a real broker and a real worker process: a MovieLens-100k slice plus
malformed inputs in; examples, closed sessions and dead letters out, checked against an
independent computation from the same file."""

from __future__ import annotations

import json
from collections import Counter

from onevec.models.datasets import load_events
from onevec.streams.kafka.producer import EventProducer
from onevec.streams.kafka.replay import iter_event_dicts
from onevec.streams.kafka.topics import bootstrap_servers
from tests.kafka_helpers import read_examples, read_topic, wait_processed
from tests.streams.oracle import expected_output

MALFORMED: list[tuple[bytes, str]] = [
    (b"this is not json", "bad_json"),
    (b"\xff\xfe\x00garbage", "bad_encoding"),
    (b'{"user_id": 1, "event_type": "click", "timestamp": 880000000}', "missing_field"),
    (
        b'{"user_id": 1, "item_id": 2, "event_type": "teleport", "timestamp": 880000000}',
        "unknown_event_type",
    ),
    (
        b'{"user_id": [1], "item_id": 2, "event_type": "click", "timestamp": 880000000}',
        "invalid_field",
    ),
    (b'{"user_id": 1, "item_id": 2, "event_type": "click", "timestamp": NaN}', "bad_json"),
    (b'{"user_id": 1, "item_id": 2, "event_type": "click", "timestamp": 12}', "absurd_timestamp"),
    (
        b'{"user_id": 1, "item_id": 2, "event_type": "click", "timestamp": 880000000000}',
        "absurd_timestamp",
    ),
    (
        b'{"user_id": 1, "item_id": 2, "event_type": "click", "timestamp": 880000000, "price": -3}',
        "invalid_field",
    ),
    (b"[1, 2, 3]", "not_an_object"),
    (
        b'{"user_id": 1, "item_id": 2, "event_type": "click", "timestamp": 880000000, "pad": "'
        + b"x" * 70_000
        + b'"}',
        "oversize",
    ),
]


def test_replay_slice_matches_independent_computation(settings, start_worker) -> None:
    events = load_events("movielens-100k", settings.session_gap_seconds).head(3000)
    worker = start_worker()
    with EventProducer(bootstrap_servers(settings), settings.clicks_topic) as producer:
        for position, event in enumerate(iter_event_dicts(events)):
            if position % 250 == 0 and position // 250 < len(MALFORMED):
                producer.send_raw(b"bad", MALFORMED[position // 250][0])
            producer.send(event)
    samples = wait_processed(worker, len(events) + len(MALFORMED))

    expected = expected_output(events, settings.partitions, settings.session_gap_seconds)
    examples = read_examples(settings, len(events))
    got = Counter((e["session_id"], e["item_id"], e["timestamp"], tuple(e["prefix"])) for e in examples)
    assert got == Counter(expected.examples)
    assert not any(e["duplicate"] for e in examples)

    closed = [
        json.loads(r.value) for r in read_topic(settings, settings.sessions_topic, len(expected.closed))
    ]
    assert {c["session_id"]: (c["n_events"], tuple(c["items"])) for c in closed} == expected.closed
    assert {c["reason"] for c in closed} == {"idle"}
    assert samples["onevec_sessions_open"] == len(expected.open_sessions)

    dead = read_topic(settings, settings.dlq_topic, len(MALFORMED))
    assert sorted(r.value for r in dead) == sorted(raw for raw, _ in MALFORMED)
    reasons = {r.value: dict(r.headers)["onevec-reason"].decode() for r in dead}
    assert reasons == {raw: reason for raw, reason in MALFORMED}
    assert all(dict(r.headers)["onevec-detail"] for r in dead)
    assert sum(v for k, v in samples.items() if k.startswith("onevec_events_rejected_total")) == len(
        MALFORMED
    )
    assert samples["onevec_events_rejected_total{reason=bad_json,stage=stream}"] == 2
