"""Security settings: loopback listeners, Kafka TLS / SASL, the Qdrant API key, the HTTP bearer
token (writes always, reads on request, never /metrics or /healthz; no empty or short token), and
secrets that never appear in logs, metrics or reprs.

Tansu 0.6.0 (the embedded broker) cannot terminate TLS here (its --cert/--key options refuse to
be combined) and its SASL users must be created through an already authenticated connection,
so for TLS the test puts a TLS-terminating proxy (Python's ssl module, a real handshake with a
real certificate) in front of a plaintext Tansu that advertises the proxy's address: the
worker's Faust/aiokafka clients and the kafka-python admin and producer then really speak TLS
to it. SASL is checked as far as the client configuration both libraries build (no broker
here can verify a SASL login).
"""

from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import faust
import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from kafka import KafkaAdminClient
from kafka.errors import KafkaError
from pydantic import ValidationError

from onevec.deploy.embedded_broker import free_port
from onevec.streams.app import broker_credentials
from onevec.streams.kafka.producer import EventProducer
from onevec.streams.kafka.topics import bootstrap_servers, ensure_topics
from onevec.streams.settings import Settings
from onevec.streams.tools.broker_proxy import TcpProxy, tansu_behind
from onevec.streams.worker import WorkerProcess, metric_total
from tests.conftest import isolated_settings
from tests.kafka_helpers import post_events, wait_processed

SECRETS = {
    "qdrant_api_key": "qdrant-key-7f3a9c1e",
    "kafka_sasl_password": "sasl-pass-2b8d4e6f",
    "http_ingest_token": "ingest-token-5c1a7d3b",
}


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (openssl CLI)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


def tls_server_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    return context


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket process ``pid`` listens on (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().as_posix()
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A = LISTEN
                address, port = local.split(":")
                if len(address) == 8:
                    text = ".".join(str(int(address[i : i + 2], 16)) for i in (6, 4, 2, 0))
                else:
                    text = "ipv6:" + address
                found.add((text, int(port, 16)))
    return found


def test_every_listener_binds_loopback_by_default(settings, start_worker, broker) -> None:
    assert Settings().bind_host == "127.0.0.1"
    worker = start_worker()
    assert worker.proc is not None
    worker_listens = listening_addresses(worker.proc.pid)
    broker_listens = listening_addresses(broker.pid)
    print(f"\nworker listens on {sorted(worker_listens)}, broker on {sorted(broker_listens)}")
    assert ("127.0.0.1", worker.port) in worker_listens
    assert worker_listens and {a for a, _ in worker_listens} == {"127.0.0.1"}
    assert broker_listens and {a for a, _ in broker_listens} == {"127.0.0.1"}


def test_security_settings_map_to_both_kafka_clients(certificate) -> None:
    cert, key = certificate
    plain = Settings()
    assert plain.kafka_client_options() == {"security_protocol": "PLAINTEXT"}
    assert broker_credentials(plain) is None

    sasl_ssl = Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-256",
        kafka_sasl_username="onevec",
        kafka_sasl_password=SECRETS["kafka_sasl_password"],
        kafka_ssl_cafile=cert,
        kafka_ssl_certfile=cert,
        kafka_ssl_keyfile=key,
    )
    assert sasl_ssl.kafka_client_options() == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": "onevec",
        "sasl_plain_password": SECRETS["kafka_sasl_password"],
        "ssl_check_hostname": True,
        "ssl_cafile": str(cert),
        "ssl_certfile": str(cert),
        "ssl_keyfile": str(key),
    }
    # What Faust hands to aiokafka, through Faust's own mapping.
    aiokafka = credentials_to_aiokafka_auth(broker_credentials(sasl_ssl))
    assert aiokafka["security_protocol"] == "SASL_SSL"
    assert aiokafka["sasl_mechanism"] == "SCRAM-SHA-256"
    assert (aiokafka["sasl_plain_username"], aiokafka["sasl_plain_password"]) == (
        "onevec",
        SECRETS["kafka_sasl_password"],
    )
    context = aiokafka["ssl_context"]
    assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname

    sasl_plain = Settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="u")
    assert (
        credentials_to_aiokafka_auth(broker_credentials(sasl_plain))["security_protocol"] == "SASL_PLAINTEXT"
    )
    assert "ssl_cafile" not in sasl_plain.kafka_client_options()
    tls_only = Settings(kafka_security_protocol="SSL", kafka_ssl_cafile=cert)
    assert isinstance(broker_credentials(tls_only), faust.SSLCredentials)

    # Secrets print masked wherever settings are shown.
    for shown in (repr(sasl_ssl), str(sasl_ssl), sasl_ssl.model_dump_json()):
        assert SECRETS["kafka_sasl_password"] not in shown


@pytest.fixture
def tls_broker(certificate) -> Iterator[str]:
    """Tansu on a plaintext loopback port, advertising a TLS proxy's port: clients speak TLS."""
    cert, key = certificate
    plain_port = free_port()
    with TcpProxy(plain_port, tls_server_context(cert, key)) as proxy, tansu_behind(proxy, plain_port) as url:
        yield url


