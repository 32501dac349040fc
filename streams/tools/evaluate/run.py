"""One evaluation, end to end: the prequential comparison, the probes and tasks, the kernel
alignment grid, drift; returns an :class:`Evaluation` that ``report`` writes out."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from onevec.models.clickstream.examples import ExampleRecord
from onevec.models.evaluation import sources as src
from onevec.models.evaluation.baselines import FrozenSkipGram, LiveModel, RandomScores
from onevec.models.evaluation.data import EvalData, Task, restrict, tasks_from_attributes, text_documents
from onevec.models.evaluation.drift import LiveWatch, drift_series
from onevec.models.evaluation.grid import GridResult, default_variants, run_grid
from onevec.models.evaluation.harness import PrequentialResult, Recommender, run_prequential
from onevec.models.evaluation.lineup import baselines
from onevec.models.evaluation.personal import repeat_mask
from onevec.models.evaluation.probes import ProbeRow, probe_tasks
from onevec.models.evaluation.similar_items import SimilarItems, measure_similar_items
from onevec.models.evaluation.tasks import (
    PurchaseResult,
    compare_heads,
    cooccurrence_pairs,
    purchase_similarity,
    return_pairs,
)
from onevec.models.evaluation.tuning import Tuned
from onevec.models.kernel_alignment import centred_alignment
from onevec.models.online.config import ModelConfig
from onevec.models.pretrain import session_examples

__all__ = [
    "EvalOptions",
    "Evaluation",
    "embedding_models",
    "prequential_lineup",
    "run_evaluation",
    "single_threaded",
]


@dataclass(frozen=True)
class EvalOptions:
    history_share: float = 0.3  # the pre-training period: fitted, never scored
    batch_size: int = 256  # the live learner's micro-batch
    windows: int = 8  # time windows of the per-window table and plot
    min_clicks: int = 5  # items probed: clicked at least this often (a behaviour vector to probe)
    quick: bool = False  # smaller grid, fewer epochs
    seed: int = 0
    config: ModelConfig = field(default_factory=ModelConfig)
    # GRU4Rec retrained from scratch at each window boundary; None: only where affordable
    # (onevec.models.evaluation.lineup.retrain_affordable).
    retrain: bool | None = None


@dataclass
class Evaluation:
    data: EvalData
    options: EvalOptions
    prequential: PrequentialResult
    repeats: np.ndarray  # per scored example: the user had its next item before
    tuned: dict[str, Tuned]  # baseline -> its setting chosen on the validation slice of the history
    tasks: list[Task]
    probes: list[ProbeRow]
    fusion_weights: dict[str, float]  # the unified vector's, chosen on validation over all tasks
    probe_items: list[str]
    map_vectors: np.ndarray  # unified vectors of the probe items (for the 2-D map)
    purchase: PurchaseResult  # on vectors frozen at the end of the history
    similar_items: SimilarItems  # neighbours against later co-occurrence (frozen vectors)
    heads: dict[str, dict[str, float]]  # downstream task -> head -> AUC (frozen vectors)
    head_rows: dict[str, int]
    return_no_history: int  # return rows skipped: the user had no earlier item
    grid: GridResult | None
    tracked_alignment: dict[str, tuple[float, float]]  # task -> (running sums, batch recompute)
    drift: list[dict[str, float]]
    alignment_over_time: list[tuple[float, dict[str, float]]]
    upserts: int
    sources: list[str]
    notes: list[str]

    @property
    def repeat_share(self) -> float:
        """The share of scored next items the user had before."""
        return float(self.repeats.mean()) if len(self.repeats) else 0.0


def prequential_lineup(
    data: EvalData,
    records: list[ExampleRecord],
    history: int,
    options: EvalOptions,
    stage: Callable[[str], None],
) -> tuple[list[Recommender], dict[str, Tuned]]:
    """The live model, the same frozen, and every baseline (tuned on the history's validation
    slice), in the order of the report's columns."""
    stage("baselines: settings chosen on the validation slice of the history")
    lineup = baselines(
        records,
        history,
        options.windows,
        seed=options.seed,
        quick=options.quick,
        retrain=options.retrain,
        on_tuned=lambda name, tuned: stage(f"  {name}: {tuned.summary}"),
    )
    if not lineup.retrained:
        stage("  GRU4Rec, retrained: not run (over the default budget; EvalOptions.retrain=True runs it)")
    return [*embedding_models(data, options), *lineup.recommenders, RandomScores(options.seed)], lineup.tuned


def embedding_models(data: EvalData, options: EvalOptions) -> list[Recommender]:
    """The live model, the same frozen after the history, and a frozen skip-gram."""
    tokens = data.tokens()
    epochs = 1 if options.quick else 2
    return [
        LiveModel(options.config, tokens, history_epochs=epochs),
        LiveModel(options.config, tokens, history_epochs=epochs, frozen=True),
        FrozenSkipGram(options.config, epochs=epochs + 1),
    ]


def run_evaluation(
    data: EvalData, options: EvalOptions, on_stage: Callable[[str], None] | None = None
) -> Evaluation:
    with single_threaded():
        return _run(data, options, on_stage or (lambda _: None))


