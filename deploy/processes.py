"""Child processes that never outlive onevec: Tansu, Prometheus, and the workers the demo, the bench
and the tests start.

A child is started with a parent-death signal, so the kernel stops it when its parent ends in
any way (SIGKILL included, when no Python cleanup runs); it is stopped by its PID otherwise. A
foreground command that owns children turns SIGTERM and SIGINT into a normal exit, so its
context managers stop them (a command started in the background by a shell inherits an ignored
SIGINT, which Python would keep ignoring).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import IO

__all__ = ["exit_on_signals", "new_log_file", "start_child", "stop_process"]

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _parent_death_signal(parent: int) -> Callable[[], None]:
    def arm() -> None:
        # Runs in the child between fork and exec. prctl is one libc call with no kept Python
        # wrapper in our dependencies, hence ctypes.
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            return  # not Linux-like: the parent's own stop() and atexit remain
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return arm


def new_log_file(prefix: str) -> Path:
    """An empty log file of a child's own in the temp directory. Ports are reused across runs,
    so a name made of the port alone would show an old run's lines in this child's log."""
    handle, name = tempfile.mkstemp(prefix=prefix, suffix=".log")
    os.close(handle)
    return Path(name)


def start_child(
    command: Sequence[str | Path], *, log: IO[bytes], env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``command`` with stdout and stderr to ``log``; it receives SIGTERM when this
    process exits. The kernel ties the signal to the starting *thread*: call this from a
    thread that lives as long as the child should (the main thread, in onevec)."""
    return subprocess.Popen(
        [str(part) for part in command],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=dict(env) if env is not None else None,
        preexec_fn=_parent_death_signal(os.getpid()),  # noqa: PLW1509 - needed for prctl
    )


def stop_process(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """Stop a child by its PID: SIGTERM, then SIGKILL if it is still running after ``timeout``.
    Returns its exit code; a child that already exited is only reaped."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(timeout=timeout)


def _exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def exit_on_signals() -> None:
    """SIGTERM and SIGINT end this process through a normal exit (SystemExit and
    KeyboardInterrupt), so ``with`` blocks and atexit stop its children. Call once from the
    main thread of a foreground command."""
    signal.signal(signal.SIGTERM, _exit)
    signal.signal(signal.SIGINT, signal.default_int_handler)
