"""The ``onevec`` command line."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from onevec.streams.console import (
    console,
    data_source,
    progress_bar,
    read_events,
    replay_events,
    staged_progress,
)
from onevec.streams.settings import Settings, load_settings
from onevec.streams.user_errors import UserError, require_reachable

if TYPE_CHECKING:
    from onevec.streams.qdrant import QdrantStore

__all__ = ["app", "main"]

_T = TypeVar("_T")

app = typer.Typer(help="onevec: live unified product embeddings.", no_args_is_help=True)


@app.command()
def worker(
    role: Annotated[
        str | None,
        typer.Option(
            help="all | ingest | learn (default: ONEVEC_ROLE; without it, an ingest and a learn "
            "process under a supervisor); see docs/operations.md."
        ),
    ] = None,
) -> None:
    """Run a worker (sessionize agent, learner, HTTP ingest and lookups, /metrics) until interrupted."""
    from onevec.streams.supervisor import run_supervised, supervises

    settings = load_settings(**({"role": role} if role else {}))
    if not settings.embedded:  # found out in seconds, not after the client's 30 s bootstrap
        require_reachable(settings.broker_url.split(",")[0], "broker (ONEVEC_BROKER_URL)")
    if supervises(settings):
        run_supervised(settings)
        return
    from onevec.streams.worker import run_worker

    run_worker(settings)


@app.command()
def broker(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0 = a free one).")] = 9092,
) -> None:
    """Run the embedded Tansu broker in the foreground (for a worker and replays to share)."""
    from onevec.deploy.embedded_broker import EmbeddedBroker
    from onevec.deploy.processes import exit_on_signals

    settings = load_settings()
    exit_on_signals()  # SIGTERM and SIGINT (also when started in the background) stop Tansu
    with EmbeddedBroker(host=settings.bind_host, port=port) as embedded:
        # ONEVEC_TANSU: a worker then uses the short group timeouts Tansu needs (README).
        exports = f"ONEVEC_BROKER_URL={embedded.url} ONEVEC_TANSU=true"
        console.print(f"embedded broker: export {exports}  (Ctrl-C stops)")
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
    limit: Annotated[int, typer.Option(min=0, help="Only the first N events (0 = all).")] = 0,
) -> None:
    """Stream a user's events file or a built-in dataset into the clicks topic, in time order."""
    data_source(source)
    settings = load_settings()
    if settings.embedded:
        raise UserError(
            "set ONEVEC_BROKER_URL (e.g. from `onevec broker`); `onevec demo` runs everything at once"
        )
    count, elapsed = _replay(settings, source, speedup or None, limit)
    console.print(f"replayed {count} events in {elapsed:.1f}s ({count / max(elapsed, 1e-9):,.0f} ev/s)")


def _replay(settings: Settings, source: str, speedup: float | None, limit: int) -> tuple[int, float]:
    events = read_events(settings, source, limit)
    return len(events), replay_events(settings, events, source, speedup)


@app.command()
def pretrain(
    source: Annotated[str, typer.Argument(help="Events file (CSV/Parquet/JSON lines) or dataset name.")],
    epochs: Annotated[int, typer.Option(help="Passes over the history.")] = 3,
    catalog: Annotated[str, typer.Option(help="Catalogue file or dataset name for attributes.")] = "",
    holdout: Annotated[float, typer.Option(help="Share of the newest examples kept out to evaluate.")] = 0.2,
    output: Annotated[Path | None, typer.Option(help="Checkpoint path (default: the worker's).")] = None,
) -> None:
    """Train the encoders offline on history and write a checkpoint the worker starts from."""
    from onevec.models.catalog import attribute_tokens, load_attributes
    from onevec.models.online.trainer import OnlineTrainer
    from onevec.models.pretrain import evaluate_next_item, session_examples
    from onevec.models.pretrain import pretrain as run_pretrain
    from onevec.models.ranking import prequential_popularity

    settings = load_settings()
    examples = session_examples(
        read_events(settings, source), settings.max_session_items, gap_seconds=settings.session_gap_seconds
    )
    cut = int(len(examples) * (1 - holdout))
    train, test = examples[:cut], examples[cut:]
    trainer = OnlineTrainer(settings.model_config_for_training())
    for item_id, attrs in (load_attributes(data_source(catalog)) if catalog else {}).items():
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
    str,
    typer.Option(
        "--worker",
        envvar="ONEVEC_WORKER_URL",
        help="A running worker's base URL. Without one, the vectors a stopped worker stored are "
        "read (at ONEVEC_QDRANT_PATH, or its ONEVEC_QDRANT_URL).",
    ),
]


