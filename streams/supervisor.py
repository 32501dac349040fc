"""The default worker layout: ``onevec worker`` without a role runs the two halves of the
pipeline as two child processes, ``worker --role ingest`` and ``worker --role learn``, under
this small supervisor, so each half has a core and an interpreter of its own (one process
shares one interpreter lock between them: docs/performance.md).

The supervisor imports no Faust and no torch. It starts the embedded broker when no broker is
configured, serves the user's one web port (:mod:`onevec.streams.gateway`), restarts a child
that exits with a growing backoff (one WARNING line each, counted in
``onevec_worker_restarts_total{role}`` and shown in ``/healthz``), and on SIGTERM or SIGINT
stops both children before it ends. The children are started with a parent-death signal
(:func:`onevec.deploy.processes.start_child`): they never outlive it, even after a SIGKILL.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any, Literal

from onevec.deploy.embedded_broker import free_port
from onevec.deploy.processes import start_child, stop_process
from onevec.monitoring.metrics import SUPERVISOR_REGISTRY, WORKER_CHILD_UP, WORKER_RESTARTS
from onevec.streams.gateway import Gateway
from onevec.streams.settings import Settings
from onevec.streams.startup import prepared

__all__ = ["ROLES", "Supervisor", "backoff_seconds", "run_supervised", "supervises"]

log = logging.getLogger(__name__)

ROLES = ("ingest", "learn")
CHILD_HOST = "127.0.0.1"  # the children serve only the supervisor
CHILD_COMMAND = (sys.executable, "-m", "onevec.streams.cli", "worker", "--role")
FIRST_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 30.0
# A child that ran this long before it exited had started fine: its next backoff starts over.
STABLE_SECONDS = 60.0
# A graceful stop (checkpoint, commits) gets this long before SIGKILL, as WorkerProcess.stop.
STOP_TIMEOUT_SECONDS = 30.0

_output_lock = threading.Lock()


def supervises(settings: Settings) -> bool:
    """Whether ``onevec worker`` runs the supervised layout: when no role was chosen (no
    ``--role``, no ``ONEVEC_ROLE`` in the environment or the settings file). An explicit
    ``all`` is the single-process layout."""
    return "role" not in settings.model_fields_set


def backoff_seconds(failures_in_a_row: int) -> float:
    """The wait before restarting a child that failed ``failures_in_a_row`` times running
    shorter than STABLE_SECONDS: 1, 2, 4, ... up to 30 s."""
    return min(MAX_BACKOFF_SECONDS, FIRST_BACKOFF_SECONDS * 2 ** (failures_in_a_row - 1))


def describe_exit(code: int) -> str:
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"status {code}"


def _relay(pipe: IO[bytes], prefix: bytes) -> None:
    """A child's output, line by line onto the supervisor's stdout with its role in front."""
    with pipe:
        for line in pipe:
            if not line.endswith(b"\n"):  # a child's last words without a newline
                line += b"\n"
            with _output_lock:
                sys.stdout.buffer.write(prefix + line)
                sys.stdout.buffer.flush()


@dataclass
class Child:
    """One worker child of the supervisor, kept running under one role."""

    role: str
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    state: Literal["running", "restarting", "stopped"] = "stopped"
    started: float = 0.0  # monotonic
    restarts: int = 0
    failures_in_a_row: int = 0
    last_exit: str | None = None
    relays: list[threading.Thread] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://{CHILD_HOST}:{self.port}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def status(self) -> dict[str, Any]:
        return {
            "pid": self.proc.pid if self.alive and self.proc is not None else None,
            "state": self.state,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "uptime_seconds": round(time.monotonic() - self.started, 1) if self.alive else 0.0,
        }

    def launch(self, env: dict[str, str]) -> None:
        """Start the child on a fresh loopback port. Call from the main thread: the
        parent-death signal is tied to the thread that starts the child."""
        self.port = free_port(CHILD_HOST)
        env = env | {"ONEVEC_ROLE": self.role, "ONEVEC_WEB_PORT": str(self.port)}
        read_fd, write_fd = os.pipe()
        with open(write_fd, "wb") as out:
            self.proc = start_child((*CHILD_COMMAND, self.role), log=out, env=env)
        relay = threading.Thread(
            target=_relay, args=(open(read_fd, "rb"), f"[{self.role}] ".encode()), daemon=True
        )
        relay.start()
        self.relays = [t for t in self.relays if t.is_alive()] + [relay]
        self.started = time.monotonic()
        self.state = "running"
        WORKER_CHILD_UP.labels(role=self.role).set(1)


class Supervisor:
    """Keeps an ingest and a learn child running on ``settings`` (broker URL and web port set)
    until :meth:`stop`, behind one :class:`~onevec.streams.gateway.Gateway`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.children = {role: Child(role) for role in ROLES}
        self.stopping = asyncio.Event()
        # What every child runs on; its role and port are its own.
        self.env = dict(os.environ) | settings.to_env() | {"ONEVEC_BIND_HOST": CHILD_HOST}
        for role in ROLES:
            WORKER_RESTARTS.labels(role=role)  # exported at 0 from the start, so increase() sees the first
            WORKER_CHILD_UP.labels(role=role).set(0)

    def stop(self) -> None:
        self.stopping.set()

    async def keep(self, child: Child) -> None:
        """Run ``child`` until the supervisor stops; after each exit, wait its backoff and start
        it again."""
        while not self.stopping.is_set():
            child.launch(self.env)
            assert child.proc is not None  # launched
            code = await asyncio.to_thread(child.proc.wait)
            WORKER_CHILD_UP.labels(role=child.role).set(0)
            if self.stopping.is_set():
                break
            ran = time.monotonic() - child.started
            child.failures_in_a_row = 1 if ran >= STABLE_SECONDS else child.failures_in_a_row + 1
            delay = backoff_seconds(child.failures_in_a_row)
            child.restarts += 1
            child.last_exit = describe_exit(code)
            child.state = "restarting"
            WORKER_RESTARTS.labels(role=child.role).inc()
            log.warning(
                "the %s worker (pid %d) exited with %s after %.1f s; restart %d in %.0f s",
                child.role,
                child.proc.pid,
                child.last_exit,
                ran,
                child.restarts,
                delay,
            )
            try:
                await asyncio.wait_for(self.stopping.wait(), delay)
            except TimeoutError:
                continue
        child.state = "stopped"

    async def run(self) -> None:
        """Serve the web port and keep both children until SIGTERM/SIGINT or :meth:`stop`, then
        stop the children (SIGTERM, SIGKILL after STOP_TIMEOUT_SECONDS)."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop)
        host, port = self.settings.bind_host, self.settings.web_port
        gateway = Gateway(self.children, SUPERVISOR_REGISTRY, self.settings.http_idle_timeout_seconds)
        await gateway.start(host, port)
        print(f"worker web on http://{host}:{port} (supervising {' + '.join(ROLES)})", flush=True)
        keepers = [asyncio.create_task(self.keep(child)) for child in self.children.values()]
        stopped = asyncio.create_task(self.stopping.wait())
        try:
            # A keeper ends early only when a child cannot be started at all (it raised).
            await asyncio.wait([stopped, *keepers], return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.stop()
            stopped.cancel()
            running = [child.proc for child in self.children.values() if child.proc is not None]
            await asyncio.gather(*(asyncio.to_thread(stop_process, p, STOP_TIMEOUT_SECONDS) for p in running))
            await asyncio.gather(*keepers)  # re-raises a keeper's error
            await gateway.stop()
            for child in self.children.values():
                for relay in child.relays:
                    relay.join(timeout=5)  # the last lines of a stopped child


def run_supervised(settings: Settings) -> None:
    """``onevec worker`` with no role: the supervisor, until SIGTERM/SIGINT."""
    logging.basicConfig(
        level=settings.log_level.upper(), format="[%(asctime)s] [supervisor] [%(levelname)s] %(message)s"
    )
    with prepared(settings) as ready:
        asyncio.run(Supervisor(ready).run())
