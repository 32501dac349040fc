"""The README's first command, on a slice: embedded broker + worker + replay + summary."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path


def test_demo_runs_on_embedded_defaults(tmp_path: Path) -> None:
    env = {**os.environ, "ONEVEC_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "160"}
    env.pop("ONEVEC_BROKER_URL", None)
    result = subprocess.run(
        [sys.executable, "-m", "onevec.streams.cli", "demo", "--limit", "2000"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    figures = dict(re.findall(r"│ ([a-zA-Z ()-]+?)\s+│\s+([\d,]+) │", result.stdout))
    # Counted before the five freshness probe clicks.
    assert figures["events accepted"] == figures["examples emitted"] == figures["examples learned"] == "2,000"
    assert figures["events rejected (DLQ)"] == "0"
    assert int(figures["sessions closed"].replace(",", "")) > 0
    assert int(figures["items in Qdrant"].replace(",", "")) == 1682  # the whole catalogue
    live = re.search(r"onevec live model │\s+([\d,]+) │ ([\d.]+) │\s+([\d.]+) │", result.stdout)
    assert live and float(live.group(2)) > 0
    assert re.search(r"│ [\d.]+ s / [\d.]+ s", result.stdout)  # freshness measured, not inf
