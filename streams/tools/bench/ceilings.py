"""The pipeline's ceilings: how fast other consumers read the clicks the pipeline replayed, on
the same broker, once every worker has stopped.

- raw aiokafka: ``getmany`` from the earliest offset, counting records. This is the physical
  ceiling of a Python consumer on this broker;
- raw aiokafka + ``json.loads`` + a per-session dict holding the sessionizer's state (the last
  ``max_session_items`` items and the last event time per record key), kept in memory only;
- the peer: a Quix Streams app keeping the same state in RocksDB, with its changelog
  (``quix_peer``), run from its own virtualenv (``scripts/peer-env.sh``);
- the no-op Faust agent (``noop``), as a reference.

Each is measured ``passes`` times, in the reverse order on every other pass, so that a change in
the machine's load favours none of them; a row gives the median. The caller's own measurements
of the same events (``also``: onevec's sessionize stage) join the same passes. A raw drain of the pipeline's
40,000 events takes 0.1-0.4 s, where the machine's other work moves one figure by up to 2x, so
the raw consumers drain ``RAW_DRAINS`` times per pass.
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from onevec.deploy.processes import start_child, stop_process
from onevec.streams.kafka.topics import bootstrap_servers
from onevec.streams.settings import Settings
from onevec.streams.tools.bench.noop import noop_rate
from onevec.streams.tools.bench.quix_peer import remember
from onevec.streams.tools.bench.report import BenchRow, format_value

__all__ = [
    "NOT_INSTALLED",
    "PEER_PYTHON",
    "Ceilings",
    "Drained",
    "drain",
    "measure_ceilings",
    "peer_missing",
    "peer_rate",
]

# scripts/peer-env.sh creates it at the root of the repository.
PEER_PYTHON = Path(__file__).resolve().parents[3] / ".peer-venv" / "bin" / "python"
NOT_INSTALLED = "not installed: run scripts/peer-env.sh"
PEER_SCRIPT = Path(__file__).with_name("quix_peer.py")  # run as a script: it cannot import onevec

RAW, PARSED, PEER, NOOP = "raw", "parsed", "peer", "noop"
RAW_DRAINS = 5


@dataclass
class Drained:
    """What one raw consumer read: the records, the seconds from its first fetch to the last
    record, and (when parsing) each record key's last items and last event time."""

    records: int
    seconds: float
    sessions: dict[bytes | None, tuple[list[str], float]]

    @property
    def rate(self) -> float:
        return self.records / max(self.seconds, 1e-9)


def drain(settings: Settings, count: int, session_items: int = 0, timeout: float = 120.0) -> Drained:
    """Read the first ``count`` records of the clicks topic with a bare aiokafka consumer (no
    consumer group: partitions assigned, from the earliest offset). With ``session_items`` each
    record is decoded and applied to a per-key dict of the last ``session_items`` items and the
    last event time."""
    return asyncio.run(_drain(settings, count, session_items, timeout))


