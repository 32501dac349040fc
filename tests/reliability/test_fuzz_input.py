"""Property-based fuzzing of input validation, the HTTP ingest and the stream path.

Thousands of malformed, oversize, non-UTF-8, NaN / infinite and adversarial records (JSON nested
past the parser's recursion, numbers past float range or with thousands of digits, very long
strings included): the event and catalogue validators never raise, a real worker never crashes,
every rejected record lands on the dead-letter topic with its reason, the HTTP path answers with
clear status codes (400, never 500), and the size limits hold.
"""

from __future__ import annotations

import math
import time
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from onevec.models.catalog import CatalogItem, validate_catalog_record
from onevec.models.clickstream.events import MAX_ID_CHARS, Event, Rejection, ValidationLimits, validate_event
from onevec.streams.kafka.producer import EventProducer
from onevec.streams.kafka.topics import bootstrap_servers
from onevec.streams.worker import metric_total
from tests.kafka_helpers import post_events, read_examples, read_topic
from tests.reliability.fuzz_strategies import (
    CATALOG_REASONS,
    REASONS,
    catalog_records_raw,
    dumps,
    records,
    valid_event,
)
from tests.reliability.reconcile import wait_for

LIMIT = 2048  # max_event_bytes for these tests: oversize records stay cheap to generate
LIMITS = ValidationLimits(max_event_bytes=LIMIT)
FUZZ = hypothesis_settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)


@hypothesis_settings(FUZZ, max_examples=4000)
@given(raw=records(LIMIT))
def test_validator_never_raises_and_explains_every_rejection(raw: bytes) -> None:
    now = time.time()
    result = validate_event(raw, LIMITS, now=now)
    if isinstance(result, Rejection):
        assert result.reason in REASONS and result.detail
        if len(raw) > LIMIT:
            assert result.reason == "oversize"
        return
    assert isinstance(result, Event)
    assert len(raw) <= LIMIT
    assert math.isfinite(result.timestamp) and LIMITS.min_event_time <= result.timestamp
    assert result.timestamp <= now + LIMITS.max_clock_skew_seconds
    assert 0 < len(result.user_id) <= MAX_ID_CHARS and 0 < len(result.item_id) <= MAX_ID_CHARS
    assert result.price is None or (math.isfinite(result.price) and result.price >= 0)
    # What the HTTP path forwards (Event.to_json) validates again to the same event.
    assert validate_event(result.to_json(), ValidationLimits(max_event_bytes=10 * LIMIT), now=now) == result


@hypothesis_settings(FUZZ, max_examples=1000)
@given(
    event=valid_event,
    extra=st.sampled_from([math.nan, math.inf, -math.inf]),
    field=st.sampled_from(["timestamp", "price", "quantity", "user_id", "item_id"]),
)
def test_nan_and_infinity_never_get_in(event: dict, extra: float, field: str) -> None:
    raw = dumps({**event, field: extra})
    result = validate_event(raw, LIMITS)
    assert isinstance(result, Rejection) and result.reason == "bad_json"


CATALOG_LIMIT = 64 * 1024


@hypothesis_settings(FUZZ, max_examples=2000)
@given(raw=catalog_records_raw())
def test_catalog_validator_never_raises(raw: bytes) -> None:
    result = validate_catalog_record(raw, max_bytes=CATALOG_LIMIT)
    event("valid" if isinstance(result, CatalogItem) else result.reason)  # --hypothesis-show-statistics
    if isinstance(result, Rejection):
        assert result.reason in CATALOG_REASONS and result.detail
        return
    assert isinstance(result, CatalogItem)
    assert 0 < len(result.item_id) <= MAX_ID_CHARS
    assert all(isinstance(word, str) for word in result.document)
    assert result.image is None or (result.image.shape == (28, 28) and result.image.dtype == np.uint8)


PIXELS = "[" + "0," * 783 + "{}]"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"[" * 200_000, "oversize"),
        (b"[" * 60_000, "bad_json"),  # RecursionError inside the parser
        (b'{"item_id": 1, "a": ' + b"[" * 60_000, "bad_json"),
        (b'{"item_id": 1, "a": ' + b"[" * 500 + b"]" * 500 + b"}", "wrong_shape"),
        (b'{"item_id": 1, "rating": ' + b"9" * 5000 + b"}", "bad_json"),  # over int()'s digit limit
        (b'{"item_id": ' + b"1" + b"0" * 400 + b"}", "invalid_field"),  # a 401-character id
        (b'{"item_id": 1, "image_pixels": ' + PIXELS.format("1" + "0" * 400).encode() + b"}", "wrong_shape"),
        (b'{"item_id": 1, "image_pixels": ' + PIXELS.format("1e400").encode() + b"}", "invalid_field"),
    ],
)
def test_hostile_catalogue_json_is_a_rejection(raw: bytes, reason: str) -> None:
    result = validate_catalog_record(raw, max_bytes=CATALOG_LIMIT)
    assert isinstance(result, Rejection) and (result.reason, bool(result.detail)) == (reason, True)


def as_line(raw: bytes) -> bytes | None:
    """A record as one JSON-lines line (None when it cannot be one: blank after removing
    line breaks, which JSON lines cannot carry)."""
    line = raw.replace(b"\n", b" ").replace(b"\r", b" ")
    return line if line.strip() else None


