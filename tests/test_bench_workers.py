"""The bench's worker layouts (``onevec.streams.tools.bench.workers``) without processes: the
supervised default is one supervisor process whose merged /metrics page (each child's samples
labelled with its role) gives the same totals as the two children's own pages, nothing counted
twice, and a page missing a child is refused rather than read short."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from onevec.streams.gateway import merge_metrics
from onevec.streams.settings import Settings
from onevec.streams.tools.bench.workers import LAYOUTS, SUPERVISED, Workers, layout_label
from onevec.streams.worker import metric_total, scrape_metrics

TOTALS = ("onevec_events_accepted_total", "onevec_examples_emitted_total", "onevec_examples_learned_total")


def child_page(role: str) -> str:
    """A worker's /metrics page as the role's child exports it (a few of its real families)."""
    registry = CollectorRegistry()
    Gauge("onevec_worker_partitions", "Partitions.", registry=registry).set(4)
    accepted = Counter("onevec_events_accepted", "Accepted.", ["source"], registry=registry)
    emitted = Counter("onevec_examples_emitted", "Emitted.", registry=registry)
    learned = Counter("onevec_examples_learned", "Learned.", registry=registry)
    Histogram("onevec_learner_round_seconds", "Rounds.", registry=registry).observe(0.2)
    if role == "ingest":
        accepted.labels(source="kafka").inc(600)
        accepted.labels(source="http").inc(7)
        emitted.inc(607)
    else:
        learned.inc(590)
    return generate_latest(registry).decode()


def parsed(tmp_path: Path, name: str, page: bytes | str) -> dict[str, float]:
    """A page read as the bench reads a worker's (``scrape_metrics``)."""
    path = tmp_path / name
    path.write_bytes(page if isinstance(page, bytes) else page.encode())
    return scrape_metrics(path.as_uri())


def supervisor_page(pages: dict[str, str]) -> bytes:
    own = CollectorRegistry()
    restarts = Counter("onevec_worker_restarts", "Restarts.", ["role"], registry=own)
    up = Gauge("onevec_worker_child_up", "Up.", ["role"], registry=own)
    for role in ("ingest", "learn"):
        restarts.labels(role=role)
        up.labels(role=role).set(1 if role in pages else 0)
    return merge_metrics(pages, own)


def test_the_supervised_default_is_the_third_layout_with_a_label_of_its_own() -> None:
    assert LAYOUTS == (("all",), ("ingest", "learn"), SUPERVISED)
    labels = [layout_label(roles) for roles in LAYOUTS]
    assert labels == ["", ", ingest + learn workers", ", supervised default (ingest + learn children)"]
    workers = Workers(Settings(broker_url="127.0.0.1:9"), SUPERVISED)
    assert len(workers.workers) == 1 and workers.workers[0].supervised
    # Lookups (freshness probes, /healthz?ready) go through the supervisor's one port.
    assert workers.learner is workers.workers[0] and workers.base_url == workers.workers[0].base_url


def test_the_merged_page_sums_to_the_childrens_totals_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pages = {role: child_page(role) for role in ("ingest", "learn")}
    merged = parsed(tmp_path, "merged", supervisor_page(pages))
    children = {role: parsed(tmp_path, role, page) for role, page in pages.items()}
    workers = Workers(Settings(broker_url="127.0.0.1:9"), SUPERVISED)
    monkeypatch.setattr(workers.workers[0], "metrics", lambda: merged)
    summed = workers.metrics()
    for name in (*TOTALS, "onevec_worker_partitions", "onevec_learner_round_seconds_count"):
        assert metric_total(summed, name) == sum(metric_total(page, name) for page in children.values()), name
    assert metric_total(summed, "onevec_events_accepted_total") == 607
    assert metric_total(summed, "onevec_examples_learned_total") == 590
    assert workers.learned() == 590
    # Every child sample is on the page once, under its role; the rest is the supervisor's own.
    own = {key for key in summed if key.startswith(("onevec_worker_restarts", "onevec_worker_child_up"))}
    assert len(summed) - len(own) == sum(len(page) for page in children.values())


def test_a_merged_page_without_a_child_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    merged = parsed(tmp_path, "merged", supervisor_page({"ingest": child_page("ingest")}))
    workers = Workers(Settings(broker_url="127.0.0.1:9"), SUPERVISED)
    monkeypatch.setattr(workers.workers[0], "metrics", lambda: merged)
    # As a worker of the split that does not answer: the bench's polls skip it (OSError).
    with pytest.raises(OSError, match="no learn child"):
        workers.metrics()