async def _drain(settings: Settings, count: int, session_items: int, timeout: float) -> Drained:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers(settings), enable_auto_commit=False, **_security(settings)
    )
    await consumer.start()
    try:
        await consumer.topics()  # metadata, so that the topic's partitions are known
        partitions = [
            TopicPartition(settings.clicks_topic, p)
            for p in sorted(consumer.partitions_for_topic(settings.clicks_topic) or ())
        ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        sessions: dict[bytes | None, tuple[list[str], float]] = {}
        seen = 0
        started = time.perf_counter()
        while seen < count:
            if time.perf_counter() - started > timeout:
                raise TimeoutError(
                    f"read {seen} of {count} records of {settings.clicks_topic} in {timeout:.0f}s"
                )
            batches = await consumer.getmany(timeout_ms=500, max_records=count - seen)
            for records in batches.values():
                seen += len(records)
                if session_items:
                    for record in records:
                        event = json.loads(record.value)
                        items, _ = sessions.get(record.key, ([], 0.0))
                        sessions[record.key] = (
                            remember(items, event["item_id"], session_items),
                            event["timestamp"],
                        )
        return Drained(seen, time.perf_counter() - started, sessions)
    finally:
        await consumer.stop()


def _security(settings: Settings) -> dict[str, Any]:
    """kafka-python's security options in aiokafka's terms (TLS as one SSL context)."""
    options = {k: v for k, v in settings.kafka_client_options().items() if not k.startswith("ssl_")}
    context = settings.kafka_ssl_context()
    if context is not None:
        options["ssl_context"] = context
    return options


def peer_missing(settings: Settings, python: Path = PEER_PYTHON) -> str:
    """Why the peer cannot run here ("" when it can)."""
    if not python.exists():
        return NOT_INSTALLED
    if settings.kafka_security_protocol != "PLAINTEXT":
        return f"not run: the peer connects without {settings.kafka_security_protocol}"
    return ""


def peer_rate(settings: Settings, count: int, python: Path = PEER_PYTHON, timeout: float = 300.0) -> float:
    """Events/s of the Quix Streams peer (``quix_peer``) draining the first ``count`` events of
    the clicks topic in a consumer group and a state folder of its own."""
    broker = settings.faust_broker_options
    # The worker's consumer-group timeouts: Tansu holds a join for half the session timeout.
    consumer: dict[str, Any] = {
        name: int(broker[option] * 1000)
        for name, option in (
            ("session.timeout.ms", "broker_session_timeout"),
            ("heartbeat.interval.ms", "broker_heartbeat_interval"),
        )
        if option in broker
    }
    tmp = Path(tempfile.mkdtemp(prefix="onevec-bench-peer-"))
    log_path = tmp / "peer.log"
    command: list[str | Path] = [
        python,
        "-I",  # its own environment only: no PYTHONPATH, no user site
        PEER_SCRIPT,
        ",".join(bootstrap_servers(settings)),
        settings.clicks_topic,
        str(count),
        str(settings.max_session_items),
        tmp / "state",
        _unique(f"{settings.app_id}-peer"),
        json.dumps(consumer),
    ]
    with open(log_path, "ab") as log:
        proc = start_child(command, log=log)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise TimeoutError(
            f"the peer did not drain {count} events in {timeout:.0f}s; log: {log_path}"
        ) from None
    finally:
        stop_process(proc, 30)
    for line in reversed(log_path.read_text(errors="replace").splitlines()):
        if line.startswith('{"peer"'):
            done = json.loads(line)
            return float(done["count"]) / max(float(done["elapsed"]), 1e-9)
    raise RuntimeError(f"the peer exited with {proc.returncode} and no result; log: {log_path}")


@dataclass(frozen=True)
class Ceilings:
    """Events/s of each ceiling on the same ``events``, one figure per run; the peer has none
    when it could not run (``peer_missing`` says why)."""

    events: int
    rates: dict[str, list[float]]
    peer_missing: str = ""

    @property
    def raw(self) -> float:
        return statistics.median(self.rates[RAW])

    @property
    def peer(self) -> float | None:
        return statistics.median(self.rates[PEER]) if PEER in self.rates else None

    @property
    def noop(self) -> float:
        return statistics.median(self.rates[NOOP])

    def median(self, name: str) -> float:
        """The median rate of one of the measurements (a ceiling's or one passed as ``also``)."""
        return statistics.median(self.rates[name])

    def rows(self, session_items: int) -> list[BenchRow]:
        """One row per ceiling, each but the first with its ratio to raw aiokafka."""
        state = f"the last {session_items} items and the last event time per record key"
        peer = self.peer
        return [
            BenchRow(
                "pipeline",
                "raw aiokafka getmany (physical ceiling)",
                self.raw,
                "ev/s",
                note=f"{self.events:,} events from the earliest offset, no group; {self.runs_note(RAW)}",
            ),
            BenchRow(
                "pipeline",
                "raw aiokafka + json.loads + per-session dict",
                statistics.median(self.rates[PARSED]),
                "ev/s",
                self.raw,
                note=f"{state}, in memory; {self.runs_note(PARSED)}",
            ),
            BenchRow(
                "pipeline",
                "Quix Streams peer: per-session state (RocksDB + changelog)",
                math.nan if peer is None else peer,
                "ev/s",
                self.raw,
                note=f"{state} in Quix's state, changelogged; timed from the first event to the end "
                "of its run (the checkpoint after the last event writes the state and its changelog); "
                + self.runs_note(PEER),
                unavailable=self.peer_missing,
            ),
            BenchRow(
                "pipeline",
                "no-op Faust agent (reference)",
                self.noop,
                "ev/s",
                self.raw,
                note=f"an agent that only counts, the worker's Faust options; {self.runs_note(NOOP)}",
            ),
        ]

    def runs_note(self, name: str) -> str:
        """How many runs a row's median is of, and their spread."""
        runs = self.rates.get(name, [])
        if len(runs) < 2:
            return f"{len(runs)} run"
        return f"median of {len(runs)} runs, {format_value(min(runs))}-{format_value(max(runs))}"


def measure_ceilings(
    settings: Settings,
    count: int,
    passes: int,
    peer_python: Path = PEER_PYTHON,
    also: Mapping[str, Callable[[], float]] | None = None,
) -> Ceilings:
    """Every ceiling on the first ``count`` events of the clicks topic, and each measurement of
    ``also`` (by name), ``passes`` times, the order reversed on every other pass."""
    missing = peer_missing(settings, peer_python)
    runs: dict[str, Callable[[], list[float]]] = {
        RAW: lambda: [drain(settings, count).rate for _ in range(RAW_DRAINS)],
        PARSED: lambda: [drain(settings, count, settings.max_session_items).rate for _ in range(RAW_DRAINS)],
    }
    if not missing:
        runs[PEER] = lambda: [peer_rate(settings, count, peer_python)]
    # A consumer group of its own each pass: a group that committed starts at the end.
    runs[NOOP] = lambda: [noop_rate(settings.model_copy(update={"app_id": _unique(settings.app_id)}), count)]
    runs.update({name: _one_run(measure) for name, measure in (also or {}).items()})
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for number in range(passes):
        for name in list(runs) if number % 2 == 0 else list(reversed(runs)):
            rates[name] += runs[name]()
    return Ceilings(count, rates, missing)


def _one_run(measure: Callable[[], float]) -> Callable[[], list[float]]:
    return lambda: [measure()]


def _unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"