def post(url: str, body: bytes, token: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return post_events(url, body, headers, timeout=30)[0]


def test_worker_over_tls_with_token_and_no_secret_in_logs_or_metrics(
    tls_broker, certificate, tmp_path
) -> None:
    cert, _ = certificate
    settings = isolated_settings(
        tls_broker,
        tmp_path,
        kafka_security_protocol="SSL",
        kafka_ssl_cafile=cert,
        kafka_sasl_password=SECRETS["kafka_sasl_password"],  # set but unused with SSL: must not leak
        qdrant_api_key=SECRETS["qdrant_api_key"],  # unused in local mode: must not leak either
        http_ingest_token=SECRETS["http_ingest_token"],
        log_level="debug",  # the most talkative the worker gets
    )
    # Plaintext to the TLS port fails; the configured TLS client works.
    with pytest.raises((KafkaError, OSError)):
        KafkaAdminClient(
            bootstrap_servers=tls_broker, request_timeout_ms=3000, api_version_auto_timeout_ms=3000
        )
    ensure_topics(settings)
    worker = WorkerProcess(settings, settings.broker_url).start(ready_timeout=90)
    try:
        event = {"user_id": "u", "item_id": "i", "event_type": "click", "timestamp": 1.6e9}
        body = json.dumps(event).encode()
        assert post(worker.base_url, body) == 401
        assert post(worker.base_url, body, token="wrong") == 401
        assert post(worker.base_url, body, token=SECRETS["http_ingest_token"]) == 200
        with EventProducer(
            bootstrap_servers(settings), settings.clicks_topic, **settings.kafka_client_options()
        ) as p:
            p.send({**event, "item_id": "j", "timestamp": 1.6e9 + 1})
        samples = wait_processed(worker, 2)
        assert metric_total(samples, "onevec_events_accepted_total") == 2
        assert samples["onevec_http_ingest_requests_total{status=401}"] == 2
        pages = b"".join(
            urllib.request.urlopen(f"{worker.base_url}{path}", timeout=30).read()
            for path in ("/metrics", "/stats", "/healthz")
        )
    finally:
        worker.stop()
    log_text = worker.log_path.read_bytes()
    assert log_text, "the worker wrote no log"
    shown = [repr(settings), str(settings), settings.model_dump_json()]
    for name, secret in SECRETS.items():
        assert secret.encode() not in log_text, f"{name} in the worker log"
        assert secret.encode() not in pages, f"{name} in /metrics, /stats or /healthz"
        assert all(secret not in text for text in shown), f"{name} in the settings repr"
    print(f"\nTLS worker: 2 events in over TLS, 2 x 401, log {len(log_text)} bytes without any secret")


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("", "at least 16 characters"),  # "Bearer " used to pass
        ("   ", "at least 16 characters"),
        ("short-secret-1", "at least 16 characters"),
        ("sixteen chars ok but spaces", "RFC 6750"),
        ("token-with-ümlaut-1234", "RFC 6750"),
    ],
)
def test_empty_short_or_malformed_token_is_refused_without_echoing_it(token, message, monkeypatch) -> None:
    with pytest.raises(ValidationError) as given:
        Settings(http_ingest_token=token)
    monkeypatch.setenv("ONEVEC_HTTP_INGEST_TOKEN", token)
    with pytest.raises(ValidationError) as from_env:
        Settings()
    for refused in (given, from_env):
        assert message in str(refused.value)
        if token.strip():
            assert token not in str(refused.value), "a refused token was echoed into the error"
    monkeypatch.delenv("ONEVEC_HTTP_INGEST_TOKEN")
    assert Settings().http_ingest_token is None  # unset: no token, reads and writes open
    good = "0123456789abcdef0123456789abcdef"
    assert Settings(http_ingest_token=good).http_ingest_token.get_secret_value() == good
    assert Settings().http_token_for_reads is False


def request(url: str, method: str = "GET", token: str | None = None) -> tuple[int, dict[str, str]]:
    """Status and headers of one request (the body, where there is one, is a valid event)."""
    body = None
    if method == "POST":
        body = json.dumps(
            {"user_id": "u", "item_id": "i", "event_type": "click", "timestamp": 1.6e9}
        ).encode()
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    call = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(call, timeout=30) as response:
            return response.status, dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers)


WRITES = ["/events", "/drift"]
READS = ["/stats", "/drift", "/items/i", "/similar/i", "/recommend?items=i", "/sessions/user:u"]
OPEN = ["/metrics", "/healthz"]


def test_token_guards_writes_always_and_reads_when_asked(settings, start_worker) -> None:
    token = SECRETS["http_ingest_token"]
    seen: dict[str, dict[str, int]] = {}
    for for_reads in (False, True):
        worker = start_worker(http_ingest_token=token, http_token_for_reads=for_reads)
        base = worker.base_url
        for path in WRITES:
            for wrong in (None, "wrong-token-0123456789", f"{token}x", ""):
                status, headers = request(f"{base}{path}", "POST", wrong)
                assert (status, headers.get("WWW-Authenticate", "").split()[0]) == (401, "Bearer"), path
            assert request(f"{base}{path}", "POST", token)[0] in (200, 202), path
        reads = seen["reads guarded" if for_reads else "reads open"] = {}
        for path in READS:
            status, headers = request(f"{base}{path}")
            reads[path] = status
            if for_reads:
                assert (status, headers.get("WWW-Authenticate", "").split()[0]) == (401, "Bearer"), path
            else:
                assert status != 401, path
            assert request(f"{base}{path}", token=token)[0] != 401, path
        for path in OPEN:
            assert request(f"{base}{path}")[0] == 200, path
        samples = worker.metrics()
        # Only POST /events answers count as ingest requests (4 refused, 1 accepted per worker).
        assert samples["onevec_http_ingest_requests_total{status=401}"] == 4
        worker.stop()
    print(f"\nread statuses without a token: {seen}")
