"""POST /events on a real worker: counts, dead letters and limits over real HTTP and Kafka."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from tests.kafka_helpers import read_topic, wait_processed


def get_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/events", data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def event(item: str, ts: float, **extra: object) -> dict:
    return {"user_id": "u1", "item_id": item, "event_type": "click", "timestamp": ts, **extra}


def test_http_ingest_end_to_end(settings, start_worker) -> None:
    worker = start_worker(max_http_body_bytes=4096)

    status, answer = post(worker.base_url, json.dumps([event("a", 1e9), event("b", 1e9 + 5)]).encode())
    assert (status, answer["accepted"], answer["rejected"]) == (200, 2, 0)

    lines = b"\n".join(
        [json.dumps(event("c", 1e9 + 9)).encode(), b"{broken", json.dumps(event("d", 12)).encode(), b""]
    )
    status, answer = post(worker.base_url, lines)
    assert (status, answer["accepted"], answer["rejected"]) == (200, 1, 2)
    assert [(e["index"], e["reason"]) for e in answer["errors"]] == [(1, "bad_json"), (2, "absurd_timestamp")]

    assert post(worker.base_url, b"   ")[0] == 400
    assert post(worker.base_url, b"[1, 2")[0] == 400
    assert post(worker.base_url, b"x" * 5000)[0] == 413

    samples = wait_processed(worker, 3)  # the stream stage sees the three accepted events
    examples = [json.loads(r.value) for r in read_topic(settings, settings.examples_topic, 3)]
    assert [(e["item_id"], e["prefix"]) for e in sorted(examples, key=lambda e: e["timestamp"])] == [
        ("a", []),
        ("b", ["a"]),
        ("c", ["a", "b"]),
    ]
    assert {e["session_id"] for e in examples} == {"user:u1@1000000000"}
    dead = read_topic(settings, settings.dlq_topic, 2)
    assert sorted(dict(r.headers)["onevec-reason"] for r in dead) == [b"absurd_timestamp", b"bad_json"]
    assert all(dict(r.headers)["onevec-stage"] == b"http" for r in dead)
    assert samples["onevec_http_ingest_requests_total{status=200}"] == 2
    assert samples["onevec_http_ingest_requests_total{status=413}"] == 1

    # Lookups refuse a bad result count with a clear 400 instead of failing inside.
    for path in ("/similar/a?k=abc", "/similar/a?k=0", "/recommend?items=a&k=100000"):
        assert get_status(f"{worker.base_url}{path}") == 400, path
