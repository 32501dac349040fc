"""The ``onevec`` command line."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from streams.settings import Settings, load_settings

__all__ = ["app"]

app = typer.Typer(help="onevec: live unified product embeddings.", no_args_is_help=True)
console = Console()


def progress_bar() -> Progress:
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
    events = read_events(settings, source, limit)
    return len(events), replay_events(settings, events, source, speedup)


def read_events(settings: Settings, source: str, limit: int = 0) -> pd.DataFrame:
    from streams.datasets import load_events

    events = load_events(Path(source) if Path(source).exists() else source, settings.session_gap_seconds)
    return events.head(limit) if limit else events


def replay_events(settings: Settings, events: pd.DataFrame, label: str, speedup: float | None) -> float:
    """Replay with a progress bar; returns the elapsed seconds."""
    from streams.producer import EventProducer
    from streams.replay import replay as run_replay
    from streams.topics import bootstrap_servers, ensure_topics

    ensure_topics(settings)
    with (
        EventProducer(bootstrap_servers(settings), settings.clicks_topic) as producer,
        progress_bar() as bar,
    ):
        task = bar.add_task(f"replay {label}", total=len(events))
        return run_replay(events, producer, speedup, lambda n: bar.advance(task, n))


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
    from streams.demo import run_demo

    logging.basicConfig(level=logging.WARNING)
    run_demo(load_settings(), dataset, limit, timeout, console)


if __name__ == "__main__":
    app()
