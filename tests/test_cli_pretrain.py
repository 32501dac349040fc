"""`onevec pretrain` on a user's own events file (a real MovieLens-100k slice written as CSV)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from onevec.models.datasets import load_events


def test_pretrain_writes_a_checkpoint_from_a_users_csv(tmp_path: Path) -> None:
    events = load_events("movielens-100k").head(20_000)
    csv = tmp_path / "events.csv"
    events.drop(columns="session_id").to_csv(csv, index=False)  # sessions derived again
    out = tmp_path / "model.pt"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "onevec.streams.cli",
            "pretrain",
            str(csv),
            "--epochs",
            "2",
            "--catalog",
            "movielens-100k",
            "--output",
            str(out),
        ],
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    losses = [float(x) for x in re.findall(r"epoch \d+: mean loss ([\d.]+)", result.stdout)]
    assert len(losses) == 2 and losses[1] < losses[0]
    model_hr, pop_hr = map(float, re.findall(r"HR@20 ([\d.]+)", result.stdout))
    assert model_hr > pop_hr
    checkpoint = torch.load(out, weights_only=True)
    assert checkpoint["offsets"] == {} and checkpoint["state"]["steps"] > 0
