"""Replay an events table into Kafka in timestamp order, as fast as possible or sped up."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import pandas as pd

from onevec.models.clickstream.events import TimestampUnit
from onevec.streams.kafka.producer import EventProducer

__all__ = ["iter_event_dicts", "replay"]


def iter_event_dicts(events: pd.DataFrame) -> Iterator[dict[str, Any]]:
    """Rows as event dicts, dropping empty optional fields (NaN price means no price)."""
    for row in events.to_dict("records"):
        yield {
            k: v
            for k, v in row.items()
            if not (isinstance(v, float) and math.isnan(v) and k in ("price", "quantity"))
        }


def replay(
    events: pd.DataFrame,
    producer: EventProducer,
    speedup: float | None = None,
    on_progress: Callable[[int], None] | None = None,
    progress_every: int = 1000,
    timestamp_unit: TimestampUnit = "s",
) -> float:
    """Send every event; return the elapsed wall time in seconds.

    With ``speedup`` the gaps between event times are kept, divided by that factor; without it
    events go as fast as the producer takes them. Loaded events are in seconds; a worker that
    reads numbers as milliseconds (``timestamp_unit="ms"``) gets them in milliseconds.
    """
    started = time.monotonic()
    first_ts = float(events["timestamp"].iloc[0]) if len(events) else 0.0
    for count, event in enumerate(iter_event_dicts(events), start=1):
        if speedup:
            due = started + (float(event["timestamp"]) - first_ts) / speedup
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        if timestamp_unit == "ms":
            event["timestamp"] = round(float(event["timestamp"]) * 1000)
        producer.send(event)
        if on_progress is not None and count % progress_every == 0:
            on_progress(progress_every)
    producer.flush()
    if on_progress is not None:
        on_progress(len(events) % progress_every)
    return time.monotonic() - started
