"""The pipeline's ceilings (``onevec.streams.tools.bench.ceilings``) on a real Tansu broker, with
a few synthetic clicks: the raw consumers read exactly what was sent and keep the sessionizer's
state; without the peer's virtualenv the bench prints "not installed", never a number; with it
the Quix Streams peer drains the topic with its state changelogged. No timing assertions."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from kafka import KafkaAdminClient
from rich.console import Console

from onevec.streams.kafka.producer import EventProducer, event_key
from onevec.streams.kafka.topics import bootstrap_servers
from onevec.streams.settings import Settings
from onevec.streams.tools.bench.ceilings import (
    NOT_INSTALLED,
    PEER_PYTHON,
    drain,
    measure_ceilings,
    peer_rate,
)
from onevec.streams.tools.bench.report import BenchRow, render_table, write_reports

SESSIONS = 5
EVENTS = 120


def synthetic_clicks() -> list[dict[str, object]]:
    """Synthetic: EVENTS clicks over SESSIONS sessions, item ids counting up per session."""
    return [
        {
            "user_id": f"u{n % SESSIONS}",
            "session_id": f"s{n % SESSIONS}",
            "item_id": f"i{n // SESSIONS}",
            "event_type": "click",
            "timestamp": 1_700_000_000.0 + n,
        }
        for n in range(EVENTS)
    ]


@pytest.fixture
def clicks(settings: Settings) -> list[dict[str, object]]:
    events = synthetic_clicks()
    with EventProducer(bootstrap_servers(settings), settings.clicks_topic) as producer:
        producer.send_many(events)
    return events


def test_raw_consumers_read_every_click_and_keep_each_sessions_last_items(
    settings: Settings, clicks: list[dict[str, object]]
) -> None:
    counted = drain(settings, EVENTS)
    assert counted.records == EVENTS
    assert counted.sessions == {}
    assert math.isfinite(counted.rate) and counted.rate > 0

    parsed = drain(settings, EVENTS, session_items=3)
    assert parsed.records == EVENTS
    expected: dict[bytes | None, tuple[list[str], float]] = {}
    for event in clicks:
        items = [e["item_id"] for e in clicks if e["session_id"] == event["session_id"]]
        last = max(float(str(e["timestamp"])) for e in clicks if e["session_id"] == event["session_id"])
        expected[event_key(event)] = ([str(i) for i in items[-3:]], last)
    assert parsed.sessions == expected
    assert len(expected) == SESSIONS

    # Asked for more than the topic holds, it fails instead of timing a part of it.
    with pytest.raises(TimeoutError):
        drain(settings, EVENTS + 1, timeout=2.0)


def test_without_the_peer_environment_the_row_says_not_installed(
    settings: Settings, clicks: list[dict[str, object]], tmp_path: Path
) -> None:
    ceilings = measure_ceilings(settings, EVENTS, passes=1, peer_python=tmp_path / "absent" / "python")
    assert ceilings.peer is None and ceilings.peer_missing == NOT_INSTALLED
    rows = {row.measure: row for row in ceilings.rows(settings.max_session_items)}
    peer = rows["Quix Streams peer: per-session state (RocksDB + changelog)"]
    assert peer.unavailable == NOT_INSTALLED and math.isnan(peer.value) and peer.ratio is None
    for row in rows.values():
        if row is not peer:
            assert math.isfinite(row.value) and row.value > 0, row
    # Every ceiling but raw aiokafka itself is given as a share of raw aiokafka.
    raw = rows["raw aiokafka getmany (physical ceiling)"]
    assert raw.ceiling is None
    assert {row.ceiling for row in rows.values() if row is not raw} == {raw.value}

    console = Console(record=True, width=300)
    console.print(render_table(list(rows.values()), "ceilings"))
    assert f"| {NOT_INSTALLED} |" in _markdown(list(rows.values()), tmp_path)
    printed = console.export_text()
    assert NOT_INSTALLED in printed and "nan" not in printed


@pytest.mark.skipif(
    not PEER_PYTHON.exists(),
    reason="no .peer-venv (scripts/peer-env.sh); the bench's not-installed path is tested above",
)
def test_the_quix_peer_drains_the_clicks_with_its_state_changelogged(
    settings: Settings, clicks: list[dict[str, object]]
) -> None:
    rate = peer_rate(settings, EVENTS, timeout=180)
    assert math.isfinite(rate) and rate > 0
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers(settings))
    try:
        changelogs = [t for t in admin.list_topics() if t.endswith(f"--{settings.clicks_topic}--default")]
    finally:
        admin.close()
    assert changelogs and all(t.startswith("changelog__") for t in changelogs)


def _markdown(rows: list[BenchRow], tmp_path: Path) -> str:
    write_reports(rows, "ceilings", tmp_path / "ceilings")
    return (tmp_path / "ceilings.md").read_text()
