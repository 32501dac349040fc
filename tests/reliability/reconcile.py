"""What the fault tests share: a MovieLens-100k slice, its replay with malformed records mixed
in, waiting on workers, and the reconciliation of ``onevec.streams.tools.reconcile`` (input
against examples, dead letters, Qdrant points and click counts, checkpoints)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from onevec.models.datasets import load_events
from onevec.streams.settings import Settings
from onevec.streams.tools.reconcile import (
    MALFORMED,
    checkpoint_offsets,
    committed_offsets,
    example_end_offsets,
    input_records,
    reconcile_qdrant,
    reconcile_topics,
    send_records,
    uncovered_examples,
)
from onevec.streams.worker import WorkerProcess, metric_total

__all__ = [
    "MALFORMED",
    "checkpoint_offsets",
    "coverage_report",
    "movielens_slice",
    "produce",
    "reconcile_qdrant",
    "reconcile_topics",
    "uncovered_examples",
    "wait_for",
    "wait_metric",
]


def movielens_slice(settings: Settings, start: int, stop: int) -> pd.DataFrame:
    return load_events("movielens-100k", settings.session_gap_seconds).iloc[start:stop]


def produce(settings: Settings, events: pd.DataFrame, malformed: Sequence[bytes] = ()) -> int:
    """Send the events, one malformed record after every len(events)/len(malformed) of them."""
    return send_records(settings, input_records(events, malformed))


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 180.0, every: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(every)


def coverage_report(settings: Settings, data_dirs: Sequence[Path], workers: Sequence[WorkerProcess]) -> str:
    """Why examples are uncovered, for a failure message: per examples partition its last
    offset, the checkpoints' offset and the group's committed offset, then each worker's
    learner metrics and the tail of its log."""
    ends, covered = example_end_offsets(settings), checkpoint_offsets(data_dirs)
    committed = committed_offsets(settings, settings.group_id, settings.examples_topic)
    lines = ["partition: last offset / checkpoint / committed"]
    for key, end in sorted(ends.items()):
        partition = int(key.rsplit(":", 1)[1])
        lines.append(f"  {key}: {end} / {covered.get(key, -1)} / {committed.get(partition)}")
    for worker in workers:
        try:
            samples = worker.metrics()
            learner = {
                k: v
                for k, v in samples.items()
                if k.startswith(("onevec_examples", "onevec_checkpoint")) and not k.endswith("_created")
            }
        except OSError as error:
            learner = {"unreachable": str(error)}
        tail = (
            worker.log_path.read_text(errors="replace").splitlines()[-40:] if worker.log_path.exists() else []
        )
        lines += [f"worker {worker.base_url}: {learner}", *tail]
    return "\n".join(lines)


def wait_metric(worker: WorkerProcess, name: str, target: float, timeout: float = 180.0) -> None:
    wait_for(lambda: metric_total(worker.metrics(), name) >= target, f"{name} >= {target}", timeout)
