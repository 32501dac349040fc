"""The pipeline's ceiling: events/s of a Faust app whose one agent only counts, draining the
clicks topic with the worker's Faust options in a consumer group of its own. It runs as a child
process (``python -m onevec.streams.tools.bench noop COUNT RESULT``)."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import faust

from onevec.deploy.embedded_broker import free_port
from onevec.deploy.processes import start_child, stop_process
from onevec.streams.kafka.topics import bootstrap_servers
from onevec.streams.settings import Settings, load_settings

__all__ = ["noop_main", "noop_rate"]


def noop_rate(settings: Settings, count: int, timeout: float = 300.0) -> float:
    """Events/s of a no-op Faust agent draining the first ``count`` events of the clicks topic."""
    env = dict(os.environ) | settings.to_env() | {"ONEVEC_APP_ID": settings.app_id + "-noop"}
    tmp = Path(tempfile.mkdtemp(prefix="onevec-bench-noop-"))
    result, log_path = tmp / "result.json", tmp / "noop.log"
    with open(log_path, "ab") as log:
        # Faust sends a worker's stdout to its log, so the result comes back in a file.
        proc = start_child(
            [sys.executable, "-m", "onevec.streams.tools.bench", "noop", str(count), str(result)],
            log=log,
            env=env,
        )
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if result.exists():
                done = json.loads(result.read_text())
                return float(done["count"]) / max(done["last"] - done["first"], 1e-9)
            if proc.poll() is not None:
                raise RuntimeError(f"no-op agent exited early; log: {log_path}")
            time.sleep(0.2)
        raise TimeoutError(f"no-op agent did not see {count} events in {timeout:.0f}s; log: {log_path}")
    finally:
        stop_process(proc, 30)


def noop_main(count: int, result: Path) -> None:
    """The child: a Faust app whose one agent only counts, the ceiling for any agent on this
    broker. Writes the time of the first and of the ``count``-th event to ``result``."""
    settings = load_settings()
    tmp = tempfile.mkdtemp(prefix="onevec-noop-")
    app = faust.App(
        settings.app_id,
        broker=";".join(f"kafka://{s}" for s in bootstrap_servers(settings)),
        store="memory://",
        autodiscover=False,
        datadir=tmp,
        web_bind=settings.bind_host,
        web_host=settings.bind_host,
        web_port=free_port(settings.bind_host),
        topic_partitions=settings.partitions,
        consumer_auto_offset_reset="earliest",
        **settings.faust_broker_options,
    )
    raw: dict[str, Any] = {
        "key_type": bytes,
        "value_type": bytes,
        "key_serializer": "raw",
        "value_serializer": "raw",
    }
    topic = app.topic(settings.clicks_topic, **raw)
    state = {"seen": 0, "first": 0.0}

    async def noop(stream: faust.StreamT[bytes]) -> None:
        async for _ in stream.events():
            state["seen"] += 1
            if state["seen"] == 1:
                state["first"] = time.monotonic()
            if state["seen"] == count:
                done = {"count": count - 1, "first": state["first"], "last": time.monotonic()}
                partial = result.with_suffix(".tmp")
                partial.write_text(json.dumps(done))
                partial.replace(result)  # atomic: the parent never reads half a file

    app.agent(topic, name="noop")(noop)
    faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()
