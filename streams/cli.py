"""The ``onevec`` command line."""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

from streams.settings import Settings, load_settings
from streams.worker import WorkerProcess, metric_total

__all__ = ["app"]

app = typer.Typer(help="onevec: live unified product embeddings.", no_args_is_help=True)
console = Console()


def _progress() -> Progress:
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


@app.command()
def worker() -> None:
    """Run a worker (sessionize agent, HTTP ingest, /metrics) until interrupted."""
    from streams.worker import run_worker

    run_worker(load_settings())


@app.command()
def broker(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0 = a free one).")] = 9092,
) -> None:
    """Run the embedded Tansu broker in the foreground (for a worker and replays to share)."""
    from deploy.embedded_broker import EmbeddedBroker

    settings = load_settings()
    with EmbeddedBroker(host=settings.bind_host, port=port) as embedded:
        console.print(f"embedded broker: export ONEVEC_BROKER_URL={embedded.url}  (Ctrl-C stops)")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


@app.command()
def replay(
    source: Annotated[str, typer.Argument(help="Events file (CSV/Parquet/JSON lines) or dataset name.")],
    speedup: Annotated[
        float,
        typer.Option(help="Keep event-time gaps divided by this factor; 0 = as fast as possible."),
    ] = 0.0,
    limit: Annotated[int, typer.Option(help="Only the first N events (0 = all).")] = 0,
) -> None:
    """Stream a user's events file or a built-in dataset into the clicks topic, in time order."""
    settings = load_settings()
    if settings.embedded:
        raise typer.BadParameter(
            "set ONEVEC_BROKER_URL (e.g. from `onevec broker`); `onevec demo` runs everything at once"
        )
    count, elapsed = _replay(settings, source, speedup or None, limit)
    console.print(f"replayed {count} events in {elapsed:.1f}s ({count / max(elapsed, 1e-9):,.0f} ev/s)")


def _replay(settings: Settings, source: str, speedup: float | None, limit: int) -> tuple[int, float]:
    from streams.datasets import load_events
    from streams.producer import EventProducer
    from streams.replay import replay as run_replay
    from streams.topics import bootstrap_servers, ensure_topics

    events = load_events(source if not Path(source).exists() else Path(source), settings.session_gap_seconds)
    if limit:
        events = events.head(limit)
    ensure_topics(settings)
    with (
        EventProducer(bootstrap_servers(settings), settings.clicks_topic) as producer,
        _progress() as bar,
    ):
        task = bar.add_task(f"replay {source}", total=len(events))
        elapsed = run_replay(events, producer, speedup, lambda n: bar.advance(task, n))
    return len(events), elapsed


@app.command()
def demo(
    dataset: Annotated[
        str, typer.Option(help="Built-in dataset or events file to replay.")
    ] = "movielens-100k",
    limit: Annotated[int, typer.Option(help="Only the first N events (0 = all).")] = 0,
    timeout: Annotated[
        float, typer.Option(help="Give up waiting for the worker after this many seconds.")
    ] = 900.0,
) -> None:
    """Embedded broker + one worker + a replay of a real dataset, then a summary."""
    from deploy.embedded_broker import EmbeddedBroker

    logging.basicConfig(level=logging.WARNING)
    settings = load_settings()
    with EmbeddedBroker(host=settings.bind_host) if settings.embedded else nullcontext() as embedded:
        broker_url = embedded.url if embedded else settings.broker_url
        settings = settings.model_copy(
            update={"broker_url": broker_url, "tansu": settings.tansu or embedded is not None}
        )
        console.print(f"broker: {broker_url} ({'embedded Tansu' if embedded else 'external'})")
        worker_proc = WorkerProcess(settings, broker_url)
        started = time.monotonic()
        try:
            worker_proc.start()
            console.print(f"worker: {worker_proc.base_url} ready in {time.monotonic() - started:.1f}s")
            replay_started = time.monotonic()
            produced, replay_seconds = _replay(settings, dataset, None, limit)
            processed_at, samples = _wait_processed(worker_proc, produced, timeout)
        finally:
            worker_proc.stop()
    elapsed = processed_at - replay_started
    table = Table(title=f"onevec demo: {dataset}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = {
        "events replayed": f"{produced:,}",
        "events accepted": f"{metric_total(samples, 'onevec_events_accepted_total'):,.0f}",
        "events rejected (DLQ)": f"{metric_total(samples, 'onevec_events_rejected_total'):,.0f}",
        "duplicates": f"{metric_total(samples, 'onevec_events_duplicate_total'):,.0f}",
        "examples emitted": f"{metric_total(samples, 'onevec_examples_emitted_total'):,.0f}",
        "sessions closed": f"{metric_total(samples, 'onevec_sessions_closed_total'):,.0f}",
        "sessions open": f"{metric_total(samples, 'onevec_sessions_open'):,.0f}",
        "replay (producer) ev/s": f"{produced / max(replay_seconds, 1e-9):,.0f}",
        "end-to-end ev/s (first send to last event processed)": f"{produced / max(elapsed, 1e-9):,.0f}",
    }
    for name, value in rows.items():
        table.add_row(name, value)
    console.print(table)


def _wait_processed(
    worker_proc: WorkerProcess, produced: int, timeout: float
) -> tuple[float, dict[str, float]]:
    deadline = time.monotonic() + timeout
    with _progress() as bar:
        task = bar.add_task("worker processed", total=produced)
        while True:
            samples = worker_proc.metrics()
            done = metric_total(samples, "onevec_events_accepted_total") + metric_total(
                samples, "onevec_events_rejected_total"
            )
            bar.update(task, completed=done)
            if done >= produced:
                return time.monotonic(), samples
            if time.monotonic() > deadline:
                raise typer.Exit(f"worker processed {done:.0f} of {produced} events before the timeout")
            time.sleep(0.5)


if __name__ == "__main__":
    app()
