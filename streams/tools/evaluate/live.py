"""The live model alone, for choosing its settings: HR@k, MRR@k and the learner's examples/s
of ``ModelConfig`` variants over several seeds, on the validation slice of the history or on
the scored stream (no baselines, no probes).

    python -m onevec.streams.tools.evaluate.live ml-latest-small --split validation \\
        --variant base --variant gate:repeat_gate=true --variant neg256:negatives=256 \\
        [--seeds 0,1,2] [--limit 20000] [--out runs.jsonl]
    python -m onevec.streams.tools.evaluate.live movielens-100k --throughput 30000 --variant ...
    python -m onevec.streams.tools.evaluate.live my_events.parquet --catalog my_catalogue.csv ...

``--split validation`` is the slice every baseline is tuned on (the history's first 80% fitted,
its last 20% scored test-then-train: ``onevec.models.evaluation.tuning``); ``--split test`` is
``onevec eval``'s comparison (the history fitted, the rest scored). Choose on validation only.
A variant is ``NAME:key=value,key=value`` (ModelConfig fields over the worker's settings);
``NAME`` alone is the settings as they are. The learner's examples/s is the stream's examples
over the time of its ``LearningRound`` steps (training, replay, the worker's own prequential
scoring, the gate and the user history), on one thread like the worker; ``--throughput``
measures it apart, the variants interleaved batch by batch (comparable on a busy machine).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onevec.models.clickstream.examples import ExampleRecord
from onevec.models.evaluation.baselines import LiveModel
from onevec.models.evaluation.data import load_eval_data
from onevec.models.evaluation.harness import run_prequential
from onevec.models.evaluation.tuning import VALIDATION_FIT_SHARE
from onevec.models.online.config import ModelConfig
from onevec.models.online.repeat_gate import FEATURES
from onevec.models.pretrain import session_examples
from onevec.streams.settings import load_settings
from onevec.streams.tools.evaluate.run import EvalOptions, single_threaded
from onevec.streams.tools.evaluate.seeds import add_stream_arguments, spread

__all__ = ["Run", "main", "parse_variant", "run_live", "split", "throughput"]


@dataclass
class Run:
    dataset: str
    split: str
    variant: str
    overrides: dict[str, Any]
    seed: int
    hr: float
    mrr: float
    scored: int
    examples_per_second: float  # the learner's, over the scored stream
    gate: dict[str, float]  # the repeat gate's final scale and weights (empty without a gate)
    seconds: float


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME:key=value,...`` -> (NAME, overrides); values are validated by ModelConfig."""
    name, _, rest = text.partition(":")
    overrides: dict[str, Any] = {}
    for pair in filter(None, rest.split(",")):
        key, sep, value = pair.partition("=")
        if not sep or key not in ModelConfig.model_fields:
            raise ValueError(f"not a ModelConfig key=value: {pair!r}")
        overrides[key] = None if value.lower() == "none" else value
    return name, overrides


def split(records: list[ExampleRecord], which: str) -> tuple[list[ExampleRecord], int]:
    """The records a run walks and how many of them are fitted first (never scored)."""
    history = int(EvalOptions().history_share * len(records))
    if which == "test":
        return records, history
    if which == "validation":
        return records[:history], int(VALIDATION_FIT_SHARE * history)
    raise ValueError(f"split is validation or test, got {which!r}")


def run_live(
    dataset: str,
    which: str,
    variants: list[tuple[str, dict[str, Any]]],
    seeds: list[int],
    limit: int = 0,
    on_run: Callable[[Run], None] = lambda _: None,
    catalog: str | None = None,
) -> list[Run]:
    settings = load_settings()
    data = load_eval_data(dataset, catalog or dataset, settings.session_gap_seconds)
    if limit:
        data = data.head(limit)
    records, fitted = split(session_examples(data.events), which)
    tokens = data.tokens()
    name = data.name + (f", first {limit:,} events" if limit else "")
    epochs = 1 if EvalOptions().quick else 2
    runs = []
    with single_threaded():
        for variant, overrides in variants:
            for seed in seeds:
                base = settings.model_config_for_training().model_dump()
                config = ModelConfig.model_validate({**base, **overrides, "seed": seed})
                model = LiveModel(config, tokens, history_epochs=epochs)
                started = time.perf_counter()
                result = run_prequential([model], records, fitted, EvalOptions().batch_size)
                gate = model.trainer.repeat_gate
                run = Run(
                    dataset=name,
                    split=which,
                    variant=variant,
                    overrides=overrides,
                    seed=seed,
                    hr=result.hr(model.name),
                    mrr=result.mrr(model.name),
                    scored=len(result.timestamps),
                    examples_per_second=model.learned / model.learn_seconds if model.learn_seconds else 0.0,
                    gate={}
                    if gate is None
                    else {
                        "scale": gate.scale,
                        **dict(zip(FEATURES, gate.weights.tolist(), strict=True)),
                    },
                    seconds=time.perf_counter() - started,
                )
                on_run(run)
                runs.append(run)
    return runs


