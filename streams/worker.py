"""Run a onevec worker in this process, or manage one as a child process.

The child-process form is what ``onevec demo`` and the tests use: a real worker, stopped by
its own PID (SIGTERM for a graceful stop, SIGKILL to simulate a crash), in one role or in the
supervised default layout (:mod:`onevec.streams.supervisor`).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import faust
from prometheus_client.parser import text_string_to_metric_families

from onevec.deploy.embedded_broker import free_port
from onevec.deploy.processes import new_log_file, start_child, stop_process
from onevec.streams.app import OnevecApp
from onevec.streams.http_api import register_routes
from onevec.streams.kafka.faust_fixes import apply_faust_fixes
from onevec.streams.settings import Settings
from onevec.streams.startup import prepared
from onevec.streams.supervisor import ROLES

__all__ = ["WorkerProcess", "create_app", "run_worker", "scrape_metrics"]

log = logging.getLogger(__name__)


def create_app(settings: Settings, broker_url: str | None = None) -> OnevecApp:
    """The Faust app with its agents and HTTP routes, Faust's corrections applied first."""
    apply_faust_fixes(settings)
    onevec = OnevecApp(settings, broker_url)
    register_routes(onevec)
    return onevec


def run_worker(settings: Settings) -> None:
    """Run the Faust worker until SIGTERM/SIGINT. Starts an embedded broker if none is set."""
    if settings.embedded and settings.role != "all":
        # Each process would start its own broker: the two halves would never meet.
        raise SystemExit(
            f"ONEVEC_ROLE={settings.role} needs ONEVEC_BROKER_URL: a broker shared with the other role"
        )
    with prepared(settings) as settings:
        onevec = create_app(settings)
        print(f"worker web on http://{settings.bind_host}:{settings.web_port}", flush=True)
        worker = _Worker(onevec.faust, loglevel=settings.log_level.upper(), quiet=True)
        worker.stop_timeout = settings.stop_timeout_seconds
        worker.execute_from_commandline()


class _Worker(faust.Worker):
    """Faust's worker with a deadline on its graceful stop."""

    stop_timeout: float  # Settings.stop_timeout_seconds, set by run_worker

    def _on_sigterm(self) -> None:
        self._arm_deadline("SIGTERM")
        super()._on_sigterm()

    def _on_sigint(self) -> None:
        self._arm_deadline("SIGINT")
        super()._on_sigint()

    def _arm_deadline(self, signal_name: str) -> None:
        def give_up() -> None:
            log.error(
                "the graceful stop after %s did not finish in %.0f s (is the broker reachable?): "
                "exiting now; what was not checkpointed is replayed from the broker on restart",
                signal_name,
                self.stop_timeout,
            )
            logging.shutdown()
            os._exit(1)

        timer = threading.Timer(self.stop_timeout, give_up)
        timer.daemon = True  # a stop that finishes in time exits without waiting for it
        timer.start()


def scrape_metrics(url: str, timeout: float = 5.0) -> dict[str, float]:
    """A /metrics page as {sample name{labels}: value}, summed over nothing (raw samples)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback URL
        text = response.read().decode()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def metric_total(samples: dict[str, float], name: str, role: str | None = None) -> float:
    """Sum of a metric's samples over all label values; with ``role``, only the samples a
    supervisor labelled with that child's role."""

    def counted(key: str) -> bool:
        if role is None:
            return key == name or key.startswith(name + "{")
        return key.startswith(name + "{") and f"role={role}" in key[len(name) + 1 : -1].split(",")

    return sum(v for k, v in samples.items() if counted(k))


class WorkerProcess:
    """A worker in a child process, with its own web port on loopback: one worker in
    ``settings.role``, or with ``supervised`` the default layout (a supervisor and its ingest
    and learn children, behind the supervisor's port)."""

    # What the child runs; a test may run the same worker inside a wrapper module.
    command: tuple[str, ...] = (sys.executable, "-m", "onevec.streams.cli", "worker")

    def __init__(
        self,
        settings: Settings,
        broker_url: str,
        extra_env: dict[str, str] | None = None,
        supervised: bool = False,
    ):
        self.settings = settings
        self.broker_url = broker_url
        self.port = free_port(settings.bind_host)
        self.extra_env = extra_env or {}
        self.supervised = supervised
        self.proc: subprocess.Popen[bytes] | None = None
        # Restarts of this same worker append to its log.
        self.log_path = new_log_file(f"onevec-worker-{self.port}-")

    @property
    def base_url(self) -> str:
        return f"http://{self.settings.bind_host}:{self.port}"

    def start(self, ready_timeout: float = 60.0) -> WorkerProcess:
        self.launch()
        try:
            self.wait_ready(ready_timeout)
        except Exception:
            self.stop()
            raise
        return self

    def launch(self) -> WorkerProcess:
        """Start the process without waiting for it to be ready."""
        env = dict(os.environ)
        env.update(self.settings.to_env())
        env.update({"ONEVEC_BROKER_URL": self.broker_url, "ONEVEC_WEB_PORT": str(self.port)})
        env.update(self.extra_env)
        if self.supervised:
            del env["ONEVEC_ROLE"]  # no role chosen: the supervised layout
        with open(self.log_path, "ab") as out:
            self.proc = start_child(self.command, log=out, env=env)
        return self

    def wait_ready(self, timeout: float) -> None:
        """Ready = the web server answers and the worker owns at least one input partition
        (supervised: each child does)."""
        roles = ROLES if self.supervised else (None,)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early; log: {self.log_path}")
            try:
                samples = self.metrics()
                if all(metric_total(samples, "onevec_worker_partitions", role) > 0 for role in roles):
                    return
            except OSError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"worker not ready after {timeout:.0f}s; log: {self.log_path}")

    def metrics(self) -> dict[str, float]:
        return scrape_metrics(f"{self.base_url}/metrics")

    def get_json(self, path: str, timeout: float = 30.0) -> Any:
        """GET a JSON endpoint of this worker; None when it answers 404 (e.g. an unknown item)."""
        try:
            with urllib.request.urlopen(f"{self.base_url}{path}", timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return None
            raise

    def stop(self, timeout: float = 30.0) -> int | None:
        """Graceful stop (SIGTERM), escalating to SIGKILL after ``timeout``."""
        proc, self.proc = self.proc, None
        return None if proc is None else stop_process(proc, timeout)

    def kill(self) -> None:
        """Simulate a crash: SIGKILL, no chance to flush or commit."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
