"""End to end: a real Prometheus scrapes real workers while MovieLens-100k is replayed through
the real pipeline (embedded Tansu broker, worker processes, Qdrant local mode), once as it is
and once with its item ids remapped half way (a *constructed* drift).

Checked: the stationary replay raises no drift signal, detector event or drift alert; the
drifted one does; every PromQL expression of the dashboards returns data from that Prometheus,
and every alert rule evaluates there (the drift ones firing). Skips only where the
``prometheus`` binary is missing (Debian package ``prometheus``; ``.ci/run`` installs it).
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest

from onevec.deploy.embedded_broker import EmbeddedBroker
from onevec.deploy.prometheus_server import PrometheusServer, prometheus_binary
from onevec.monitoring import ALERTS_FILE, GRAFANA_DIR
from onevec.streams.settings import Settings
from onevec.streams.tools.drift_scenario import ScenarioRun, run_drift_scenario
from onevec.streams.worker import WorkerProcess, metric_total
from tests.kafka_helpers import post_events

DASHBOARDS = sorted((GRAFANA_DIR / "dashboards").glob("*.json"))
METRIC_NAME = re.compile(r"\b(onevec_[a-z0-9_]+)")
DRIFT_ALERTS = {"OnevecEmbeddingDrift", "OnevecEmbeddingGeometryChanged", "OnevecStreamDrift"}
# Sizes: big enough for the pretrained model to be warm and the drift to show, small enough
# for a test; the full-size figures come from `onevec drift-scenario` (docs/monitoring.md).
HISTORY, STREAM, EPOCHS = 20_000, 12_000, 2

if prometheus_binary() is None:
    pytest.skip(
        "prometheus binary not installed (Debian package `prometheus`; .ci/run installs it)",
        allow_module_level=True,
    )


def panel_exprs() -> list[tuple[str, str]]:
    return [
        (f"{path.stem}: {panel['title']}", target["expr"])
        for path in DASHBOARDS
        for panel in json.loads(path.read_text())["panels"]
        for target in panel["targets"]
    ]


@pytest.fixture(scope="module")
def scenario(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    checked: dict[str, Any] = {}

    def after_replay(name: str, worker: WorkerProcess, prometheus: PrometheusServer | None) -> None:
        if name != "drifted" or prometheus is None:
            return
        # Some bad input and HTTP ingestion, so the dead-letter and HTTP panels have data too.
        status, answer = post_events(worker.base_url, b'{"user_id": "u1"}\nnot json\n', timeout=30)
        assert (status, answer["rejected"]) == (200, 2)
        deadline = time.monotonic() + 30
        while metric_total(worker.metrics(), "onevec_events_rejected_total") < 2:
            assert time.monotonic() < deadline, "rejections never counted"
            time.sleep(0.2)
        prometheus.wait_for('onevec_events_rejected_total{scenario="drifted"}', timeout=30)
        time.sleep(3)  # a few more scrapes, so rate() over the new counters has two points
        checked["panels"] = {
            (title, expr): prometheus.query(expr.replace("$__rate_interval", "1m"))
            for title, expr in panel_exprs()
        }
        checked["rules"] = prometheus.api("rules")["groups"]
        checked["rule_results"] = {
            rule["name"]: prometheus.query(rule["query"])
            for group in checked["rules"]
            for rule in group["rules"]
        }
        for q in (0.5, 0.95):
            bucket = 'onevec_freshness_seconds_bucket{since="ingest",scenario="drifted"}'
            result = prometheus.query(f"histogram_quantile({q}, sum by (le) (increase({bucket}[10m])))")
            print(f"\nfreshness (ingest -> visible in Qdrant) p{q * 100:.0f}, drifted replay: {result}")
        checked["peak_lag"] = prometheus.query(
            'max by (stage) (max_over_time(onevec_consumer_lag{scenario="drifted"}[10m]))'
        )
        names = set(METRIC_NAME.findall(ALERTS_FILE.read_text())) | {"up"}
        checked["rule_metrics"] = {name: prometheus.query(f'count({{__name__="{name}"}})') for name in names}

    settings = Settings(
        broker_url=broker.url,
        tansu=True,
        data_dir=tmp_path_factory.mktemp("drift"),
    )
    runs, missing = run_drift_scenario(
        settings, history=HISTORY, stream=STREAM, epochs=EPOCHS, after_replay=after_replay, on_status=print
    )
    assert missing is None
    stationary, drifted = runs
    for run in runs:
        worst = {k: round(v, 4) for k, v in run.worst.items()}
        print(f"\n{run.name}: windows {run.windows:.0f}, worst {worst}, events {run.detector_events}")
        print(f"{run.name}: predictability {run.predictability}, alerts {run.alerts}")
    return {"stationary": stationary, "drifted": drifted, **checked}


def test_stationary_replay_stays_quiet(scenario: dict[str, Any]) -> None:
    stationary: ScenarioRun = scenario["stationary"]
    assert stationary.windows >= 2, "too few drift windows were evaluated to judge"
    assert stationary.alarms == []
    assert not any(stationary.detector_events.values()), stationary.detector_events
    assert not DRIFT_ALERTS & set(stationary.alerts)


def test_constructed_drift_fires_signals_detectors_and_alerts(scenario: dict[str, Any]) -> None:
    drifted: ScenarioRun = scenario["drifted"]
    assert drifted.alarms, f"no drift signal crossed its threshold: {drifted.worst}"
    assert any(drifted.detector_events.values()), drifted.detector_events
    assert {"OnevecEmbeddingDrift", "OnevecStreamDrift"} <= set(drifted.alerts)


def test_every_dashboard_expression_returns_data(scenario: dict[str, Any]) -> None:
    empty = [key for key, result in scenario["panels"].items() if not result]
    assert not empty, f"dashboard queries without data: {empty}"
    assert len(scenario["panels"]) >= 30


def test_consumer_lag_was_seen_during_the_replay(scenario: dict[str, Any]) -> None:
    """The replay is produced far faster than it is learned, so both stages lag at some scrape."""
    peak = {r["metric"]["stage"]: float(r["value"][1]) for r in scenario["peak_lag"]}
    print(f"\npeak consumer lag during the drifted replay: {peak}")
    assert peak.get("sessionize", 0) > 0 and peak.get("learn", 0) > 0


def test_every_alert_rule_is_loaded_and_evaluates(scenario: dict[str, Any]) -> None:
    loaded = {rule["name"] for group in scenario["rules"] for rule in group["rules"]}
    assert loaded >= DRIFT_ALERTS | {"OnevecConsumerLagHigh", "OnevecFreshnessSlow", "OnevecDeadLetterRate"}
    assert all(rule["health"] == "ok" for group in scenario["rules"] for rule in group["rules"])
    # The drift rules' expressions return data (they fire) while the drifted worker runs; the
    # others answer (successfully, possibly with an empty vector when their condition is false).
    assert scenario["rule_results"]["OnevecStreamDrift"]
    missing = [name for name, result in scenario["rule_metrics"].items() if not result]
    assert not missing, f"alert rules read metrics Prometheus has no data for: {missing}"
    assert (
        scenario["rule_results"]["OnevecEmbeddingDrift"]
        or "OnevecEmbeddingDrift" in scenario["drifted"].alerts
    )
