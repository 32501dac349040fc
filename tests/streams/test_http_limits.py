"""The HTTP server under abuse, on a real worker over loopback: the one body limit on both sides of
it (Content-Length and chunked), every refusal counted by reason, slow-header and idle connections
closed within the idle timeout and counted, and a malformed or oversized request answered 4xx with one
WARNING line and no traceback."""

from __future__ import annotations

import http.client
import json
import selectors
import socket
import time
from collections.abc import Iterator

from onevec.streams.worker import WorkerProcess
from tests.kafka_helpers import post_events

MIB = 1024 * 1024
IDLE_TIMEOUT = 2.0
SLOW_CLIENTS = 200


def event(item: str, ts: float) -> bytes:
    return json.dumps({"user_id": "u1", "item_id": item, "event_type": "click", "timestamp": ts}).encode()


def padded_array(size: int) -> bytes:
    """A JSON array of two events, padded with whitespace inside to ``size`` bytes."""
    head, tail = b"[" + event("a", 1e9) + b",", event("b", 1e9 + 5) + b"]"
    return head + b" " * (size - len(head) - len(tail)) + tail


def post_chunked(worker: WorkerProcess, body: bytes, chunk: int = 256 * 1024) -> tuple[int, dict]:
    """POST /events with Transfer-Encoding: chunked (no Content-Length for the server to check)."""
    connection = http.client.HTTPConnection(worker.settings.bind_host, worker.port, timeout=60)
    parts: Iterator[bytes] = (body[i : i + chunk] for i in range(0, len(body), chunk))
    connection.request("POST", "/events", body=parts, encode_chunked=True)
    response = connection.getresponse()
    answer = json.loads(response.read())
    connection.close()
    return response.status, answer


def raw_request(worker: WorkerProcess, data: bytes) -> bytes:
    """Send raw bytes and read the whole answer (the server closes after a refusal)."""
    with socket.create_connection((worker.settings.bind_host, worker.port), timeout=30) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received


def status_of(answer: bytes) -> int:
    """The status of a raw HTTP answer (aiohttp answers a request it cannot parse as HTTP/1.0)."""
    return int(answer.split(b" ", 2)[1])


def rejections(worker: WorkerProcess) -> dict[str, float]:
    prefix = "onevec_http_rejections_total{reason="
    return {k[len(prefix) : -1]: v for k, v in worker.metrics().items() if k.startswith(prefix)}


def test_body_limit_both_sides_and_rejections_counted(start_worker) -> None:
    worker = start_worker(max_http_body_bytes=4 * MIB, http_body_timeout_seconds=1.0)

    # Above aiohttp's own 1 MiB default and under the setting: accepted, both ways of sending.
    for send in (lambda body: post_events(worker.base_url, body), lambda body: post_chunked(worker, body)):
        status, answer = send(padded_array(2 * MIB))
        assert (status, answer["accepted"]) == (200, 2), answer
    # Exactly at the limit is accepted; one byte over is onevec's 413 with a JSON error, both ways.
    assert post_events(worker.base_url, padded_array(4 * MIB))[0] == 200
    for send in (lambda body: post_events(worker.base_url, body), lambda body: post_chunked(worker, body)):
        status, answer = send(padded_array(4 * MIB + 1))
        assert (status, answer) == (413, {"error": f"body larger than {4 * MIB} bytes"})

    assert post_events(worker.base_url, b"[1, 2")[0] == 400  # bad_json, from the handler
    assert (
        status_of(raw_request(worker, b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
        == 404
    )
    # A body that stops arriving: 408 once the body timeout has passed.
    slow_body = b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n[{"
    assert status_of(raw_request(worker, slow_body)) == 408
    # Refused by aiohttp's parser before any handler: a 100 KB header, a request line that is not HTTP.
    huge_header = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
    assert status_of(raw_request(worker, huge_header)) == 400
    assert status_of(raw_request(worker, b"\x16\x03\x01 not http at all\r\n\r\n")) == 400

    counted = rejections(worker)
    assert counted == {
        "body_too_large": 2,
        "bad_json": 1,
        "not_found": 1,
        "timeout": 1,
        "line_too_long": 1,
        "bad_method": 1,
    }, counted
    log = worker.log_path.read_text(errors="replace")
    assert "Traceback" not in log and "Error handling request" not in log, log[-3000:]
    warnings = [line for line in log.splitlines() if "WARNING" in line and "HTTP 4" in line]
    # One line per malformed or oversized request (not for the 404): 2 x 413, 400, 408, 2 x parser.
    assert len(warnings) == 6, warnings


def test_slow_header_and_idle_connections_are_closed(start_worker) -> None:
    worker = start_worker(http_idle_timeout_seconds=IDLE_TIMEOUT)
    address = (worker.settings.bind_host, worker.port)
    selector = selectors.DefaultSelector()
    opened = time.monotonic()
    for n in range(SLOW_CLIENTS):
        sock = socket.create_connection(address, timeout=10)
        # Half the clients send part of a request head (slowloris), half nothing at all.
        if n % 2:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    # While they hang, the server still answers others.
    assert (
        status_of(raw_request(worker, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
        == 200
    )
    # A keep-alive client answered once, then idle: closed by the same timer, counted apart.
    kept = socket.create_connection(address, timeout=IDLE_TIMEOUT + 30)
    kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    closed_after: list[float] = []
    deadline = opened + IDLE_TIMEOUT + 30
    while len(closed_after) < SLOW_CLIENTS and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=1.0):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(1024)
            except ConnectionResetError:
                data = b""
            if data:  # a slow client gets no answer: it is only ever closed
                raise AssertionError(f"answered a half-sent request: {data[:200]!r}")
            closed_after.append(time.monotonic() - opened)
            selector.unregister(sock)
            sock.close()
    for key in list(selector.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    assert len(closed_after) == SLOW_CLIENTS, f"{len(closed_after)} of {SLOW_CLIENTS} closed"
    answered = b""
    while chunk := kept.recv(65536):  # the answer, then the close
        answered += chunk
    kept.close()
    assert status_of(answered) == 200
    # Every connection the timer closed is counted (the one with Connection: close is not).
    assert rejections(worker) == {"header_timeout": SLOW_CLIENTS, "idle_timeout": 1}
    print(
        f"{SLOW_CLIENTS} slow-header/idle connections, idle timeout {IDLE_TIMEOUT} s: closed after "
        f"{min(closed_after):.2f}-{max(closed_after):.2f} s"
    )
    # Closed by the timeout, not before it (opening all of them took part of that time).
    assert min(closed_after) >= IDLE_TIMEOUT * 0.9
    assert max(closed_after) <= IDLE_TIMEOUT + 10
