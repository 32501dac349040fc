"""The ``onevec`` command line."""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn
from rich.table import Table

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
def pretrain(
    source: Annotated[str, typer.Argument(help="Events file (CSV/Parquet/JSON lines) or dataset name.")],
    epochs: Annotated[int, typer.Option(help="Passes over the history.")] = 3,
    catalog: Annotated[str, typer.Option(help="Catalogue file or dataset name for attributes.")] = "",
    holdout: Annotated[float, typer.Option(help="Share of the newest examples kept out to evaluate.")] = 0.2,
    output: Annotated[Path | None, typer.Option(help="Checkpoint path (default: the worker's).")] = None,
) -> None:
    """Train the encoders offline on history and write a checkpoint the worker starts from."""
    from models.prequential import prequential_popularity
    from models.pretrain import evaluate_next_item, session_examples
    from models.pretrain import pretrain as run_pretrain
    from models.trainer import OnlineTrainer
    from streams.learner import attribute_tokens, load_attributes

    settings = load_settings()
    examples = session_examples(
        read_events(settings, source), settings.max_session_items, gap_seconds=settings.session_gap_seconds
    )
    cut = int(len(examples) * (1 - holdout))
    train, test = examples[:cut], examples[cut:]
    trainer = OnlineTrainer(settings.model_config_for_training())
    for item_id, attrs in (load_attributes(catalog) if catalog else {}).items():
        trainer.set_attributes(item_id, attribute_tokens(attrs))
    with progress_bar() as bar:
        task = bar.add_task(f"pretrain {source}", total=epochs * len(train))
        run_pretrain(
            trainer,
            train,
            epochs,
            on_progress=lambda n: bar.advance(task, n),
            on_epoch=lambda epoch, loss: console.print(f"epoch {epoch}: mean loss {loss:.4f}"),
        )
    path = output or settings.data_dir / "checkpoints" / "learner.pt"
    trainer.save_checkpoint(path, offsets={})
    console.print(f"checkpoint: {path} ({trainer.steps} steps, {len(train):,} examples)")
    if test:
        model = evaluate_next_item(trainer, test)
        pairs = [(e["prefix"], e["item_id"]) for e in examples]
        baseline = prequential_popularity(pairs, score_from=cut)
        console.print(
            f"held-out newest {len(test):,} examples: model HR@20 {model.hr:.3f} MRR@20 {model.mrr:.3f}; "
            f"popularity so far HR@20 {baseline.hr:.3f} MRR@20 {baseline.mrr:.3f}"
        )


WorkerOption = Annotated[
    str, typer.Option("--worker", envvar="ONEVEC_WORKER_URL", help="A running worker's base URL.")
]


@app.command()
def similar(
    item: Annotated[str, typer.Argument(help="Item id.")],
    worker: WorkerOption,
    k: Annotated[int, typer.Option(help="How many neighbours.")] = 10,
    filter: Annotated[list[str] | None, typer.Option(help="Payload filter key=value (repeatable).")] = None,
) -> None:
    """Items nearest to ITEM by its unified vector in Qdrant, optionally filtered."""
    query = urllib.parse.urlencode([("k", k), *(("filter", f) for f in filter or [])])
    answer = _get(f"{worker}/similar/{urllib.parse.quote(item)}?{query}")
    _print_items(f"similar to {item}", answer["similar"])


@app.command()
def recommend(
    worker: WorkerOption,
    session: Annotated[str, typer.Option(help="A live session id (the worker's session key).")] = "",
    items: Annotated[str, typer.Option(help="Comma-separated item ids, oldest first.")] = "",
    k: Annotated[int, typer.Option(help="How many items.")] = 20,
) -> None:
    """Next items for a live session, or for a list of items, by the live session encoder."""
    if bool(session) == bool(items):
        raise typer.BadParameter("give exactly one of --session or --items")
    query = urllib.parse.urlencode({"k": k, **({"session": session} if session else {"items": items})})
    answer = _get(f"{worker}/recommend?{query}")
    _print_items(f"recommended after {', '.join(answer['items'][-5:])}", answer["recommended"])


def _get(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - configured worker
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        console.print(f"[red]{error.code}: {json.loads(error.read()).get('error')}")
        raise typer.Exit(1) from None


def _print_items(title: str, rows: list[dict[str, Any]]) -> None:
    table = Table(title=title)
    for column in ("item", "score", "attributes"):
        table.add_column(column)
    for row in rows:
        attrs = ", ".join(f"{k}={v}" for k, v in row.get("attributes", {}).items())
        table.add_row(row["item_id"], f"{row['score']:.3f}", attrs)
    console.print(table)


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
