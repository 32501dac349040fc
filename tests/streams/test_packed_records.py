"""Packed click records (onevec.models.clickstream.packed): the format round-trips, the
producer library and HTTP ingestion write it to the partition of each event's key, and a worker
reads packed and single-event records mixed on one topic; a bad line of a pack is dead-lettered
with its reason and line, the rest of the pack is kept (real broker, real worker processes,
MovieLens-100k checked against the independent oracle)."""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from itertools import accumulate

from aiokafka.partitioner import DefaultPartitioner
from kafka import KafkaProducer

from onevec.models.clickstream.examples import decode_examples
from onevec.models.clickstream.packed import (
    PACK_FORMAT,
    PACK_HEADER,
    PACK_SLOTS,
    input_position,
    pack_format,
    pack_lines,
    unpack,
)
from onevec.models.datasets import load_events
from onevec.streams.kafka.emitted import EMITTED_HEADER
from onevec.streams.kafka.producer import EventProducer, event_key, key_partition
from onevec.streams.kafka.replay import iter_event_dicts
from onevec.streams.kafka.topics import bootstrap_servers
from onevec.streams.settings import Settings
from tests.kafka_helpers import post_events, read_examples, read_topic, wait_processed
from tests.streams.oracle import expected_output

PACKED = [(PACK_HEADER, PACK_FORMAT)]


def compact(event: dict) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()


def test_pack_lines_round_trip_within_the_size_and_line_limits() -> None:
    rng = random.Random(0)
    lines = [compact({"n": n, "pad": "x" * rng.randrange(0, 300)}) for n in range(2000)]
    packs = pack_lines(lines, max_bytes=4096)
    assert len(packs) > 1 and all(len(value) <= 4096 for value in packs)
    assert [line for value in packs for _, line in unpack(value)] == lines
    # A line longer than the limit gets a record of its own; more than PACK_SLOTS lines split.
    assert pack_lines([b"a" * 50, b"b"], max_bytes=10) == [b"a" * 50, b"b"]
    many = pack_lines([b"1"] * (PACK_SLOTS + 1), max_bytes=1 << 30)
    assert [value.count(b"\n") + 1 for value in many] == [PACK_SLOTS, 1]


def test_lines_are_numbered_in_the_record_blank_ones_skipped() -> None:
    assert list(unpack(b'{"a":1}\n\n  \n{"b":2}\n')) == [(0, b'{"a":1}'), (3, b'{"b":2}')]


def test_input_positions_order_every_event_and_stay_below_the_next_record() -> None:
    offsets = (0, 1, 2, 2**37 - 1)
    positions = [input_position(o, line) for o in offsets for line in (0, 1, PACK_SLOTS - 1)]
    assert positions == sorted(set(positions))
    assert all(input_position(o, PACK_SLOTS - 1) < o + 1 for o in offsets)
    assert type(input_position(5, 0)) is int and input_position(5, 0) == 5


def test_the_pack_header_is_read_from_either_form_of_headers() -> None:
    assert pack_format([("other", b"x"), (PACK_HEADER, PACK_FORMAT)]) == PACK_FORMAT
    assert pack_format({PACK_HEADER: b"gzip"}) == b"gzip"
    assert pack_format(None) is None and pack_format([("other", b"x")]) is None


def test_key_partition_is_the_default_partitioner_of_kafka_clients() -> None:
    rng = random.Random(1)
    aiokafka_partitioner = DefaultPartitioner()
    for _ in range(500):
        key = f"user:{rng.randrange(10**9)}".encode()
        for partitions in (1, 3, 4, 7):
            everything = list(range(partitions))
            assert key_partition(key, partitions) == aiokafka_partitioner(key, everything, everything)