@app.command()
def similar(
    item: Annotated[str, typer.Argument(help="Item id.")],
    worker: WorkerOption = "",
    k: Annotated[int, typer.Option(help="How many neighbours.")] = 10,
    filter: Annotated[list[str] | None, typer.Option(help="Payload filter key=value (repeatable).")] = None,
) -> None:
    """Items nearest to ITEM by its unified vector in Qdrant, optionally filtered."""
    if malformed := [f for f in filter or [] if "=" not in f]:
        raise UserError(f"--filter {malformed[0]!r}: expected attribute=value")
    if worker:
        query = urllib.parse.urlencode([("k", k), *(("filter", f) for f in filter or [])])
        rows = _get(f"{worker}/similar/{urllib.parse.quote(item)}?{query}")["similar"]
    else:
        filters = dict(f.split("=", 1) for f in filter or [])

        async def lookup(store: QdrantStore) -> list[dict[str, Any]]:
            try:
                hits = await store.similar(item, k=k, filter=filters or None)
            except ValueError as error:  # a filter key that is not a plain attribute name
                raise UserError(str(error)) from None
            if filters and not hits:  # none match, or (as a worker answers 400) no item has the key
                from onevec.streams.http_api import unknown_filter_attributes

                if unknown := unknown_filter_attributes(filters, await _stored_attribute_names(store)):
                    raise UserError(unknown)
            return [
                {"item_id": h.item_id, "score": h.score, "attributes": h.payload.get("attributes", {})}
                for h in hits
            ]

        rows = _read_stored(load_settings(), lookup)
    _print_items(f"similar to {item}", rows)


async def _stored_attribute_names(store: QdrantStore) -> set[str]:
    """The attribute names of the stored items. The store has no query for them, so every item
    is ranked, unfiltered, for its payload (measured 0.06-0.3 s at 5,000 synthetic items, 0.5-0.85
    s at 20,000, local mode and qdrant-edge): only a filtered lookup that found nothing asks."""
    everything = await store.rank_items([0.0] * store.dim, await store.count("items"), using="unified")
    return {name for hit in everything for name in hit.payload.get("attributes", {})}


@app.command()
def recommend(
    worker: WorkerOption = "",
    user: Annotated[
        str, typer.Option(help="A user id: what to show them as their next session starts.")
    ] = "",
    session: Annotated[str, typer.Option(help="A live session id (the worker's session key).")] = "",
    items: Annotated[str, typer.Option(help="Comma-separated item ids, oldest first.")] = "",
    mode: Annotated[
        str,
        typer.Option(
            help="For a user or session: mixed (the repeat gate's mixture), again (only items the "
            "user had) or discover (only items they never had)."
        ),
    ] = "mixed",
    k: Annotated[int, typer.Option(help="How many items.")] = 20,
) -> None:
    """Next items for a user, a live session or a list of items, ranked by Qdrant over the live
    model's vectors. Without a worker: the stored vectors, and for --items the stopped worker's
    last checkpoint (its session encoder)."""
    given = {name: value for name, value in (("user", user), ("session", session), ("items", items)) if value}
    if len(given) != 1:
        raise typer.BadParameter("give exactly one of --user, --session or --items")
    if worker:
        answer = _get(f"{worker}/recommend?{urllib.parse.urlencode({'k': k, 'mode': mode, **given})}")
    else:
        settings = load_settings()
        answer = _read_stored(settings, lambda store: _recommend_stored(settings, store, given, mode, k))
    if answer["user_id"] is not None and answer["session_id"] is None:
        title = f"{mode} for user {answer['user_id']}"
    else:
        title = f"{mode} after {', '.join(answer['items'][-5:])}"
    _print_items(title, answer["recommended"])


