"""The chaos soak of ``onevec chaos`` at test size: 3,000 MovieLens-100k events (+ 9 malformed)
replayed into two ingest workers and a learn worker while each of them is killed with SIGKILL,
every broker connection is cut for 10 s and the learn worker's Qdrant is down for 15 s; then
the input is reconciled against the examples, the dead letters and Qdrant. Real broker (Tansu
behind a TCP proxy), real worker processes, the learn worker's Qdrant in local mode on disk
behind an outage switch (see onevec.streams.tools.qdrant_outage)."""

from __future__ import annotations

import dataclasses

import pytest
from rich.console import Console

from onevec.streams.settings import Settings
from onevec.streams.tools.chaos import ChaosPlan, ChaosResult, last_log_line, report, soak

PLAN = ChaosPlan(events=3_000, kills=4, cuts=1, outages=1, every=3.0, ingest_workers=2, catch_up_seconds=300)


@pytest.fixture(scope="module")
def soaked(tmp_path_factory: pytest.TempPathFactory) -> ChaosResult:
    workdir = tmp_path_factory.mktemp("chaos")
    console = Console(width=120)
    result = soak(Settings(data_dir=workdir / "data"), dataclasses.replace(PLAN, workdir=workdir), console)
    report(result, console)
    return result


def test_soak_loses_no_accepted_event_and_flags_every_duplicate(soaked: ChaosResult) -> None:
    r = soaked.reconciliation
    assert sum(soaked.kills.values()) == PLAN.kills and set(soaked.kills) == {"ingest-1", "ingest-2", "learn"}
    assert (soaked.cuts, soaked.outages) == (PLAN.cuts, PLAN.outages)
    assert soaked.caught_up, "the pipeline did not catch up after the faults"
    assert r.valid == PLAN.events and r.malformed == 9
    assert r.lost == 0, f"accepted events lost; their clicks: {soaked.lost_where}"
    assert r.unlearned == 0, f"events never learned (only flagged copies): {soaked.lost_where}"
    assert r.duplicates_unflagged == 0
    assert (r.dead_lost, r.wrong_reasons) == (0, 0)
    assert r.items_missing == 0 and r.items_in_qdrant == r.items_expected > 0
    for name, memory in soaked.memory.items():
        assert 0 < memory.start <= memory.peak and 0 < memory.end <= memory.peak, name


def test_soak_keeps_each_items_click_count_in_qdrant(soaked: ChaosResult) -> None:
    r = soaked.reconciliation
    assert r.clicks_checked
    assert r.items_wrong_clicks == 0, f"clicks short {r.clicks_short}, extra {r.clicks_extra}"


def test_a_crash_is_told_by_its_logs_last_line(tmp_path) -> None:
    log = tmp_path / "ingest-1.3.log"
    last = "error: cannot reach the broker (ONEVEC_BROKER_URL)"
    log.write_text(f"worker web on http://127.0.0.1:1\n\n{last}\n\n")
    assert last_log_line(log) == last
    assert last_log_line(tmp_path / "none.log") == "no log"
    (tmp_path / "empty.log").write_text("")
    assert last_log_line(tmp_path / "empty.log") == "an empty log"
