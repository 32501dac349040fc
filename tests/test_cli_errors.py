"""A user's mistake gets one clear line and exit status 2, never a traceback (the `onevec`
command as a user runs it, in a subprocess)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from onevec.deploy.embedded_broker import free_port
from onevec.streams.qdrant import QdrantStore, build_item_points
from tests.streams.test_store_congruence import DIM, synthetic_items

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
        (["worker"], {"ONEVEC_BROKER_URL": "UNREACHABLE"}, "cannot reach the broker"),
        (["similar", "1", "--worker", "http://UNREACHABLE"], {}, "cannot reach the worker at http://"),
        (["bench", "--sections", "memory,bogus"], {}, "--sections: no section bogus (choose from pipeline,"),
        (
            ["bench", "--memory-items", "10k"],
            {},
            "--memory-items: '10k' is not a list of positive item counts",
        ),
        (["bench", "--memory-items", "1000,0"], {}, "--memory-items: '1000,0' is not a list of positive"),
    ],
    ids=[
        "unknown-dataset",
        "missing-file",
        "bad-setting",
        "unreachable-broker",
        "worker-unreachable-broker",
        "unreachable-worker",
        "bench-unknown-section",
        "bench-bad-memory-items",
        "bench-zero-memory-items",
    ],
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


def test_a_filter_on_an_attribute_no_stored_item_has_is_refused_without_a_worker(tmp_path: Path) -> None:
    """``onevec similar`` reading a stopped worker's store (synthetic items with a genre and a
    year) refuses an attribute no item has as a worker's /similar does, and answers a known one."""
    folder = tmp_path / "qdrant"

    async def store_items() -> None:
        async with QdrantStore(dim=DIM, path=folder) as store:
            await store.ensure_collections()
            await store.upsert_points(
                "items", build_item_points(synthetic_items(30, seed=1), DIM).all_or_error()
            )

    asyncio.run(store_items())
    stored = {"ONEVEC_QDRANT_PATH": str(folder), "ONEVEC_MODEL_DIM": str(DIM)}
    code, lines, _ = _run(["similar", "syn-1", "--filter", "colour=red"], tmp_path, **stored)
    assert (code, lines) == (2, ["error: no item has the attribute 'colour' (known: genre, year)"])
    # A known attribute: looked up, whether or not a value matches.
    assert _run(["similar", "syn-1", "--filter", "genre=Nope"], tmp_path, **stored)[0] == 0
    assert _run(["similar", "syn-1", "--filter", "genre=Drama"], tmp_path, **stored)[0] == 0