def _read_stored(settings: Settings, lookup: Callable[[QdrantStore], Awaitable[_T]]) -> _T:
    """``lookup`` over the vectors a worker with these settings stored, with none running (a
    running worker holds its embedded store's folder)."""
    from onevec.streams.learner.recommend import UnknownSession, UnknownUser
    from onevec.streams.qdrant import ItemNotFound, QdrantStore

    if not settings.qdrant_url and settings.qdrant_path is None:
        raise UserError(
            "no --worker (ONEVEC_WORKER_URL) to ask, and no stored vectors to read: set "
            "ONEVEC_QDRANT_PATH to the folder a worker wrote (a worker without it keeps them in memory)"
        )
    where = settings.qdrant_url or str(settings.qdrant_path)

    async def run() -> _T:
        async with QdrantStore.from_settings(settings) as store:
            if not await store.collections_exist():
                raise UserError(f"no onevec vectors are stored at {where}")
            return await lookup(store)

    try:
        return asyncio.run(run())
    except ItemNotFound as error:
        raise UserError(f"unknown item {error.args[0]!r}: no vector of it at {where}") from None
    except UnknownUser as error:
        raise UserError(f"unknown user {error.args[0]!r}: no history of them at {where}") from None
    except UnknownSession as error:
        raise UserError(f"no live session {error.args[0]!r} at {where}") from None
    except RuntimeError as error:  # the folder is held, or cannot be opened
        raise UserError(
            f"cannot read the vectors at {where} ({error}); is a worker running? Use --worker"
        ) from None


async def _recommend_stored(
    settings: Settings, store: QdrantStore, given: dict[str, str], mode: str, k: int
) -> dict[str, Any]:
    """What a worker restarted on these settings would answer: its learner restored from the
    last checkpoint and aligned to the stored vectors, as at a worker's start."""
    from onevec.models.catalog import load_attributes
    from onevec.streams.learner.learner import Learner
    from onevec.streams.learner.recommend import MODES

    if mode not in MODES or ("items" in given and mode != "mixed"):
        raise UserError(f"mode must be one of {', '.join(MODES)} (--items has no user: mixed only)")
    learner = Learner(settings, store, load_attributes(settings.catalog) if settings.catalog else {})
    if "items" in given and not learner.checkpoints.path.exists():
        raise UserError(
            f"no checkpoint at {learner.checkpoints.path}: --items needs the model that encodes them"
        )
    learner.restore()
    if "items" in given:
        await learner.align_to_serving()
        found = await learner.recommend_for_items([i for i in given["items"].split(",") if i], k)
    elif "user" in given:
        found = await learner.recommender.for_user(given["user"], k, mode)
    else:
        found = await learner.recommender.for_session(given["session"], k, mode)
    return dataclasses.asdict(found)


def _get(url: str) -> dict[str, Any]:
    require_reachable(url, "worker")
    try:
        with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - configured worker
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise UserError(
            f"the worker answered {error.code}: {json.loads(error.read()).get('error')}"
        ) from None


def _print_items(title: str, rows: list[dict[str, Any]]) -> None:
    """Items with their score and attributes; recommendations add the user's decayed count of
    each item they had before."""
    had = any("had" in row for row in rows)
    table = Table(title=title)
    for column in ("item", "score", *(("had",) if had else ()), "attributes"):
        table.add_column(column)
    for row in rows:
        attrs = ", ".join(f"{k}={v}" for k, v in row.get("attributes", {}).items())
        count = [] if not had else ["-" if row.get("had") is None else f"{row['had']:.2f}"]
        table.add_row(row["item_id"], f"{row['score']:.3f}", *count, attrs)
    console.print(table)


@app.command()
def demo(
    dataset: Annotated[
        str, typer.Option(help="Built-in dataset or events file to replay.")
    ] = "movielens-100k",
    limit: Annotated[int, typer.Option(min=0, help="Only the first N events (0 = all).")] = 0,
    timeout: Annotated[
        float, typer.Option(help="Give up waiting for the worker after this many seconds.")
    ] = 900.0,
) -> None:
    """Embedded broker + a worker (the default layout: ingest and learn processes) + a replay of
    a real dataset, then a summary."""
    from onevec.deploy.processes import exit_on_signals
    from onevec.streams.tools.demo import run_demo

    logging.basicConfig(level=logging.WARNING)
    exit_on_signals()  # its broker and worker stop with it
    run_demo(load_settings(), dataset, limit, timeout, console)


