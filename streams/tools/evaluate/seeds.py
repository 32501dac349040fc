"""The prequential comparison of ``onevec eval`` alone (no probes or tasks), over several seeds:
HR@k and MRR@k of every recommender as the mean (min-max) over the seeds, as a Markdown table
(docs/evaluation.md's tables come from here).

    python -m onevec.streams.tools.evaluate.seeds ml-latest-small --seeds 0,1,2 [--limit 20000]
    python -m onevec.streams.tools.evaluate.seeds my_events.parquet --catalog my_catalogue.csv

The baselines are tuned once, on the validation slice of the history, with the first seed. A
seed changes only the models that draw random numbers (the live model, its frozen copy, the
skip-gram, GRU4Rec, random); the count and neighbour baselines rank by a fixed tie rule, so they
run with the first seed only and have no spread.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from onevec.models.evaluation.baselines import RandomScores
from onevec.models.evaluation.data import load_eval_data
from onevec.models.evaluation.gru4rec import GRU4Rec
from onevec.models.evaluation.harness import Recommender, run_prequential
from onevec.models.evaluation.personal import repeat_share
from onevec.models.pretrain import session_examples
from onevec.streams.settings import Settings, load_settings
from onevec.streams.tools.evaluate.run import (
    EvalOptions,
    embedding_models,
    prequential_lineup,
    single_threaded,
)

__all__ = ["Measured", "main", "measure", "table"]


@dataclass
class Measured:
    dataset: str
    events: int
    scored: int  # scored examples per run
    repeat_share: float
    seeds: list[int]
    scores: dict[str, list[tuple[float, float]]]  # recommender -> (HR@k, MRR@k) per seed run
    settings: dict[str, str]  # recommender -> its setting chosen on validation
    seconds: float


def _options(settings: Settings, seed: int, retrain: bool | None) -> EvalOptions:
    config = settings.model_config_for_training().model_copy(update={"seed": seed})
    return EvalOptions(seed=seed, config=config, retrain=retrain)


def measure(
    dataset: str,
    seeds: list[int],
    limit: int = 0,
    retrain: bool | None = None,
    stage: Callable[[str], None] = print,
    catalog: str | None = None,
) -> Measured:
    settings = load_settings()
    data = load_eval_data(dataset, catalog or dataset, settings.session_gap_seconds)
    if limit:
        data = data.head(limit)
    records = session_examples(data.events)
    history = int(EvalOptions().history_share * len(records))
    started = time.perf_counter()
    scores: dict[str, list[tuple[float, float]]] = {}
    with single_threaded():
        options = _options(settings, seeds[0], retrain)
        first, tuned = prequential_lineup(data, records, history, options, stage)
        for seed in seeds:
            options = _options(settings, seed, retrain)
            recommenders: list[Recommender] = first
            if seed != seeds[0]:
                recommenders = [
                    *embedding_models(data, options),
                    *[
                        GRU4Rec(**tuned[m.name].chosen, seed=seed, retrain_at=m.retrain_at, name=m.name)
                        for m in first
                        if isinstance(m, GRU4Rec)
                    ],
                    RandomScores(seed),
                ]
            result = run_prequential(recommenders, records, history, options.batch_size)
            for name in result.ranks:
                scores.setdefault(name, []).append((result.hr(name), result.mrr(name)))
            figures = (f"{n} {result.hr(n):.3f}/{result.mrr(n):.3f}" for n in result.ranks)
            stage(f"seed {seed}: " + ", ".join(figures))
    return Measured(
        dataset=data.name + (f", first {limit:,} events" if limit else ""),
        events=len(data.events),
        scored=len(result.timestamps),
        repeat_share=repeat_share(records, history),
        seeds=seeds,
        scores=scores,
        settings={name: t.summary for name, t in tuned.items()},
        seconds=time.perf_counter() - started,
    )


def spread(values: list[float]) -> str:
    """A mean over seeds with its range (one seed: the figure alone)."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ({min(values):.3f}-{max(values):.3f})"


def table(measured: Measured) -> str:
    """Markdown: one row per recommender, best mean HR first."""
    rows = sorted(measured.scores.items(), key=lambda item: -np.mean([hr for hr, _ in item[1]]))
    lines = [
        "| recommender | HR@20 | MRR@20 | seeds | setting (chosen on validation) |",
        "|---|---|---|---|---|",
    ]
    for name, runs in rows:
        hr, mrr = ([run[i] for run in runs] for i in (0, 1))
        lines.append(
            f"| {name} | {spread(hr)} | {spread(mrr)} | {len(runs)} | {measured.settings.get(name, '')} |"
        )
    return "\n".join(lines)


def add_stream_arguments(parser: argparse.ArgumentParser) -> None:
    """The stream and seeds arguments the seeds and live tools share."""
    parser.add_argument("dataset", help="built-in dataset name, or your events file")
    parser.add_argument("--catalog", help="your catalogue file (default: the dataset's own)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--limit", type=int, default=0, help="only the first N events in time")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_stream_arguments(parser)
    parser.add_argument("--retrain", choices=["auto", "on", "off"], default="auto", help="GRU4Rec retrained")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()
    started = time.perf_counter()
    measured = measure(
        args.dataset,
        [int(s) for s in args.seeds.split(",")],
        args.limit,
        {"auto": None, "on": True, "off": False}[args.retrain],
        stage=lambda text: print(f"{time.perf_counter() - started:5.0f}s {text}", flush=True),
        catalog=args.catalog,
    )
    print(
        f"\n{measured.dataset}: {measured.events:,} events, {measured.scored:,} scored examples, "
        f"repeat share {measured.repeat_share:.3f}, seeds {measured.seeds}, {measured.seconds:.0f}s\n"
    )
    print(table(measured))
    if args.out is not None:
        args.out.write_text(json.dumps(asdict(measured), indent=1))


if __name__ == "__main__":
    main()
