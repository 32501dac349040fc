"""The shipped Prometheus config, alert rules and Grafana files: promtool accepts them, the
dashboards parse and every metric they name is in the metric catalogue."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from prometheus_client.metrics import MetricWrapperBase

import onevec.monitoring.metrics  # noqa: F401 - registers the catalogue
from onevec.deploy.prometheus_server import promtool_binary
from onevec.monitoring import ALERTS_FILE, GRAFANA_DIR, PROMETHEUS_DIR

GRAFANA = GRAFANA_DIR
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
METRIC_NAME = re.compile(r"\b(onevec_[a-z0-9_]+)")
SUFFIXES = ("", "_total", "_created", "_bucket", "_sum", "_count")


def dashboard_exprs(path: Path) -> list[str]:
    return [target["expr"] for panel in json.loads(path.read_text())["panels"] for target in panel["targets"]]


def catalogue_samples() -> set[str]:
    """Every sample name the catalogue's metrics can export (counter _total, histogram _bucket, ...)."""
    names = set()
    for metric in vars(onevec.monitoring.metrics).values():
        if isinstance(metric, MetricWrapperBase):
            for family in metric.describe():
                names.update(family.name + suffix for suffix in SUFFIXES)
    return names


@pytest.fixture(scope="module")
def promtool() -> str:
    binary = promtool_binary()
    if binary is None:
        pytest.skip("promtool not installed (Debian package `prometheus`; .ci/run installs it)")
    return binary


def test_promtool_checks_rules(promtool: str) -> None:
    result = subprocess.run([promtool, "check", "rules", str(ALERTS_FILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


# promtool unit test of OnevecNotLearning with split roles (ONEVEC_ROLE): an ingest worker
# accepts every event and learns none, the learn worker learns them. Healthy for the first
# 20 minutes; then the learn worker stops learning while events keep arriving.
NOT_LEARNING_TEST = """
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'onevec_events_accepted_total{{job="onevec",instance="ingest-0",event_type="click"}}'
        values: '0+100x60'
      - series: 'onevec_examples_learned_total{{job="onevec",instance="ingest-0"}}'
        values: '0x60'
      - series: 'onevec_examples_learned_total{{job="onevec",instance="learn-0"}}'
        values: '0+100x20 2000x40'
    alert_rule_test:
      - eval_time: 18m
        alertname: OnevecNotLearning
        exp_alerts: []
      - eval_time: 40m
        alertname: OnevecNotLearning
        exp_alerts:
          - exp_labels: {{severity: critical, job: onevec}}
            exp_annotations:
              summary: "Job onevec receives events but learns nothing"
"""


def test_not_learning_alert_judges_a_job_not_an_ingest_worker(promtool: str, tmp_path: Path) -> None:
    tests = tmp_path / "not_learning_test.yml"
    tests.write_text(NOT_LEARNING_TEST.format(rules=json.dumps(str(ALERTS_FILE))))
    result = subprocess.run([promtool, "test", "rules", str(tests)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# promtool unit test of OnevecEmbeddingDrift: a window past its threshold falls between two
# scrapes, so no scraped value of the signal's gauge crosses it; the worker's count of such
# windows does, and the alert fires for the 10 minutes after it.
EMBEDDING_DRIFT_TEST = """
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'onevec_drift_signal{{job="onevec",instance="learn-0",signal="centroid_shift"}}'
        values: '0.03x30'
      - series: 'onevec_drift_threshold{{job="onevec",instance="learn-0",signal="centroid_shift"}}'
        values: '0.07x30'
      - series: 'onevec_drift_alarms_total{{job="onevec",instance="learn-0",signal="centroid_shift"}}'
        values: '0x5 1x25'
      - series: 'onevec_drift_alarms_total{{job="onevec",instance="learn-0",signal="anchor_cka"}}'
        values: '0x30'
    alert_rule_test:
      - eval_time: 4m
        alertname: OnevecEmbeddingDrift
        exp_alerts: []
      - eval_time: 8m
        alertname: OnevecEmbeddingDrift
        exp_alerts:
          - exp_labels: {{severity: warning, job: onevec, instance: learn-0, signal: centroid_shift}}
            exp_annotations:
              summary: "Embedding drift: centroid_shift past its threshold in the last 10 min on learn-0"
              description: "The served item vectors moved away from the drift reference snapshot
                beyond the configured threshold."
      - eval_time: 8m
        alertname: OnevecEmbeddingGeometryChanged
        exp_alerts: []
      - eval_time: 20m
        alertname: OnevecEmbeddingDrift
        exp_alerts: []
"""


def test_embedding_drift_alerts_on_a_window_between_two_scrapes(promtool: str, tmp_path: Path) -> None:
    tests = tmp_path / "embedding_drift_test.yml"
    tests.write_text(EMBEDDING_DRIFT_TEST.format(rules=json.dumps(str(ALERTS_FILE))))
    result = subprocess.run([promtool, "test", "rules", str(tests)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_checks_config(promtool: str) -> None:
    config = PROMETHEUS_DIR / "prometheus.yml"
    result = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboards_cover_the_three_views_and_reference_only_catalogued_metrics() -> None:
    assert [p.stem for p in DASHBOARDS] == ["onevec-drift", "onevec-model", "onevec-pipeline"]
    known = catalogue_samples()
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"] == path.stem and dashboard["panels"]
        ids = [panel["id"] for panel in dashboard["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        for panel in dashboard["panels"]:
            assert panel["datasource"]["uid"] == "onevec-prometheus"
        for expr in dashboard_exprs(path):
            unknown = set(METRIC_NAME.findall(expr)) - known
            assert not unknown, f"{path.name}: {expr} names metrics not in the catalogue: {unknown}"


def test_drift_dashboard_shows_every_signal_with_its_threshold() -> None:
    from onevec.monitoring.drift import DEFAULT_THRESHOLDS

    exprs = dashboard_exprs(GRAFANA / "dashboards" / "onevec-drift.json")
    for signal in DEFAULT_THRESHOLDS:
        assert f'onevec_drift_signal{{signal="{signal}"}}' in exprs
        assert f'onevec_drift_threshold{{signal="{signal}"}}' in exprs
    assert any("onevec_drift_events_total" in e for e in exprs)


def test_alert_rules_reference_only_catalogued_metrics() -> None:
    known = catalogue_samples()
    names = set(METRIC_NAME.findall(ALERTS_FILE.read_text()))
    assert names and not names - known, names - known


def test_provisioning_points_grafana_at_the_datasource_uid_the_dashboards_use() -> None:
    datasource = (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    assert "uid: onevec-prometheus" in datasource and "type: prometheus" in datasource
    provider = (GRAFANA / "provisioning" / "dashboards" / "onevec.yml").read_text()
    assert "type: file" in provider and "path:" in provider
