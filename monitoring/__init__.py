"""Monitoring: the Prometheus metric catalogue, live drift and predictability, and the files
Prometheus and Grafana read (alert rules, scrape config, dashboards)."""

from pathlib import Path

__all__ = ["ALERTS_FILE", "GRAFANA_DIR", "PROMETHEUS_DIR"]

PROMETHEUS_DIR = Path(__file__).parent / "prometheus"
ALERTS_FILE = PROMETHEUS_DIR / "alerts.yml"
GRAFANA_DIR = Path(__file__).parent / "grafana"
