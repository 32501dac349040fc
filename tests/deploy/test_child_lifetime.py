"""Every process onevec starts stops with its parent: on SIGTERM, on SIGINT (also when the parent
was started in the background, with SIGINT ignored) and when the parent is killed (-9)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from onevec.deploy.embedded_broker import free_port
from onevec.deploy.processes import new_log_file

ROOT = Path(__file__).resolve().parents[2]


def _children(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (from /proc, so it works without psutil)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _running(pid: int) -> bool:
    """Alive and not a zombie (a reparented child may wait for a reaper that never comes)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if _running(pid)]
        if not alive:
            return []
        time.sleep(0.2)
    return [pid for pid in pids if _running(pid)]


def _start_broker_command(ignore_sigint: bool) -> tuple[subprocess.Popen[str], int]:
    """`onevec broker` as a user starts it; returns it and its Tansu child's PID."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "onevec.streams.cli", "broker", "--port", str(free_port())],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # A shell's background job: SIGINT ignored, inherited through exec.
        preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None,  # noqa: PLW1509
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if "embedded broker:" in line:
            break
    else:
        pytest.fail(f"onevec broker exited with {proc.wait()} before its broker was ready")
    (tansu,) = _children(proc.pid)
    return proc, tansu


@pytest.mark.parametrize(
    ("sent", "background"),
    [(signal.SIGTERM, False), (signal.SIGINT, False), (signal.SIGINT, True)],
    ids=["sigterm", "sigint", "sigint-in-background"],
)
def test_onevec_broker_stops_tansu_on_a_signal(sent: signal.Signals, background: bool) -> None:
    proc, tansu = _start_broker_command(ignore_sigint=background)
    try:
        proc.send_signal(sent)
        proc.wait(timeout=30)
        assert _wait_gone([tansu], 10) == [], f"tansu {tansu} outlived `onevec broker` ({sent.name})"
    finally:
        if proc.poll() is None:
            proc.kill()
        if _running(tansu):
            os.kill(tansu, signal.SIGKILL)


PARENT = """
import json, sys, time
from onevec.deploy.embedded_broker import EmbeddedBroker
from onevec.streams.settings import Settings
from onevec.streams.worker import WorkerProcess

broker = EmbeddedBroker().start()
worker = WorkerProcess(Settings(), broker.url).launch()
print(json.dumps([broker.pid, worker.proc.pid]), flush=True)
time.sleep(600)
"""


def test_children_stop_when_their_parent_is_killed(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "ONEVEC_DATA_DIR": str(tmp_path)},
    )
    assert parent.stdout is not None
    children = json.loads(parent.stdout.readline())
    try:
        assert all(_running(pid) for pid in children)
        parent.kill()  # no Python cleanup runs: only the parent-death signal can stop them
        parent.wait(timeout=30)
        assert _wait_gone(children, 60) == [], "a child outlived its killed parent"
    finally:
        for pid in children:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


def test_each_child_gets_a_log_of_its_own() -> None:
    """Ports come back across runs: a child's log must not start with an earlier run's lines
    (CI once failed on a traceback a day old, in a log named after a reused port)."""
    first, second = new_log_file("onevec-test-7000-"), new_log_file("onevec-test-7000-")
    try:
        assert first != second
        assert first.read_bytes() == second.read_bytes() == b""
    finally:
        first.unlink()
        second.unlink()
