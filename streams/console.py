"""What the command line and the demo share: the console, progress bars, and reading and
replaying an events file into the clicks topic."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

from onevec.streams.settings import Settings
from onevec.streams.user_errors import UserError, require_reachable

if TYPE_CHECKING:  # pandas costs ~80 MB of RSS: the supervisor imports this and reads no file
    import pandas as pd

__all__ = ["console", "data_source", "progress_bar", "read_events", "replay_events", "staged_progress"]

console = Console()


def progress_bar() -> Progress:
    return Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )


def staged_progress(bar: Progress) -> Callable[[str, int, int], None]:
    """A ``(stage, done, total)`` callback that shows one bar per stage of a long build."""
    tasks: dict[str, Any] = {}

    def on_progress(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total)
        bar.update(tasks[stage], completed=done)

    return on_progress


def data_source(source: str) -> Path | str:
    """A user's file or a built-in dataset's name; UserError naming both kinds otherwise."""
    from onevec.models.datasets import BUILTIN_DATASETS

    if Path(source).is_file():
        return Path(source)
    if source in BUILTIN_DATASETS:
        return source
    names = ", ".join(sorted(BUILTIN_DATASETS))
    raise UserError(f"{source}: no such file, and not a built-in dataset (built in: {names})")


def read_events(settings: Settings, source: str, limit: int = 0) -> pd.DataFrame:
    from onevec.models.datasets import load_events

    try:
        events = load_events(data_source(source), settings.session_gap_seconds)
    except (ValueError, KeyError) as error:  # unreadable, or not the documented events format
        raise UserError(f"{source}: {error}") from None
    return events.head(limit) if limit else events


def replay_events(settings: Settings, events: pd.DataFrame, label: str, speedup: float | None) -> float:
    """Replay with a progress bar; returns the elapsed seconds."""
    from onevec.streams.kafka.producer import EventProducer
    from onevec.streams.kafka.replay import replay as run_replay
    from onevec.streams.kafka.topics import bootstrap_servers, ensure_topics

    require_reachable(bootstrap_servers(settings)[0], "broker (ONEVEC_BROKER_URL)")
    ensure_topics(settings)
    with (
        EventProducer(
            bootstrap_servers(settings), settings.clicks_topic, **settings.kafka_client_options()
        ) as producer,
        progress_bar() as bar,
    ):
        task = bar.add_task(f"replay {label}", total=len(events))
        return run_replay(
            events,
            producer,
            speedup,
            lambda n: bar.advance(task, n),
            timestamp_unit=settings.timestamp_unit,
        )
