"""Run a onevec worker in this process, or manage one as a child process.

The child-process form is what ``onevec demo`` and the tests use: a real worker, stopped by
its own PID (SIGTERM for a graceful stop, SIGKILL to simulate a crash).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import faust
from prometheus_client.parser import text_string_to_metric_families

from onevec.deploy.embedded_broker import EmbeddedBroker, free_port
from onevec.deploy.processes import start_child, stop_process
from onevec.streams.app import OnevecApp
from onevec.streams.http_api import register_routes
from onevec.streams.kafka.faust_fixes import apply_faust_fixes
from onevec.streams.kafka.topics import ensure_topics
from onevec.streams.settings import Settings

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
    broker: EmbeddedBroker | None = None
    if settings.embedded and settings.role != "all":
        # Each process would start its own broker: the two halves would never meet.
        raise SystemExit(
            f"ONEVEC_ROLE={settings.role} needs ONEVEC_BROKER_URL: a broker shared with the other role"
        )
    if settings.embedded:
        broker = EmbeddedBroker(host=settings.bind_host).start()
        settings = settings.model_copy(update={"broker_url": broker.url, "tansu": True})
        print(f"embedded broker on {broker.url}", flush=True)
    if settings.web_port == 0:
        settings = settings.model_copy(update={"web_port": free_port(settings.bind_host)})
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        ensure_topics(settings)
        onevec = create_app(settings)
        print(f"worker web on http://{settings.bind_host}:{settings.web_port}", flush=True)
        worker = faust.Worker(onevec.faust, loglevel=settings.log_level.upper(), quiet=True)
        worker.execute_from_commandline()
    finally:
        if broker is not None:
            broker.stop()


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


def metric_total(samples: dict[str, float], name: str) -> float:
    """Sum of a metric's samples over all label values."""
    return sum(v for k, v in samples.items() if k == name or k.startswith(name + "{"))


class WorkerProcess:
    """A worker in a child process, with its own web port on loopback."""

    # What the child runs; a test may run the same worker inside a wrapper module.
    command: tuple[str, ...] = (sys.executable, "-m", "onevec.streams.cli", "worker")

    def __init__(self, settings: Settings, broker_url: str, extra_env: dict[str, str] | None = None):
        self.settings = settings
        self.broker_url = broker_url
        self.port = free_port(settings.bind_host)
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = Path(tempfile.gettempdir()) / f"onevec-worker-{self.port}.log"

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
        with open(self.log_path, "ab") as out:
            self.proc = start_child(self.command, log=out, env=env)
        return self

    def wait_ready(self, timeout: float) -> None:
        """Ready = the web server answers and the worker owns at least one input partition."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early; log: {self.log_path}")
            try:
                if metric_total(self.metrics(), "onevec_worker_partitions") > 0:
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
