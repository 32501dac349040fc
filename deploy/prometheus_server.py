"""A real Prometheus server on loopback, for the drift scenario and the tests.

Runs the Debian ``prometheus`` binary with a generated configuration (JSON, which is valid
YAML) that scrapes the given targets every second and evaluates the rule files it is given
every second, with its own free port and temporary storage; stopped by its PID.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from onevec.deploy.embedded_broker import free_port
from onevec.deploy.processes import start_child, stop_process

__all__ = ["PrometheusServer", "prometheus_binary", "promtool_binary"]


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


def promtool_binary() -> str | None:
    return shutil.which("promtool")


class PrometheusServer:
    """``PrometheusServer({"stationary": ["127.0.0.1:6066"]}).start()``: one scrape job
    ``onevec`` whose targets carry a ``scenario`` label (the dict key)."""

    def __init__(
        self,
        targets: dict[str, list[str]],
        rule_files: list[Path] = [],  # noqa: B006 - never mutated
        interval: str = "1s",
        host: str = "127.0.0.1",
    ) -> None:
        self.host = host
        self.port = free_port(host)
        self.workdir = Path(tempfile.mkdtemp(prefix="onevec-prometheus-"))
        self.config_path = self.workdir / "prometheus.yml"
        config: dict[str, Any] = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [
                {
                    "job_name": "onevec",
                    "static_configs": [
                        {"targets": addresses, "labels": {"scenario": name}}
                        for name, addresses in targets.items()
                    ],
                }
            ],
        }
        self.config_path.write_text(json.dumps(config, indent=2))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> Self:
        binary = prometheus_binary()
        if binary is None:
            raise FileNotFoundError("prometheus binary not found (Debian package `prometheus`)")
        log = (self.workdir / "prometheus.log").open("ab")
        self.proc = start_child(
            [
                binary,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address={self.host}:{self.port}",
                "--storage.tsdb.retention.time=1d",
            ],
            log=log,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited early; log: {self.workdir / 'prometheus.log'}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as response:  # noqa: S310
                    if response.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.25)
        self.stop()
        raise TimeoutError(f"prometheus not ready after {timeout:.0f}s")

    def stop(self, timeout: float = 15.0) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            stop_process(proc, timeout)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def api(self, path: str, **params: str) -> Any:
        """GET an HTTP API path (``query``, ``rules``, ``alerts``, ...); returns ``data``."""
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=30) as response:  # noqa: S310
            answer = json.loads(response.read())
        if answer.get("status") != "success":
            raise RuntimeError(f"prometheus {path} {params}: {answer}")
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's result vector (a scalar result comes back as one sample)."""
        data = self.api("query", query=expr)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (pending or firing) with their labels."""
        return self.api("alerts")["alerts"]

    def wait_for(self, expr: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Poll until ``expr`` returns data; returns it (empty after ``timeout``)."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if result or time.monotonic() > deadline:
                return result
            time.sleep(0.5)