def test_the_producer_packs_each_partitions_events_and_sends_them_after_the_linger(
    settings: Settings,
) -> None:
    events = [
        {"user_id": f"u{n % 9}", "item_id": f"i{n}", "event_type": "click", "timestamp": 1.7e9 + n}
        for n in range(60)
    ]
    producer = EventProducer(
        bootstrap_servers(settings), settings.clicks_topic, pack=True, pack_linger_seconds=0.1
    )
    try:
        producer.send_many(events)
        # No flush: the linger sends them.
        records = read_topic(settings, settings.clicks_topic, 1, timeout=30, settle=1.0)
    finally:
        producer.close()
    assert len(records) <= settings.partitions
    assert all(pack_format(record.headers) == PACK_FORMAT for record in records)
    got = {record.partition: [json.loads(line) for _, line in unpack(record.value)] for record in records}
    for partition, packed in got.items():
        assert {key_partition(event_key(e), settings.partitions) for e in packed} == {partition}
    assert sorted((e for packed in got.values() for e in packed), key=lambda e: e["item_id"]) == sorted(
        events, key=lambda e: e["item_id"]
    )
    # Each partition's events in the order they were sent.
    for packed in got.values():
        assert packed == [e for e in events if e in packed]


BAD_LINES: list[tuple[bytes, str]] = [
    (b"{broken", "bad_json"),
    (b'{"user_id": 1, "event_type": "click", "timestamp": 880000000}', "missing_field"),
    (b'{"user_id": 1, "item_id": 2, "event_type": "click", "timestamp": 12}', "absurd_timestamp"),
    (b"\xff\xfe", "bad_encoding"),
]


