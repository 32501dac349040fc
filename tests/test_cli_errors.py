"""A user's mistake gets one clear line and exit status 2, never a traceback (the `onevec`
command as a user runs it, in a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from onevec.deploy.embedded_broker import free_port

ONEVEC = Path(sys.executable).parent / "onevec"


def _run(args: list[str], tmp_path: Path, **env: str) -> tuple[int, list[str], float]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ONEVEC_")}
    started = time.monotonic()
    done = subprocess.run(
        [ONEVEC, *args], cwd=tmp_path, env=clean | env, capture_output=True, text=True, timeout=120
    )
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    return done.returncode, lines, time.monotonic() - started


def _unreachable() -> str:
    return f"127.0.0.1:{free_port()}"  # free now: nothing listens there


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (
            ["replay", "movielens-1m"],
            {},
            "movielens-1m: no such file, and not a built-in dataset (built in: ",
        ),
        (["pretrain", "missing.csv"], {}, "missing.csv: no such file"),
        (
            ["replay", "movielens-100k"],
            {"ONEVEC_PARTITIONS": "abc"},
            "ONEVEC_PARTITIONS: Input should be a valid integer",
        ),
        (
            ["replay", "movielens-100k", "--limit", "10"],
            {"ONEVEC_BROKER_URL": "UNREACHABLE"},
            "cannot reach the broker",
        ),
        (["similar", "1", "--worker", "http://UNREACHABLE"], {}, "cannot reach the worker at http://"),
    ],
    ids=["unknown-dataset", "missing-file", "bad-setting", "unreachable-broker", "unreachable-worker"],
)
def test_a_mistake_is_one_line_and_exit_2(
    args: list[str], env: dict[str, str], expected: str, tmp_path: Path
) -> None:
    address = _unreachable()
    args = [a.replace("UNREACHABLE", address) for a in args]
    env = {k: v.replace("UNREACHABLE", address) for k, v in env.items()}
    code, lines, seconds = _run(args, tmp_path, **env)
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
    if "cannot reach" in expected:
        assert address in lines[0] and seconds < 15  # named, and found out within seconds


def test_the_built_in_names_are_listed(tmp_path: Path) -> None:
    _, lines, _ = _run(["replay", "nope"], tmp_path)
    assert "movielens-100k" in lines[0]


def test_a_misspelt_variable_is_warned_with_the_closest_name(tmp_path: Path) -> None:
    code, lines, _ = _run(
        ["replay", "movielens-100k"], tmp_path, ONEVEC_PARTITONS="8", ONEVEC_BROKER_URL=_unreachable()
    )
    assert code == 2
    assert "ONEVEC_PARTITONS is not a onevec setting and is ignored; did you mean ONEVEC_PARTITIONS?" in lines
