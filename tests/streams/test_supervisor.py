"""The default worker layout: a supervisor with an ingest and a learn child on a real broker,
one web port in front of them. A child killed with SIGKILL is restarted (a new PID, shown in
/healthz and counted in /metrics) and the stream goes on; the children end with the
supervisor, whether it is stopped (SIGTERM) or killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest

from onevec.streams.gateway import merge_metrics, route_role
from onevec.streams.settings import Settings
from onevec.streams.supervisor import backoff_seconds, supervises
from onevec.streams.worker import WorkerProcess, metric_total
from tests.reliability.reconcile import wait_for

SERVE_TIMEOUT = 60.0


def post_click(worker: WorkerProcess, item: str) -> dict[str, Any]:
    """One click on ``item`` (its own session) through the supervisor's POST /events."""
    click = {
        "user_id": "probe",
        "session_id": item,
        "item_id": item,
        "event_type": "click",
        "timestamp": time.time(),
    }
    request = urllib.request.Request(f"{worker.base_url}/events", data=json.dumps([click]).encode())
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
        return json.loads(response.read())


def served(worker: WorkerProcess, item: str) -> bool:
    """Whether the learn child serves ``item`` through the supervisor (503 while it starts)."""
    try:
        return worker.get_json(f"/items/{item}") is not None
    except urllib.error.HTTPError as error:
        if error.code == 503:
            return False
        raise


def children(worker: WorkerProcess) -> dict[str, dict[str, Any]]:
    return worker.get_json("/healthz")["children"]


def restarted(worker: WorkerProcess, role: str, old_pid: int) -> bool:
    child = children(worker)[role]
    return child["pid"] not in (None, old_pid) and child["ready"]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_the_supervised_default_restarts_a_killed_half_and_stops_with_itself(settings: Settings) -> None:
    worker = WorkerProcess(settings, settings.broker_url, supervised=True)
    worker.start(ready_timeout=120)
    try:
        health = worker.get_json("/healthz")
        assert health["role"] == "supervised"
        assert set(health["parts"]) == {"sessions", "learner"}
        first = {role: child["pid"] for role, child in health["children"].items()}
        assert set(first) == {"ingest", "learn"} and worker.proc is not None
        assert worker.proc.pid not in first.values()
        tag = uuid.uuid4().hex[:6]

        # The learn half dies: lookups answer 503 meanwhile, ingestion goes on.
        os.kill(first["learn"], signal.SIGKILL)
        wait_for(lambda: children(worker)["learn"]["pid"] != first["learn"], "learn child noticed", 10, 0.1)
        assert post_click(worker, f"during-{tag}")["accepted"] == 1
        wait_for(lambda: restarted(worker, "learn", first["learn"]), "learn child restarted", SERVE_TIMEOUT)
        learn = children(worker)["learn"]
        assert (learn["restarts"], learn["last_exit"]) == (1, "signal SIGKILL")
        # The click sent while the learner was down is learned by the new one.
        wait_for(lambda: served(worker, f"during-{tag}"), "the click sent meanwhile served", SERVE_TIMEOUT)

        # The ingest half dies: the new one takes the clicks partitions and the stream continues.
        os.kill(first["ingest"], signal.SIGKILL)
        wait_for(
            lambda: restarted(worker, "ingest", first["ingest"]), "ingest child restarted", SERVE_TIMEOUT
        )
        assert children(worker)["ingest"]["restarts"] == 1
        assert post_click(worker, f"after-{tag}")["accepted"] == 1
        wait_for(lambda: served(worker, f"after-{tag}"), "a click after both restarts served", SERVE_TIMEOUT)

        samples = worker.metrics()
        for role in ("ingest", "learn"):
            assert metric_total(samples, "onevec_worker_restarts_total", role) == 1
            assert metric_total(samples, "onevec_worker_child_up", role) == 1
        assert metric_total(samples, "onevec_events_accepted_total", "ingest") >= 1
        assert metric_total(samples, "onevec_examples_learned_total", "learn") >= 1
        last = {role: child["pid"] for role, child in children(worker).items()}
    finally:
        code = worker.stop()
    assert code == 0  # SIGTERM: the children were stopped, then the supervisor ended
    for pid in [*first.values(), *last.values()]:
        assert gone(pid), f"child {pid} outlived the supervisor"


def test_the_children_die_with_a_killed_supervisor(settings: Settings) -> None:
    worker = WorkerProcess(settings, settings.broker_url, supervised=True)
    worker.start(ready_timeout=120)
    pids = [child["pid"] for child in children(worker).values()]
    worker.kill()  # SIGKILL: no Python cleanup runs in the supervisor
    wait_for(lambda: all(gone(pid) for pid in pids), "children gone after the supervisor", 40)


def test_a_worker_without_a_role_is_supervised_and_an_explicit_all_is_not(monkeypatch) -> None:
    monkeypatch.delenv("ONEVEC_ROLE", raising=False)
    assert supervises(Settings())
    assert not supervises(Settings(role="all"))
    monkeypatch.setenv("ONEVEC_ROLE", "all")
    assert not supervises(Settings())


def test_restart_backoff_doubles_up_to_its_cap() -> None:
    assert [backoff_seconds(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_routes_go_to_the_child_that_runs_them() -> None:
    assert route_role("/events") == route_role("/sessions") == route_role("/sessions/user:1") == "ingest"
    for path in ("/items/1", "/similar/1", "/recommend", "/stats", "/drift", "/eventsx"):
        assert route_role(path) == "learn"


def test_merged_metrics_are_one_family_per_name_labelled_by_role() -> None:
    child = CollectorRegistry()
    Counter("onevec_things", "Things.", ["reason"], registry=child).labels(reason="a").inc(3)
    page = generate_latest(child).decode()
    own = CollectorRegistry()
    Counter("onevec_worker_restarts", "Restarts.", ["role"], registry=own).labels(role="learn").inc()
    merged = merge_metrics({"ingest": page, "learn": page}, own).decode()
    assert merged.count("# TYPE onevec_things_total counter") == 1
    assert 'onevec_things_total{reason="a",role="ingest"} 3.0' in merged
    assert 'onevec_things_total{reason="a",role="learn"} 3.0' in merged
    assert 'onevec_worker_restarts_total{role="learn"} 1.0' in merged


def test_the_supervisor_process_imports_no_faust_and_no_torch() -> None:
    # What `onevec worker` without a role loads before it runs the supervisor.
    code = (
        "import sys, onevec.streams.cli; from onevec.streams.supervisor import run_supervised; "
        "print(sorted(m for m in ('faust', 'torch', 'aiokafka') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