@contextmanager
def single_threaded() -> Iterator[None]:
    """One thread for torch and BLAS: the steps are small, and on a shared machine spinning
    worker threads made training ~4x slower, not faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(threads)


def _run(data: EvalData, options: EvalOptions, stage: Callable[[str], None]) -> Evaluation:
    records = session_examples(data.events)
    history = int(options.history_share * len(records))
    all_tasks = tasks_from_attributes(data.attributes)  # on every catalogue item: tracked live
    recommenders, tuned = prequential_lineup(data, records, history, options, stage)
    live = recommenders[0]
    frozen = recommenders[1]  # stops learning at the end of the history
    assert isinstance(live, LiveModel) and isinstance(frozen, LiveModel) and frozen.frozen

    stage(f"prequential: {len(records) - history:,} examples after {history:,} of history")
    watch: LiveWatch | None = None

    def on_batch(position: int, batch: list[ExampleRecord]) -> None:
        nonlocal watch
        if watch is None:  # after the first batch: the live model has fitted the history
            watch = LiveWatch(
                live.trainer, all_tasks, snapshot_every=_snapshot_every(len(records) - history, options)
            )
        watch(position, batch)

    result = run_prequential(recommenders, records, history, options.batch_size, on_batch=on_batch)
    assert watch is not None, "the stream after the history is empty"

    clicks = Counter(r["item_id"] for r in records if not r.get("duplicate"))
    catalogue = set(data.attributes) | set(clicks)
    items = sorted(i for i in catalogue if clicks[i] >= options.min_clicks)
    stage(f"probes on {len(items):,} items clicked >= {options.min_clicks} times")
    tasks = [t for t in (restrict(task, items) for task in all_tasks) if t is not None]
    base_sources: dict[str, np.ndarray] = {"behaviour": src.behaviour_vectors(live.trainer, items)}
    text = src.text_vectors(text_documents(data.catalog), items, dim=options.config.dim)
    if text is not None:
        base_sources["text"] = text

    def sources_for(task: Task) -> dict[str, np.ndarray]:
        attributes = src.attribute_vectors(live.trainer, items, withhold=task.withheld)
        return {**base_sources, "attributes": attributes}

    probes, fusion_weights = probe_tasks(tasks, items, sources_for, options.seed)
    full_sources = {**base_sources, "attributes": src.attribute_vectors(live.trainer, items)}
    full_sources["unified"] = src.unified(full_sources)
    full_sources["served item vector"] = live.trainer.encode_items(items)

    stage("session and outcome tasks (vectors frozen at the end of the history)")
    # The live model has learned every event by now, so its vectors would be scored on their
    # own training data; these tasks read the model frozen after pre-training instead, and
    # only the stream after the history.
    assert len(records) == len(data.events)  # one record per event, in the same order
    scored = np.arange(len(data.events)) >= history
    frozen_sources = {**base_sources, "behaviour": src.behaviour_vectors(frozen.trainer, items)}
    frozen_sources["attributes"] = src.attribute_vectors(frozen.trainer, items)
    frozen_sources["unified"] = src.unified(frozen_sources)
    frozen_sources["served item vector"] = frozen.trainer.encode_items(items)
    purchase = purchase_similarity(data.events, data.positive, scored, items, frozen_sources)
    similar_items = measure_similar_items(
        data.events,
        history,
        items,
        {name: frozen_sources[name] for name in ("unified", "behaviour", "served item vector")},
        min_clicks=options.min_clicks,
    )
    heads: dict[str, dict[str, float]] = {}
    head_rows: dict[str, int] = {}
    served = frozen_sources["served item vector"]
    a, b, followed, train = cooccurrence_pairs(records[history:], items, served, seed=options.seed)
    if followed[train].any() and followed[~train].any() and not followed[~train].all():
        heads["next item vs random item"] = compare_heads(a, b, followed, train, seed=options.seed)
        head_rows["next item vs random item"] = len(followed)
    no_history = 0
    if data.negative.any():
        rows = scored & (
            data.positive if data.outcome_source == "event types" else np.ones(len(data.events), dtype=bool)
        )
        pairs = return_pairs(data.events, rows, data.negative, items, served, seed=options.seed)
        no_history = pairs.no_history
        test = pairs.labels[~pairs.train]
        if pairs.labels[pairs.train].any() and test.any() and not test.all():
            name = "return" if data.outcome_source == "event types" else "return proxy (rating <= 2)"
            heads[name] = compare_heads(
                pairs.users, pairs.items, pairs.labels, pairs.train, seed=options.seed
            )
            head_rows[name] = len(pairs.labels)

    grid = None
    if tasks:
        variants = default_variants(options.quick)
        stage(f"kernel alignment grid: {len(variants)} variants x {len(tasks)} tasks")
        grid = run_grid(records, items, tasks, variants)

    tracked = {}
    for task in all_tasks:
        vectors, labels = watch.published_matrix(task)
        tracked[task.name] = (watch.trackers[task.name].alignment(), centred_alignment(vectors, labels))
    return Evaluation(
        data=data,
        options=options,
        prequential=result,
        repeats=repeat_mask(records, history),
        tuned=tuned,
        tasks=tasks,
        probes=probes,
        fusion_weights=fusion_weights,
        probe_items=items,
        map_vectors=full_sources["unified"],
        purchase=purchase,
        similar_items=similar_items,
        heads=heads,
        head_rows=head_rows,
        return_no_history=no_history,
        grid=grid,
        tracked_alignment=tracked,
        drift=drift_series(watch.snapshots),
        alignment_over_time=[(s.timestamp, s.alignment) for s in watch.snapshots],
        upserts=watch.upserts,
        sources=list(full_sources),
        notes=list(data.notes),
    )


def _snapshot_every(stream_examples: int, options: EvalOptions, snapshots: int = 16) -> int:
    return max(1, stream_examples // options.batch_size // snapshots)