@app.command()
def bench(
    quick: Annotated[bool, typer.Option(help="Small sizes (what the test runs): a minute or two.")] = False,
    sections: Annotated[
        str,
        typer.Option(
            help="Comma-separated: pipeline,learner,sink,freshness,memory; opt-in: scale,distributed."
        ),
    ] = "pipeline,learner,sink,freshness,memory",
    output: Annotated[Path, typer.Option(help="Report path stem (.md and .json).")] = Path("reports/bench"),
    memory_items: Annotated[str, typer.Option(help="Item counts for the memory rows, e.g. 1000,10000.")] = "",
) -> None:
    """Throughput, freshness and memory, each against its ceiling, in one run (docs/performance.md)."""
    from onevec.streams.tools.bench import OPT_IN_SECTIONS, SECTIONS, run_bench, unknown_sections

    chosen = [name.strip() for name in sections.split(",") if name.strip()]
    if unknown := unknown_sections(chosen):
        known = ", ".join(SECTIONS + OPT_IN_SECTIONS)
        raise UserError(f"--sections: no section {', '.join(unknown)} (choose from {known})")
    try:
        items = [int(n) for n in memory_items.split(",") if n.strip()]
        if any(count < 1 for count in items):
            raise ValueError
    except ValueError:
        raise UserError(
            f"--memory-items: {memory_items!r} is not a list of positive item counts, e.g. 1000,10000"
        ) from None
    logging.basicConfig(level=logging.WARNING)
    run_bench(
        load_settings(),
        quick=quick,
        sections=chosen,
        output=output,
        console=console,
        memory_items=items,
    )


@app.command()
def chaos(
    dataset: Annotated[
        str, typer.Option(help="Built-in dataset or events file to replay.")
    ] = "movielens-100k",
    events: Annotated[int, typer.Option(help="Events to replay (0 = all).")] = 50_000,
    kills: Annotated[int, typer.Option(help="Workers killed with SIGKILL, then restarted.")] = 20,
    cuts: Annotated[int, typer.Option(help="Times every broker connection is cut for a while.")] = 3,
    outages: Annotated[int, typer.Option(help="Times the learn worker's Qdrant goes away for a while.")] = 2,
    every: Annotated[float, typer.Option(help="Seconds between two faults.")] = 5.0,
    ingest_workers: Annotated[int, typer.Option(help="Ingest workers (plus one learn worker).")] = 2,
    seed: Annotated[int, typer.Option(help="Seed of the fault schedule.")] = 0,
    workdir: Annotated[
        Path | None, typer.Option(help="Data, Qdrant and logs (default: a temp folder).")
    ] = None,
) -> None:
    """Chaos soak: replay a dataset into ingest and learn workers while killing them, cutting
    their broker connection and taking Qdrant away, then reconcile everything (docs/operations.md).
    Exit status 1 when an accepted event was lost or a duplicate went unflagged."""
    from onevec.deploy.processes import exit_on_signals
    from onevec.streams.tools.chaos import ChaosPlan, run_chaos

    logging.basicConfig(level=logging.WARNING)
    exit_on_signals()  # its broker and workers stop with it
    plan = ChaosPlan(dataset, events, kills, cuts, outages, every, ingest_workers, seed, workdir)
    if not run_chaos(load_settings(), plan, console):
        raise typer.Exit(1)