def test_fuzzed_http_and_stream_inputs_reconcile_with_the_dlq(settings, start_worker) -> None:
    worker = start_worker(max_event_bytes=LIMIT, max_http_body_bytes=64 * 1024)
    fence = dumps({"user_id": "fence", "item_id": "f", "event_type": "view", "timestamp": 1.6e9})
    sent_http: list[bytes] = []
    rejected_http: Counter[tuple[bytes, str]] = Counter()
    accepted_http = bodies = 0

    # HTTP: batches of fuzzed records as JSON lines, each body between two valid fence events
    # (so the body neither starts like a JSON array nor loses trailing bytes to the body strip).
    @hypothesis_settings(FUZZ, max_examples=60)
    @given(batch=st.lists(records(LIMIT), min_size=25, max_size=50))
    def post_batch(batch: list[bytes]) -> None:
        nonlocal accepted_http, bodies
        bodies += 1
        lines = [line for line in map(as_line, batch) if line is not None]
        status, answer = post_events(worker.base_url, b"\n".join([fence, *lines, fence]))
        assert status == 200, answer
        now = time.time()
        outcomes = [validate_event(line, LIMITS, now=now) for line in lines]
        assert answer["accepted"] == 2 + sum(isinstance(o, Event) for o in outcomes)
        assert answer["rejected"] == sum(isinstance(o, Rejection) for o in outcomes)
        assert [e["reason"] for e in answer["errors"]] == [
            o.reason for o in outcomes if isinstance(o, Rejection)
        ]
        sent_http.extend(lines)
        accepted_http += answer["accepted"]
        rejected_http.update(
            (line, o.reason) for line, o in zip(lines, outcomes, strict=True) if isinstance(o, Rejection)
        )

    post_batch()

    # Stream: fuzzed records straight onto the clicks topic, as a buggy producer would send them.
    stream_records: list[tuple[bytes | None, bytes]] = []

    @hypothesis_settings(FUZZ, max_examples=2000)
    @given(raw=records(LIMIT), key=st.one_of(st.none(), st.binary(max_size=16)))
    def collect(raw: bytes, key: bytes | None) -> None:
        stream_records.append((key, raw))

    collect()
    now = time.time()
    rejected_stream = Counter(
        (raw, o.reason)
        for _, raw in stream_records
        if isinstance(o := validate_event(raw, LIMITS, now=now), Rejection)
    )
    with EventProducer(bootstrap_servers(settings), settings.clicks_topic) as producer:
        for key, raw in stream_records:
            producer.send_raw(key, raw)

    total_in = accepted_http + len(stream_records)  # everything the stream stage sees

    def stream_done() -> bool:  # the stream stage has accepted or rejected every input
        samples = worker.metrics()
        rejected = sum(
            v
            for k, v in samples.items()
            if k.startswith("onevec_events_rejected_total{") and "stage=stream" in k
        )
        return metric_total(samples, "onevec_events_accepted_total") + rejected >= total_in

    wait_for(stream_done, "the stream stage to see every input", timeout=180)
    samples = worker.metrics()
    assert worker.proc is not None and worker.proc.poll() is None, "worker crashed"

    dead = read_topic(
        settings, settings.dlq_topic, sum(rejected_http.values()) + sum(rejected_stream.values())
    )
    by_stage: dict[str, Counter] = {"http": Counter(), "stream": Counter()}
    for record in dead:
        headers = dict(record.headers)
        assert headers["onevec-detail"]
        by_stage[headers["onevec-stage"].decode()][(record.value, headers["onevec-reason"].decode())] += 1
    print(
        f"\nfuzz: HTTP {len(sent_http)} records in {bodies} bodies -> "
        f"{accepted_http} accepted (incl. fences), {sum(rejected_http.values())} rejected; "
        f"stream {len(stream_records)} records -> {sum(rejected_stream.values())} rejected; "
        f"DLQ http {sum(by_stage['http'].values())}, stream {sum(by_stage['stream'].values())}; "
        f"reasons {dict(Counter(reason for _, reason in rejected_http + rejected_stream))}"
    )
    assert by_stage["http"] == rejected_http
    assert by_stage["stream"] == rejected_stream  # what HTTP accepted, the stream accepts too
    accepted = metric_total(samples, "onevec_events_accepted_total")
    assert accepted == total_in - sum(rejected_stream.values())
    examples = read_examples(settings, int(accepted), timeout=60)
    assert len(examples) == accepted


def test_http_limits_and_status_codes(settings, start_worker) -> None:
    worker = start_worker(max_event_bytes=LIMIT, max_http_body_bytes=8192)
    good = dumps({"user_id": 1, "item_id": 2, "event_type": "click", "timestamp": 1.6e9})
    assert post_events(worker.base_url, good)[0] == 200
    assert post_events(worker.base_url, b"")[0] == 400  # empty
    assert post_events(worker.base_url, b"[" + good + b",")[0] == 400  # broken JSON array
    assert post_events(worker.base_url, b"\n".join([good] * 200))[0] == 413  # body over the limit
    status, answer = post_events(worker.base_url, b"[" + dumps({"pad": "x" * 3000}) + b"]")
    assert (status, answer["rejected"], answer["errors"][0]["reason"]) == (200, 1, "oversize")
    status, answer = post_events(worker.base_url, b"\xff\xfe" + good)
    assert (status, answer["errors"][0]["reason"]) == (200, "bad_encoding")
    samples = worker.metrics()
    assert samples["onevec_http_ingest_requests_total{status=413}"] == 1
    assert samples["onevec_http_ingest_requests_total{status=400}"] == 2
