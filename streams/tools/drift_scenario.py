"""The drift scenario: a stationary replay stays quiet, a constructed drift fires.

A model is pretrained on the first ``history`` events of a real dataset (MovieLens-100k by
default). Then the next ``stream`` events are replayed twice through the real pipeline
(embedded broker, a worker process, Qdrant local mode), each time into a fresh worker that
starts from that checkpoint:

* **stationary**: the events as they are;
* **drifted (constructed)**: the same events, but from the middle on every item id is replaced
  through a fixed random permutation of the stream's item ids, so the same catalogue is
  suddenly clicked in different patterns. This is a constructed change, not a real one.

The worker takes its drift reference at the first micro-batch of the replay and evaluates
the drift signals every ``window_seconds``. With the Debian ``prometheus`` binary present, a
real Prometheus scrapes both workers and evaluates ``monitoring/prometheus/alerts.yml``; the
alerts that fired are read back from its ``ALERTS`` series.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from onevec.deploy.embedded_broker import EmbeddedBroker
from onevec.deploy.prometheus_server import PrometheusServer, prometheus_binary
from onevec.monitoring import ALERTS_FILE
from onevec.monitoring.drift import SIGNALS_HIGH_IS_BAD
from onevec.streams.settings import Settings
from onevec.streams.worker import WorkerProcess, metric_total

__all__ = ["CONSTRUCTED_LABEL", "ScenarioRun", "remap_items", "run_drift_scenario"]

CONSTRUCTED_LABEL = "constructed"


def remap_items(events: pd.DataFrame, start: int, seed: int = 0) -> pd.DataFrame:
    """Constructed drift: rows from position ``start`` on get their ``item_id`` replaced through
    one random permutation of the item ids in ``events`` (a derangement is not enforced; with
    hundreds of items almost every id moves). Adds ``drift = "constructed"`` to those rows."""
    ids = events["item_id"].unique()
    mapping = dict(zip(ids, np.random.default_rng(seed).permutation(ids), strict=True))
    remapped = events.copy()
    rows = remapped.index[start:]
    remapped.loc[rows, "item_id"] = remapped.loc[rows, "item_id"].map(mapping)
    return remapped


@dataclass
class ScenarioRun:
    """What one replay showed: per drift signal its worst value over the run's windows (max
    for signals where higher is worse, min for the others), detector events, alerts."""

    name: str
    events: int
    windows: float = 0.0
    worst: dict[str, float] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    detector_events: dict[str, float] = field(default_factory=dict)
    predictability: dict[str, float] = field(default_factory=dict)
    alerts: list[str] = field(default_factory=list)

    @property
    def alarms(self) -> list[str]:
        """Signals that crossed their threshold in at least one window."""
        return [
            s
            for s, v in self.worst.items()
            if s in self.thresholds
            and (v > self.thresholds[s] if s in SIGNALS_HIGH_IS_BAD else v < self.thresholds[s])
        ]

    @property
    def quiet(self) -> bool:
        return not self.alarms and not any(self.detector_events.values())


def _samples(samples: dict[str, float], name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of one metric's samples, from a scrape_metrics() dict."""
    found = []
    for key, value in samples.items():
        if key.startswith(name + "{"):
            found.append((dict(part.split("=", 1) for part in key[len(name) + 1 : -1].split(",")), value))
    return found


def _labelled(samples: dict[str, float], name: str, label: str) -> dict[str, float]:
    """{label value: sample} of a metric with one label."""
    return {labels[label]: value for labels, value in _samples(samples, name) if label in labels}


def _pretrain_checkpoint(settings: Settings, history: pd.DataFrame, epochs: int, path: Path) -> None:
    from onevec.models.catalog import attribute_tokens, load_attributes
    from onevec.models.online.trainer import OnlineTrainer
    from onevec.models.pretrain import pretrain, session_examples

    trainer = OnlineTrainer(settings.model_config_for_training())
    for item_id, attrs in (load_attributes(settings.catalog) if settings.catalog else {}).items():
        trainer.set_attributes(item_id, attribute_tokens(attrs))
    examples = session_examples(history, settings.max_session_items, gap_seconds=settings.session_gap_seconds)
    pretrain(trainer, examples, epochs)
    trainer.save_checkpoint(path, offsets={})


def _replay_and_watch(
    worker: WorkerProcess, settings: Settings, events: pd.DataFrame, run: ScenarioRun, timeout: float
) -> None:
    from onevec.streams.kafka.producer import EventProducer
    from onevec.streams.kafka.replay import iter_event_dicts
    from onevec.streams.kafka.topics import bootstrap_servers

    with EventProducer(bootstrap_servers(settings), settings.clicks_topic) as producer:
        producer.send_many(iter_event_dicts(events))
    deadline = time.monotonic() + timeout
    while True:
        samples = worker.metrics()
        for signal, value in _labelled(samples, "onevec_drift_signal", "signal").items():
            worse = max if signal in SIGNALS_HIGH_IS_BAD else min
            run.worst[signal] = worse(run.worst.get(signal, value), value)
        if metric_total(samples, "onevec_examples_learned_total") >= len(events):
            break
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{run.name}: the worker did not learn {len(events)} examples in {timeout:.0f}s"
            )
        time.sleep(0.25)
    run.thresholds = _labelled(samples, "onevec_drift_threshold", "signal")
    run.predictability = _labelled(samples, "onevec_predictability", "label")
    run.detector_events = {
        f"{labels['detector']}/{labels['stream']}": value
        for labels, value in _samples(samples, "onevec_drift_events_total")
    }