@app.command("eval")
def eval_(
    dataset: Annotated[str, typer.Argument(help="Built-in dataset (not with --events).")] = "movielens-100k",
    events: Annotated[Path | None, typer.Option(help="Your events file (CSV/Parquet/JSON lines).")] = None,
    catalog: Annotated[Path | None, typer.Option(help="Your catalogue file (item_id + columns).")] = None,
    out: Annotated[Path, typer.Option(help="Directory for report.md and its PNGs.")] = Path("reports/eval"),
    quick: Annotated[bool, typer.Option(help="Fewer epochs and a smaller variant grid.")] = False,
    limit: Annotated[int, typer.Option(min=0, help="Only the first N events in time (0 = all).")] = 0,
) -> None:
    """Prequential next-item evaluation against baselines, probes, tasks and kernel alignment,
    written as a Markdown report with plots (see docs/evaluation.md)."""
    from onevec.models.evaluation.data import load_eval_data
    from onevec.streams.tools.evaluate.report import claims, results_table, write_report
    from onevec.streams.tools.evaluate.run import EvalOptions, run_evaluation

    if (events is None) != (catalog is None):
        raise UserError("give both --events and --catalog, or neither")
    settings = load_settings()
    data = load_eval_data(
        data_source(str(events or dataset)),
        data_source(str(catalog or dataset)),
        settings.session_gap_seconds,
    )
    if limit:
        data = data.head(limit)
    options = EvalOptions(quick=quick, config=settings.model_config_for_training())
    started = time.perf_counter()

    def stage(text: str) -> None:
        console.print(f"[dim]{time.perf_counter() - started:4.0f}s {text}")

    evaluation = run_evaluation(data, options, on_stage=stage)
    path = write_report(evaluation, out)
    table = Table(title=f"prequential next item, {data.name}")
    for column in ("recommender", "HR@20", "MRR@20"):
        table.add_column(column)
    for name, hr, mrr in results_table(evaluation):
        table.add_row(name, f"{hr:.4f}", f"{mrr:.4f}")
    console.print(table)
    for claim, held, evidence in claims(evaluation):
        verdict = "n/a" if held is None else ("held" if held else "NOT held")
        console.print(f"{verdict}: {claim} [dim]({evidence})")
    console.print(f"report: {path} ({time.perf_counter() - started:.0f}s)")


@app.command("drift-scenario")
def drift_scenario(
    history: Annotated[int, typer.Option(help="Events the model is pretrained on first.")] = 30_000,
    stream: Annotated[int, typer.Option(help="Events replayed after them (drift starts half way).")] = 20_000,
    epochs: Annotated[int, typer.Option(help="Pretraining passes over the history.")] = 3,
    window: Annotated[float, typer.Option(help="Drift window in seconds.")] = 1.0,
    prometheus: Annotated[bool, typer.Option(help="Scrape with a local Prometheus, if installed.")] = True,
) -> None:
    """Replay MovieLens-100k stationary, then with item ids remapped half way (constructed
    drift), and show which drift signals, detectors and Prometheus alerts fire."""
    from onevec.streams.tools.drift_scenario import run_drift_scenario

    logging.basicConfig(level=logging.ERROR)
    runs, missing = run_drift_scenario(
        load_settings(),
        history=history,
        stream=stream,
        epochs=epochs,
        window_seconds=window,
        use_prometheus=prometheus,
        on_status=console.print,
    )
    table = Table(title="drift signals: worst window against the reference (threshold)")
    table.add_column("signal")
    table.add_column("threshold", justify="right")
    for run in runs:
        table.add_column(run.name, justify="right")
    for signal, threshold in runs[0].thresholds.items():
        cells = [f"{r.worst.get(signal, float('nan')):.3f}{' !' if signal in r.alarms else ''}" for r in runs]
        table.add_row(signal, f"{threshold:g}", *cells)
    for detector in runs[0].detector_events:
        counts = (f"{r.detector_events.get(detector, 0):.0f}" for r in runs)
        table.add_row(f"events {detector}", "> 0", *counts)
    for label in runs[0].predictability:
        table.add_row(f"predictability {label}", "", *(f"{r.predictability.get(label, 0):.3f}" for r in runs))
    table.add_row("alerts fired", "", *(", ".join(r.alerts) or "-" for r in runs))
    console.print(table)
    if missing:
        console.print(f"Prometheus alerts not evaluated: {missing}")


static_app = typer.Typer(help="Static text / image vectors and the inductive encoder (docs/static.md).")
catalog_app = typer.Typer(help="The catalogue topic (new or changed items, keyed by item_id).")
app.add_typer(static_app, name="static")
app.add_typer(catalog_app, name="catalog")


