"""Freshness at one input rate: background clicks at a paced rate plus a probe every 0.25 s,
a click on a brand-new item timed until the worker serves its vector (GET /items)."""

from __future__ import annotations

import math
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass

import numpy as np
import pandas as pd

from onevec.streams.kafka.producer import EventProducer
from onevec.streams.kafka.topics import bootstrap_servers
from onevec.streams.settings import Settings
from onevec.streams.tools.bench.workers import Workers

__all__ = ["FreshnessResult", "freshness_at"]

PROBE_INTERVAL_SECONDS = 0.25
POLL_SECONDS = 0.02  # the probes' timing resolution
UNSERVED_AFTER_SECONDS = 60.0  # a probe not served by then counts as infinitely late
LOOKUP_TIMEOUT_SECONDS = 1.0  # a lookup waiting longer holds back the next probes no further
CATCH_UP_TIMEOUT_SECONDS = 120.0


@dataclass(frozen=True)
class FreshnessResult:
    p50: float  # seconds from sending a probe to its vector being served
    p99: float
    probes: int
    sent: int  # background clicks and probes
    seconds: float  # how long the input ran
    drain: float  # seconds the learner needed, after the input stopped, to learn all of it

    @property
    def input_rate(self) -> float:
        return self.sent / self.seconds


def freshness_at(
    settings: Settings, worker: Workers, events: pd.DataFrame, rate: int, seconds: float
) -> FreshnessResult:
    """Background clicks at ``rate`` ev/s (MovieLens users and items, re-timed to now) plus a
    probe every 0.25 s: a click on a brand-new item, timed until GET /items serves it."""
    servers = bootstrap_servers(settings)
    tag = uuid.uuid4().hex[:6]
    stop = threading.Event()
    sent = [0]
    pairs = list(zip(events["user_id"].astype(str), events["item_id"].astype(str), strict=True))

    def load() -> None:
        with EventProducer(servers, settings.clicks_topic) as producer:
            started = time.monotonic()
            while not stop.is_set():
                due = int((time.monotonic() - started) * rate)
                while sent[0] < due:
                    user, item = pairs[sent[0] % len(pairs)]
                    producer.send(
                        {
                            "user_id": f"{tag}-{user}",
                            "item_id": item,
                            "event_type": "click",
                            "timestamp": time.time(),
                        }
                    )
                    sent[0] += 1
                time.sleep(0.005)

    before = worker.learned()
    thread = threading.Thread(target=load, name="bench-load", daemon=True)
    probes = EventProducer(servers, settings.clicks_topic, linger_ms=0)
    pending: dict[str, float] = {}
    latencies: list[float] = []
    thread.start()
    started = time.monotonic()
    next_probe = started
    number = 0
    total, ended = 0, math.nan
    drained: float | None = None
    try:
        while True:
            now = time.monotonic()
            running = now - started < seconds
            if running and now >= next_probe:
                item = f"probe-{tag}-{number}"
                number += 1
                probes.send(
                    {
                        "user_id": "probe",
                        "session_id": item,
                        "item_id": item,
                        "event_type": "click",
                        "timestamp": time.time(),
                    }
                )
                probes.flush()
                pending[item] = now
                next_probe += PROBE_INTERVAL_SECONDS
            if not running and not stop.is_set():
                stop.set()
                thread.join()
                ended = time.monotonic()
                total = sent[0] + number
            if not running and drained is None:
                # How long the learner needs, once the input stops, to catch up with it: a
                # pipeline that keeps up only has its latency left to work off.
                if worker.learned() - before >= total:
                    drained = time.monotonic() - ended
                elif time.monotonic() - ended > CATCH_UP_TIMEOUT_SECONDS:
                    drained = math.inf
            for item, sent_at in list(pending.items()):
                if time.monotonic() - sent_at > UNSERVED_AFTER_SECONDS:
                    latencies.append(math.inf)  # reported, never hidden
                    del pending[item]
                    continue
                served = _item_served(worker.base_url, item)
                if served is None:
                    break  # the worker's lookups are waiting, so would the next: probes go on
                if served:
                    latencies.append(time.monotonic() - sent_at)
                    del pending[item]
            if not running and not pending and drained is not None:
                break
            time.sleep(POLL_SECONDS)
    finally:
        stop.set()
        thread.join()
        probes.close()
    assert drained is not None  # the loop ends only once the learner has caught up or timed out
    ordered = np.sort(np.asarray(latencies))
    return FreshnessResult(
        p50=float(np.percentile(ordered, 50)) if len(ordered) else math.nan,
        p99=float(np.percentile(ordered, 99)) if len(ordered) else math.nan,
        probes=len(latencies),
        sent=total,
        seconds=ended - started,
        drain=drained,
    )


def _item_served(base_url: str, item: str) -> bool | None:
    """Whether the worker serves ``item``; None when it does not answer in time (seen at 100k
    items: lookups wait while the embedded engine builds an index), so the probe is asked
    again and the wait counts in its latency."""
    url = f"{base_url}/items/{urllib.parse.quote(item)}"
    try:
        with urllib.request.urlopen(url, timeout=LOOKUP_TIMEOUT_SECONDS):  # noqa: S310
            return True
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return False
        raise
    except TimeoutError:
        return None