def test_packed_and_single_event_records_mix_on_one_topic(settings: Settings, start_worker) -> None:
    """Blocks of a MovieLens slice alternate between the packing producer and one event per
    record; every 400th event travels in a hand-made pack between bad lines. The examples and
    closed sessions are the oracle's; each bad line is a dead letter with its reason and line."""
    events = load_events("movielens-100k", settings.session_gap_seconds).head(3000)
    worker = start_worker(role="ingest")
    servers = bootstrap_servers(settings)
    packing = EventProducer(servers, settings.clicks_topic, pack=True)
    single = EventProducer(servers, settings.clicks_topic)
    raw = KafkaProducer(bootstrap_servers=servers)
    dead_expected: list[tuple[bytes, str, int]] = []
    try:
        for position, event in enumerate(iter_event_dicts(events)):
            producer = packing if (position // 300) % 2 == 0 else single
            if position % 400 == 0:
                # Everything sent before goes first: a partition keeps the stream's order.
                packing.flush()
                single.flush()
                bad, reason = BAD_LINES[(position // 400) % len(BAD_LINES)]
                value = b"\n".join([bad, compact(event), b"", bad])
                partition = key_partition(event_key(event), settings.partitions)
                raw.send(settings.clicks_topic, value, partition=partition, headers=PACKED)
                raw.flush()
                dead_expected += [(bad, reason, 0), (bad, reason, 3)]
                continue
            producer.send(event)
            if (position + 1) % 300 == 0:
                producer.flush()
        raw.send(settings.clicks_topic, b"{}", partition=0, headers=[(PACK_HEADER, b"zstd")])
    finally:
        for closing in (packing, single, raw):
            closing.close()
    samples = wait_processed(worker, len(events) + len(dead_expected) + 1)

    expected = expected_output(events, settings.partitions, settings.session_gap_seconds)
    examples = read_examples(settings, len(events))
    got = Counter((e["session_id"], e["item_id"], e["timestamp"], tuple(e["prefix"])) for e in examples)
    assert got == Counter(expected.examples)
    assert not any(e["duplicate"] for e in examples)
    closed = [
        json.loads(r.value) for r in read_topic(settings, settings.sessions_topic, len(expected.closed))
    ]
    assert {c["session_id"]: (c["n_events"], tuple(c["items"])) for c in closed} == expected.closed

    dead = read_topic(settings, settings.dlq_topic, len(dead_expected) + 1)
    got_dead = [(r.value, dict(r.headers)) for r in dead]
    assert sorted(
        (value, headers["onevec-reason"].decode(), int(headers["onevec-pack-index"]))
        for value, headers in got_dead
        if "onevec-pack-index" in headers
    ) == sorted(dead_expected)
    whole = [(value, headers) for value, headers in got_dead if "onevec-pack-index" not in headers]
    assert [(value, headers["onevec-reason"]) for value, headers in whole] == [(b"{}", b"bad_pack")]
    assert samples["onevec_events_rejected_total{reason=bad_pack,stage=stream}"] == 1


def test_examples_records_claim_whole_clicks_records(settings: Settings, start_worker) -> None:
    """Records split to 1 KiB, input packed: along each examples partition the headers only
    grow, a header never claims a clicks record some of whose examples come after it, and the
    last one is the partition's last clicks record."""
    events = load_events("movielens-100k", settings.session_gap_seconds).head(1500)
    worker = start_worker(role="ingest", examples_record_max_bytes=1024)
    with EventProducer(
        bootstrap_servers(settings), settings.clicks_topic, pack=True, pack_max_bytes=4096
    ) as p:
        p.send_many(iter_event_dicts(events))
    wait_processed(worker, len(events))
    clicks = read_topic(settings, settings.clicks_topic, 1)
    records = read_topic(settings, settings.examples_topic, 0, settle=2.0)
    # Which clicks record each event came from, by (session, item, time).
    source = {
        (e["session_id"], str(e["item_id"]), float(e["timestamp"])): (r.partition, r.offset)
        for r in clicks
        for _, line in unpack(r.value)
        for e in [json.loads(line)]
    }
    for partition in {r.partition for r in clicks}:
        mine = sorted((r for r in records if r.partition == partition), key=lambda r: r.offset)
        claims = [int(dict(r.headers)[EMITTED_HEADER]) for r in mine]
        assert len(mine) > 1 and claims == sorted(claims)
        origins = [
            [source[(e["session_id"], e["item_id"], e["timestamp"])] for e in decode_examples(r.value)]
            for r in mine
        ]
        assert {p for examples in origins for p, _ in examples} == {partition}
        # Per examples record, the first clicks record any later examples record draws from.
        later = list(accumulate(reversed([min(o for _, o in examples) for examples in origins]), min))[::-1]
        for claim, first_after in zip(claims[:-1], later[1:], strict=True):
            assert claim < first_after
        assert claims[-1] == max(r.offset for r in clicks if r.partition == partition)


def test_http_ingestion_sends_the_received_bytes_packed_per_partition(
    settings: Settings, start_worker
) -> None:
    """A JSON-lines body becomes one packed record per partition holding the lines as received;
    a worker that reads milliseconds sessionizes them in seconds (nothing encoded twice)."""
    worker = start_worker(role="ingest", timestamp_unit="ms")
    events = [
        {"user_id": f"u{n % 7}", "item_id": f"i{n}", "event_type": "view", "timestamp": 1_700_000_000_000 + n}
        for n in range(40)
    ]
    lines = [json.dumps(e).encode() for e in events]  # with spaces: not onevec's own encoding
    status, answer = post_events(worker.base_url, b"\n".join(lines))
    assert (status, answer["accepted"]) == (200, len(events))
    wait_processed(worker, len(events))
    clicks = read_topic(settings, settings.clicks_topic, 1)
    assert all(pack_format(r.headers) == PACK_FORMAT for r in clicks)
    assert len(clicks) == len({r.partition for r in clicks})  # one record per partition
    assert sorted(line for r in clicks for _, line in unpack(r.value)) == sorted(lines)
    for record in clicks:
        keys = {event_key(json.loads(line)) for _, line in unpack(record.value)}
        assert {key_partition(key, settings.partitions) for key in keys} == {record.partition}
    examples = read_examples(settings, len(events))
    assert sorted(e["timestamp"] for e in examples) == [1_700_000_000 + n / 1000 for n in range(40)]
    assert read_topic(settings, settings.dlq_topic, 0, settle=0.5) == []


def test_packing_keeps_per_session_order_across_lingering_sends(settings: Settings) -> None:
    """Events sent slower than the linger go out in several packs; read back in offset order
    per partition, each session's events are in the order sent."""
    producer = EventProducer(
        bootstrap_servers(settings), settings.clicks_topic, pack=True, pack_linger_seconds=0.02
    )
    sent = []
    try:
        for n in range(30):
            event = {
                "user_id": f"u{n % 3}",
                "item_id": f"i{n}",
                "event_type": "click",
                "timestamp": 1.7e9 + n,
            }
            producer.send(event)
            sent.append(event)
            if n % 10 == 9:
                time.sleep(0.1)
    finally:
        producer.close()
    records = sorted(read_topic(settings, settings.clicks_topic, 3), key=lambda r: (r.partition, r.offset))
    assert len(records) >= 3
    read = [json.loads(line) for r in records for _, line in unpack(r.value)]
    for user in ("u0", "u1", "u2"):
        assert [e for e in read if e["user_id"] == user] == [e for e in sent if e["user_id"] == user]