@static_app.command("build")
def static_build(
    catalog: Annotated[str, typer.Option(help="Catalogue file (CSV/Parquet/JSON lines) or dataset name.")],
    images: Annotated[
        Path | None, typer.Option(help="Training images: an IDX file or a directory of PNG/JPEG files.")
    ] = None,
    events: Annotated[
        str | None, typer.Option(help="Events file or dataset name: sessions for the BYOL encoder.")
    ] = None,
    proximity: Annotated[float, typer.Option(help="BYOL proximity weight lambda (0 = ablation).")] = 0.1,
    text_encoder: Annotated[
        str, typer.Option(help="Which encoder fills the text vector: autoencoder or inductive.")
    ] = "autoencoder",
    epochs: Annotated[int, typer.Option(help="Text autoencoder epochs.")] = 40,
) -> None:
    """Train the static encoders on a catalogue; store them and its vectors as a new version."""
    from onevec.models.static.bundle import save_bundle
    from onevec.models.static_build import BuildOptions, build_static

    settings = load_settings()
    if text_encoder not in ("autoencoder", "inductive"):
        raise UserError("--text-encoder must be autoencoder or inductive")
    options = BuildOptions(
        dim=settings.model_dim,
        text_epochs=epochs,
        proximity=proximity,
        text_encoder=text_encoder,  # type: ignore[arg-type]
        session_gap_seconds=settings.session_gap_seconds,
    )
    data_source(catalog)
    if events:
        data_source(events)
    with progress_bar() as bar:
        on_progress = staged_progress(bar)
        result = build_static(catalog, images, events, options, on_progress)
    path = save_bundle(settings.static_path, result.models, result.vectors)
    for name, losses in result.losses.items():
        console.print(f"{name}: loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    reasons = Counter(r.reason for _, r in result.rejected)
    console.print(
        f"static version {result.models.version}: {len(result.vectors)} of {len(result.items)} items have "
        f"vectors; {len(result.rejected)} records rejected {dict(reasons)}; {path}"
    )


@static_app.command("report")
def static_report(
    output: Annotated[Path, typer.Option(help="Markdown report path.")] = Path("reports/static.md"),
    image_limit: Annotated[int, typer.Option(help="Fashion-MNIST train images used.")] = 10_000,
) -> None:
    """Measure the static encoders on real data; print the table and write the report."""
    from onevec.streams.tools.static_report import BuildOptions, run_report

    with progress_bar() as bar:
        on_progress = staged_progress(bar)
        rows, markdown = run_report(BuildOptions(image_limit=image_limit), on_progress)
    table = Table(title="static vectors on real data")
    for column in ("dataset", "task", "method", "value", "note"):
        table.add_column(column)
    for row in rows:
        table.add_row(row.dataset, row.task, row.method, f"{row.value:.4f}", row.note)
    console.print(table)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(markdown)
    console.print(f"report: {output}")


@catalog_app.command("publish")
def catalog_publish(
    source: Annotated[str, typer.Argument(help="Catalogue file (CSV/Parquet/JSON lines) or dataset name.")],
) -> None:
    """Send every catalogue record to the catalogue topic, keyed by item_id. Image file
    columns (image / image_path, relative to the file's directory) are read here and sent
    inside the record (image_data, base64): the worker never opens a path."""
    from onevec.streams.kafka.catalog_publisher import publish_catalog

    settings = load_settings()
    if settings.embedded:
        raise UserError("set ONEVEC_BROKER_URL (e.g. from `onevec broker`)")
    data_source(source)
    require_reachable(settings.broker_url.split(",")[0], "broker (ONEVEC_BROKER_URL)")
    with progress_bar() as bar:
        task = bar.add_task(f"publish {source}", total=None)
        sent = publish_catalog(settings, source, lambda n: bar.update(task, completed=n))
    console.print(f"published {sent} catalogue records to {settings.catalog_topic}")


def main() -> None:
    """The ``onevec`` command: a user's mistake is one line on stderr and exit status 2."""
    try:
        app()
    except UserError as error:
        Console(stderr=True).print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
