"""POST /events on a real worker: counts, dead letters and limits over real HTTP and Kafka."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from tests.kafka_helpers import post_events, read_examples, read_topic, wait_processed


def get_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def event(item: str, ts: float, **extra: object) -> dict:
    return {"user_id": "u1", "item_id": item, "event_type": "click", "timestamp": ts, **extra}


def test_http_ingest_end_to_end(settings, start_worker) -> None:
    worker = start_worker(max_http_body_bytes=64 * 1024)

    status, answer = post_events(worker.base_url, json.dumps([event("a", 1e9), event("b", 1e9 + 5)]).encode())
    assert (status, answer["accepted"], answer["rejected"]) == (200, 2, 0)

    lines = b"\n".join(
        [json.dumps(event("c", 1e9 + 9)).encode(), b"{broken", json.dumps(event("d", 12)).encode(), b""]
    )
    status, answer = post_events(worker.base_url, lines)
    assert (status, answer["accepted"], answer["rejected"]) == (200, 1, 2)
    assert [(e["index"], e["reason"]) for e in answer["errors"]] == [(1, "bad_json"), (2, "absurd_timestamp")]

    assert post_events(worker.base_url, b"   ")[0] == 400
    assert post_events(worker.base_url, b"[1, 2")[0] == 400
    assert post_events(worker.base_url, b"x" * 70_000)[0] == 413
    # Hostile JSON is a 400 with a reason (deep nesting used to be a RecursionError and a 500)...
    for body in (b"[" * 60_000, b"[" * 20_000 + b"]" * 20_000, b"[" + b"9" * 5000 + b"]"):
        status, answer = post_events(worker.base_url, body)
        assert (status, answer["reason"]) == (400, "bad_json"), answer
    # ... and one hostile line of JSON lines rejects that line alone, with its reason.
    deep = json.dumps(event("f", 1e9, x="X")).replace('"X"', "[" * 40 + "]" * 40)  # past the depth cap
    huge_time = json.dumps(event("e", 1e9)).replace("1000000000.0", "1" + "0" * 400)  # beyond float
    hostile = [deep.encode(), b"[" * 30_000, huge_time.encode()]  # starts like JSON lines
    status, answer = post_events(worker.base_url, b"\n".join(hostile))
    reasons = [e["reason"] for e in answer["errors"]]
    assert (status, answer["accepted"], reasons) == (200, 0, ["bad_json", "bad_json", "invalid_field"])

    samples = wait_processed(worker, 3)  # the stream stage sees the three accepted events
    examples = read_examples(settings, 3)
    assert [(e["item_id"], e["prefix"]) for e in sorted(examples, key=lambda e: e["timestamp"])] == [
        ("a", []),
        ("b", ["a"]),
        ("c", ["a", "b"]),
    ]
    assert {e["session_id"] for e in examples} == {"user:u1@1000000000"}
    dead = read_topic(settings, settings.dlq_topic, 5)
    assert sorted(dict(r.headers)["onevec-reason"] for r in dead) == [
        b"absurd_timestamp",
        *[b"bad_json"] * 3,
        b"invalid_field",
    ]
    assert all(dict(r.headers)["onevec-stage"] == b"http" for r in dead)
    assert samples["onevec_http_ingest_requests_total{status=200}"] == 3
    assert samples["onevec_http_ingest_requests_total{status=400}"] == 5
    assert samples["onevec_http_ingest_requests_total{status=413}"] == 1

    # Lookups refuse a bad result count with a clear 400 instead of failing inside.
    for path in ("/similar/a?k=abc", "/similar/a?k=0", "/recommend?items=a&k=100000"):
        assert get_status(f"{worker.base_url}{path}") == 400, path