def run_drift_scenario(
    settings: Settings,
    dataset: str = "movielens-100k",
    history: int = 30_000,
    stream: int = 20_000,
    epochs: int = 3,
    window_seconds: float = 1.0,
    timeout: float = 600.0,
    use_prometheus: bool = True,
    on_status: Callable[[str], None] = print,
    after_replay: Callable[[str, WorkerProcess, PrometheusServer | None], None] | None = None,
) -> tuple[list[ScenarioRun], str | None]:
    """Run the stationary and the constructed-drift replay; return both runs and why Prometheus
    was not used (None when it was). ``after_replay(name, worker, prometheus)`` runs once per
    replay, after the results are read and before that worker stops."""
    from onevec.models.datasets import load_events

    settings = settings.model_copy(update={"catalog": settings.catalog or dataset})
    events = load_events(dataset, settings.session_gap_seconds).head(history + stream)
    if len(events) < history + stream:
        raise ValueError(f"{dataset} has only {len(events)} events")
    replayed = events.iloc[history:].reset_index(drop=True)
    variants = {
        "stationary": replayed,
        "drifted": remap_items(replayed, start=len(replayed) // 2),
    }
    workdir = Path(tempfile.mkdtemp(prefix="onevec-drift-scenario-"))
    prometheus_missing = None if prometheus_binary() else "the prometheus binary is not installed"
    if not use_prometheus:
        prometheus_missing = "disabled"
    runs: list[ScenarioRun] = []
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, workdir, True)
        checkpoint = workdir / "pretrained.pt"
        on_status(f"pretraining on the first {history:,} events of {dataset} ({epochs} epochs)")
        _pretrain_checkpoint(settings, events.iloc[:history], epochs, checkpoint)
        if settings.embedded:
            broker = stack.enter_context(EmbeddedBroker(host=settings.bind_host))
            settings = settings.model_copy(update={"broker_url": broker.url, "tansu": True})
        workers: dict[str, tuple[WorkerProcess, Settings]] = {}
        for name in variants:
            tag = f"{name}-{uuid.uuid4().hex[:6]}"
            data_dir = workdir / name
            (data_dir / "checkpoints").mkdir(parents=True)
            shutil.copy(checkpoint, data_dir / "checkpoints" / "learner.pt")
            variant_settings = settings.model_copy(
                update={
                    "app_id": f"onevec-drift-{tag}",
                    "clicks_topic": f"clicks-{tag}",
                    "dlq_topic": f"dlq-{tag}",
                    "examples_topic": f"examples-{tag}",
                    "sessions_topic": f"sessions-{tag}",
                    "data_dir": data_dir,
                    "qdrant_path": None,
                    "drift_window_seconds": window_seconds,
                    "drift_reference_seconds": 0.0,
                    "drift_warmup_examples": 0,
                }
            )
            workers[name] = (WorkerProcess(variant_settings, settings.broker_url), variant_settings)
        prometheus = None
        if prometheus_missing is None:
            targets = {name: [f"{w.settings.bind_host}:{w.port}"] for name, (w, _) in workers.items()}
            prometheus = stack.enter_context(PrometheusServer(targets, rule_files=[ALERTS_FILE]))
            on_status(f"prometheus on {prometheus.url} scraping both workers every 1s")
        for name, (worker, variant_settings) in workers.items():
            run = ScenarioRun(
                name=name if name == "stationary" else f"drifted ({CONSTRUCTED_LABEL})", events=stream
            )
            on_status(f"{run.name}: starting a worker from the pretrained checkpoint")
            worker.start(ready_timeout=120)
            try:
                _replay_and_watch(worker, variant_settings, variants[name], run, timeout)
                time.sleep(window_seconds + 3)  # a last window, then a scrape and a rule evaluation
                samples = worker.metrics()
                # Windows include that last one, like the worst signals below: a learner that
                # learns the whole replay within a window or two would otherwise be judged on
                # fewer windows than it was measured over.
                run.windows = metric_total(samples, "onevec_drift_windows_total")
                for signal, value in _labelled(samples, "onevec_drift_signal", "signal").items():
                    worse = max if signal in SIGNALS_HIGH_IS_BAD else min
                    run.worst[signal] = worse(run.worst.get(signal, value), value)
                if prometheus is not None:
                    # Read the alerts only once Prometheus has scraped every alarm the worker
                    # counted, and evaluated the rules on that scrape.
                    alarms = metric_total(samples, "onevec_drift_alarms_total")
                    prometheus.wait_for(
                        f'sum(onevec_drift_alarms_total{{scenario="{name}"}}) >= {alarms}', timeout=30
                    )
                    time.sleep(2)
                    firing = f'ALERTS{{alertstate="firing",scenario="{name}"}}'
                    fired = prometheus.query(f"count by (alertname) (max_over_time({firing}[1h]))")
                    run.alerts = sorted(r["metric"]["alertname"] for r in fired)
                if after_replay is not None:
                    after_replay(name, worker, prometheus)
            finally:
                worker.stop()
            runs.append(run)
            on_status(f"{run.name}: {'quiet' if run.quiet else 'drift signalled'}")
    return runs, prometheus_missing