def throughput(
    dataset: str,
    variants: list[tuple[str, dict[str, Any]]],
    examples: int,
    warmup: int = 20,
    catalog: str | None = None,
) -> dict[str, float]:
    """The learner's examples/s of each variant on the stream's first ``examples`` examples:
    ``LearningRound`` steps of one batch, the variants interleaved batch by batch so a change
    in the machine's load hits them alike; the first ``warmup`` batches are not timed."""
    settings = load_settings()
    data = load_eval_data(dataset, catalog or dataset, settings.session_gap_seconds)
    records = session_examples(data.events)[:examples]
    tokens = data.tokens()
    base = settings.model_config_for_training().model_dump()
    models = {
        name: LiveModel(ModelConfig.model_validate({**base, **overrides}), tokens)
        for name, overrides in variants
    }
    size = EvalOptions().batch_size
    seconds = dict.fromkeys(models, 0.0)
    timed = 0
    with single_threaded():
        for number, start in enumerate(range(0, len(records), size)):
            batch = records[start : start + size]
            for name, model in models.items():
                started = time.perf_counter()
                model.round.step(batch)
                if number >= warmup:
                    seconds[name] += time.perf_counter() - started
            timed += len(batch) if number >= warmup else 0
    return {name: timed / spent for name, spent in seconds.items()}


def table(runs: list[Run]) -> str:
    """Markdown: one row per variant, mean (min-max) over its seeds."""
    lines = ["| variant | HR@20 | MRR@20 | learner ex/s | seeds |", "|---|---|---|---|---|"]
    for variant in dict.fromkeys(r.variant for r in runs):
        mine = [r for r in runs if r.variant == variant]
        lines.append(
            f"| {variant} | {spread([r.hr for r in mine])} | {spread([r.mrr for r in mine])} | "
            f"{np.mean([r.examples_per_second for r in mine]):,.0f} | {len(mine)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_stream_arguments(parser)
    parser.add_argument("--split", choices=["validation", "test"], default="validation")
    parser.add_argument("--variant", action="append", default=[], help="NAME[:key=value,...]")
    parser.add_argument("--out", type=Path, help="append each run as a JSON line here")
    parser.add_argument(
        "--throughput",
        type=int,
        default=0,
        metavar="N",
        help="instead: the learner's examples/s of each variant on the first N examples, interleaved",
    )
    args = parser.parse_args()
    variants = [parse_variant(v) for v in args.variant or ["settings"]]
    if args.throughput:
        rates = throughput(args.dataset, variants, args.throughput, catalog=args.catalog)
        first = next(iter(rates.values()))
        for name, rate in rates.items():
            print(f"{name}: {rate:,.0f} ex/s, {rate / first:.2f}x {variants[0][0]}")
        return

    def report(run: Run) -> None:
        print(
            f"{run.dataset} {run.split} {run.variant} seed {run.seed}: HR {run.hr:.4f} MRR {run.mrr:.4f} "
            f"of {run.scored:,}, {run.examples_per_second:,.0f} ex/s, gate {run.gate}, {run.seconds:.0f}s",
            flush=True,
        )
        if args.out is not None:
            with args.out.open("a") as file:
                file.write(json.dumps(asdict(run)) + "\n")

    runs = run_live(
        args.dataset,
        args.split,
        variants,
        [int(s) for s in args.seeds.split(",")],
        args.limit,
        report,
        catalog=args.catalog,
    )
    print()
    print(table(runs))


if __name__ == "__main__":
    main()
