"""An :class:`~onevec.streams.tools.evaluate.run.Evaluation` as a Markdown report with PNG plots, plus the
verdict on each claim of the papers that the evaluation tests."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.decomposition import PCA  # noqa: E402

from onevec.models.evaluation.data import DETERMINES_LABEL, Task  # noqa: E402
from onevec.models.evaluation.similar_items import SimilarItems  # noqa: E402
from onevec.streams.tools.evaluate.run import Evaluation  # noqa: E402

__all__ = ["claims", "map_figure", "map_groups", "results_table", "similar_items_lines", "write_report"]

LIVE = "onevec live model"
FROZEN_LIVE = "session model, frozen"
MAP_CLASSES = 10  # distinct colours on the item map; the other classes are one grey "other"


def _date(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d")


def results_table(ev: Evaluation) -> list[tuple[str, float, float]]:
    """(recommender, HR@k, MRR@k) over the whole scored stream, best HR first."""
    rows = [(name, ev.prequential.hr(name), ev.prequential.mrr(name)) for name in ev.prequential.ranks]
    return sorted(rows, key=lambda r: -r[1])


def _split_hits(ev: Evaluation, name: str) -> str:
    """HR@k of ``name`` on the scored examples whose next item the user had before, and on the rest."""
    p, repeats = ev.prequential, ev.repeats
    if len(repeats) != len(p.ranks[name]):
        raise ValueError(f"{len(repeats)} repeat marks for {len(p.ranks[name])} scored examples")
    sides = [f"{p.hr(name, mask):.3f}" if mask.any() else "-" for mask in (repeats, ~repeats)]
    return " / ".join(sides)


def claims(ev: Evaluation) -> list[tuple[str, bool | None, str]]:
    """(claim, held?, evidence); held is None when the data cannot test it."""
    out: list[tuple[str, bool | None, str]] = []
    p = ev.prequential
    others = [n for n in p.ranks if n not in (LIVE, FROZEN_LIVE)]
    beaten = [n for n in others if p.hr(LIVE) > p.hr(n) and p.mrr(LIVE) > p.mrr(n)]
    out.append(
        (
            "The live model beats every baseline on next-item HR@20 and MRR@20",
            len(beaten) == len(others),
            f"beats {len(beaten)}/{len(others)}: "
            + ", ".join(f"{n} {p.hr(n):.3f}" for n in others)
            + f"; live {p.hr(LIVE):.3f}",
        )
    )
    out.append(
        (
            "Learning online helps (live model vs the same model frozen after pre-training)",
            p.hr(LIVE) > p.hr(FROZEN_LIVE),
            f"HR@20 {p.hr(LIVE):.3f} vs {p.hr(FROZEN_LIVE):.3f}, MRR@20 {p.mrr(LIVE):.3f} vs "
            f"{p.mrr(FROZEN_LIVE):.3f}",
        )
    )
    if ev.probes:
        held = [r for r in ev.probes if r.unified_holds]
        out.append(
            (
                "Paper 1: one unified vector (one set of fusion weights) is at least as good as the best "
                "single source on every probe task",
                len(held) == len(ev.probes),
                f"{len(held)}/{len(ev.probes)} tasks (tolerance 0.01 balanced accuracy); fails: "
                + (
                    ", ".join(
                        f"{r.task} ({r.scores['unified']:.3f} < {r.best_single[0]} {r.best_single[1]:.3f})"
                        for r in ev.probes
                        if not r.unified_holds
                    )
                    or "none"
                ),
            )
        )
    purchase = ev.purchase
    if purchase.aucs:
        proxy = " (proxy: rating >= 4)" if ev.data.outcome_source.startswith("ratings") else ""
        out.append(
            (
                f"Paper 1: purchased{proxy} items are closer to the rest of their session than the same "
                "session's other items (vectors frozen at the end of the history; AUC > 0.5 for every "
                "source)",
                all(v > 0.5 for v in purchase.aucs.values()),
                f"{purchase.pairs:,} pairs in {purchase.sessions:,} sessions; within-session AUC "
                + ", ".join(f"{s} {v:.3f}" for s, v in purchase.aucs.items()),
            )
        )
    if ev.grid is not None:
        rhos = ev.grid.spearman()
        out.append(
            (
                "Paper 3: kernel alignment ranks embedding variants like the probes do (Spearman > 0 on "
                "every task)",
                all(r > 0 for r in rhos),
                f"mean rho {np.mean(rhos):.2f}; per task "
                + ", ".join(f"{t} {r:.2f}" for t, r in zip(ev.grid.tasks, rhos, strict=True)),
            )
        )
    for task, heads in ev.heads.items():
        inner = heads["inner product (homogeneous)"]
        best_other = max(v for k, v in heads.items() if not k.startswith("inner"))
        out.append(
            (
                "Paper 3: the homogeneous (inner-product) head is at least as good as concatenation "
                f"heads (vectors frozen at the end of the history, time split): {task}",
                inner >= best_other - 0.005,
                ", ".join(f"{k} {v:.3f}" for k, v in heads.items()),
            )
        )
    if ev.tracked_alignment:
        worst = max(abs(a - b) for a, b in ev.tracked_alignment.values())
        out.append(
            (
                "Kernel alignment from running sums (updated per upsert) equals a batch recomputation",
                worst < 1e-6,
                f"largest difference {worst:.2e} over {len(ev.tracked_alignment)} tasks, {ev.upserts:,} "
                "upserts",
            )
        )
    return out


def _plot_over_time(ev: Evaluation, path: Path) -> None:
    rows = ev.prequential.by_window(ev.options.windows)
    mids = [_mid(r) for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in ev.prequential.ranks:
        for axis, metric in zip(axes, (0, 1), strict=True):
            axis.plot(mids, [r[name][metric] for r in rows], marker="o", label=name)
    for axis, title in zip(axes, ("HR@20", "MRR@20"), strict=True):
        axis.set_title(f"prequential {title} per time window")
        axis.tick_params(axis="x", rotation=30)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _mid(row: dict) -> np.datetime64:
    return np.datetime64(int((row["start"] + row["end"]) / 2), "s")


def _map_task(ev: Evaluation) -> Task | None:
    multiclass = [t for t in ev.tasks if t.classes != ["no", "yes"]]
    preferred = [t for t in multiclass if "single" in t.name]
    return next(iter(preferred or multiclass or ev.tasks), None)


def map_groups(
    labels: np.ndarray, classes: Sequence[str], top: int = MAP_CLASSES
) -> tuple[list[tuple[str, np.ndarray]], np.ndarray]:
    """The item map's colour groups: (name, item mask) of the ``top`` classes with the most
    items, largest first, and the mask of the rest ("other": every other class and the items
    without a label, ``labels`` -1)."""
    counts = np.bincount(labels[labels >= 0], minlength=len(classes))
    largest = [int(c) for c in np.argsort(-counts, kind="stable")[:top] if counts[c] > 0]
    return [(classes[c], labels == c) for c in largest], ~np.isin(labels, largest)


def map_figure(vectors: np.ndarray, items: Sequence[str], task: Task | None) -> Figure:
    """2-D PCA of the item vectors coloured by the task's largest classes, the legend beside
    the axes, never over the points."""
    coords = PCA(2, random_state=0).fit_transform(vectors)
    fig, axis = plt.subplots(figsize=(9, 6))
    if task is None:
        axis.scatter(coords[:, 0], coords[:, 1], s=6)
    else:
        labels = np.array([task.labels.get(i, -1) for i in items])
        groups, other = map_groups(labels, task.classes)
        if other.any():
            axis.scatter(
                coords[other, 0],
                coords[other, 1],
                s=4,
                color="lightgrey",
                label=f"other ({int(other.sum()):,})",
            )
        colours = plt.get_cmap("tab10")
        for c, (name, mask) in enumerate(groups):
            axis.scatter(
                coords[mask, 0], coords[mask, 1], s=8, color=colours(c), label=f"{name} ({int(mask.sum()):,})"
            )
        axis.legend(fontsize=7, markerscale=2, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    axis.set_title(f"unified item vectors, PCA 2-D, coloured by {task.name if task else 'nothing'}")
    fig.tight_layout()
    return fig


def _plot_map(ev: Evaluation, path: Path) -> None:
    fig = map_figure(ev.map_vectors, ev.probe_items, _map_task(ev))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_drift(ev: Evaluation, path: Path) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    times = [np.datetime64(int(r["timestamp"]), "s") for r in ev.drift]
    for key, label in (("previous", "vs previous snapshot"), ("first", "vs first snapshot")):
        axes[0].plot(times, [r[f"cka_{key}"] for r in ev.drift], marker="o", label=label)
        axes[1].plot(times, [r[f"cosine_change_{key}"] for r in ev.drift], marker="o", label=label)
        axes[1].plot(
            times, [r[f"centroid_shift_{key}"] for r in ev.drift], ls="--", label=f"centroid shift {label}"
        )
    axes[0].set_title("linear CKA between snapshots")
    axes[1].set_title("cosine change after Procrustes; centroid shift")
    for name in ev.tracked_alignment:
        axes[2].plot(
            [np.datetime64(int(t), "s") for t, _ in ev.alignment_over_time],
            [a[name] for _, a in ev.alignment_over_time],
            label=name,
        )
    axes[2].set_title("kernel alignment of served vectors (running sums)")
    for axis in axes:
        axis.legend(fontsize=7)
        axis.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_grid(ev: Evaluation, path: Path) -> None:
    grid = ev.grid
    assert grid is not None
    fig, axis = plt.subplots(figsize=(7, 5))
    for t, task in enumerate(grid.tasks):
        axis.scatter(grid.alignment[:, t], grid.probe[:, t], label=task, s=18)
    axis.set_xlabel("centred kernel-target alignment")
    axis.set_ylabel("probe balanced accuracy")
    axis.set_title("alignment vs probe accuracy over embedding variants")
    axis.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(ev: Evaluation, out: Path) -> Path:
    """Write ``report.md`` and its PNGs into ``out``; returns the report's path."""
    out.mkdir(parents=True, exist_ok=True)
    p = ev.prequential
    _plot_over_time(ev, out / "metrics_over_time.png")
    if _has_map(ev):
        _plot_map(ev, out / "item_map.png")
    if ev.drift:
        _plot_drift(ev, out / "drift.png")
    if ev.grid is not None:
        _plot_grid(ev, out / "alignment_grid.png")
    events = ev.data.events
    md = [
        f"# onevec evaluation: {ev.data.name}",
        "",
        f"{len(events):,} events, {events['user_id'].nunique():,} users, "
        f"{events['item_id'].nunique():,} items, "
        f"{events['session_id'].nunique():,} sessions, {_date(events['timestamp'].min())} to "
        f"{_date(events['timestamp'].max())}.",
        "",
        *[f"- {note}" for note in ev.notes],
        f"- history (pre-training period, fitted, not scored): the first {p.history_examples:,} examples "
        f"({ev.options.history_share:.0%}); then {p.stream_examples:,} examples scored test-then-train "
        f"in micro-batches of {ev.options.batch_size}, {len(p.timestamps):,} of them scorable "
        "(non-empty prefix)",
        "",
        "## Claims",
        "",
        _table(["claim", "held", "evidence"], [[c, _verdict(h), e] for c, h, e in claims(ev)]),
        "",
        f"## 1. Prequential next-item prediction (HR@{p.k}, MRR@{p.k})",
        "",
        "Every recommender ranks each example's next item before it learns that example; candidates are "
        "the items seen so far, the session's own items excluded, ties broken by a fixed pseudo-random "
        "priority per item (a hash of its id), as the live learner ranks.",
        "",
        _table(
            [
                "recommender",
                f"HR@{p.k}",
                f"MRR@{p.k}",
                f"HR@{p.k}: repeats / new",
                "setting (chosen on the history's validation slice)",
            ],
            [
                [n, f"{h:.4f}", f"{m:.4f}", _split_hits(ev, n), ev.tuned[n].summary if n in ev.tuned else ""]
                for n, h, m in results_table(ev)
            ],
        ),
        "",
        f"Repeat share: {ev.repeat_share:.1%} of the scored next items are items the same user had before "
        "(the most that recommending a user's own items, as P-Pop and TIFU-KNN do, can hit). "
        f"HR@{p.k} on those (repeats) and on the others (new to the user) shows which side each "
        "recommender wins.",
        "",
        f"Per time window (HR@{p.k} / MRR@{p.k}):",
        "",
    ]
    windows = p.by_window(ev.options.windows)
    names = list(p.ranks)
    md.append(
        _table(
            ["window", "examples", *names],
            [
                [
                    f"{_date(w['start'])} .. {_date(w['end'])}",
                    f"{w['examples']:,}",
                    *[f"{w[n][0]:.3f} / {w[n][1]:.3f}" for n in names],
                ]
                for w in windows
            ],
        )
    )
    md += ["", "![metrics over time](metrics_over_time.png)", ""]
    sections = [
        section
        for section in (
            _paper1_section(ev),
            _kernel_section(ev),
            _map_and_drift_section(ev),
            _similar_items_section(ev),
        )
        if section is not None
    ]
    for number, (title, lines) in enumerate(sections, start=2):
        md += [f"## {number}. {title}", "", *lines, ""]
    path = out / "report.md"
    path.write_text("\n".join(md) + "\n")
    return path


Section = tuple[str, list[str]]  # (heading, Markdown lines); a section without data is None


def _paper1_section(ev: Evaluation) -> Section | None:
    md: list[str] = []
    if ev.probes:
        md += [
            f"Sources: {', '.join(ev.sources)}. `behaviour` = the live model's id vectors (clicks only); "
            "`attributes` = the mean of its attribute-token vectors **without the tokens of the attribute "
            "being predicted, nor of any attribute that determines it**; "
            "`text` = denoising autoencoder over the catalogue's free-text words; `unified` = "
            "availability-aware fusion of the L2-normalised sources with one set of weights for every task "
            "(one embedding for all tasks), chosen by the mean score on validation parts of the probes' "
            "training splits: "
            + ", ".join(f"{k} {v:g}" for k, v in ev.fusion_weights.items())
            + " (`unified, equal weights`: all 1). "
            f"Items: the {len(ev.probe_items):,} clicked at least {ev.options.min_clicks} times. "
            "Probe: logistic regression, 70/30 stratified split, balanced accuracy (chance = 1/classes).",
            "",
        ]
        sources = list(ev.probes[0].scores)
        md.append(
            _table(
                ["task", "items", "chance", *sources, "unified >= best single"],
                [
                    [
                        r.task,
                        f"{r.items:,}",
                        f"{r.chance:.2f}",
                        *[f"{r.scores[s]:.3f}" for s in sources],
                        _verdict(r.unified_holds),
                    ]
                    for r in ev.probes
                ],
            )
        )
        leaks = [t for t in ev.tasks if t.determined_by]
        if leaks:
            md += [
                "",
                "Attributes that determine a task's label (their values alone predict it, leave-one-out "
                f"balanced accuracy >= {DETERMINES_LABEL:g}), withheld from `attributes` with the label's "
                "own: "
                + "; ".join(
                    f"{t.name}: " + ", ".join(f"{a} {v:.3f}" for a, v in t.determined_by.items())
                    for t in leaks
                )
                + ".",
            ]
        md.append("")
    purchase = ev.purchase
    if purchase.aucs or ev.heads:
        md += [
            "The session and outcome tasks below read the model **frozen at the end of the history** (it "
            "never learned the events they are scored on) and only the scored stream.",
            "",
        ]
    if purchase.aucs:
        md += [
            "Purchased vs non-purchased items of the same session (sessions wholly in the scored stream): "
            "an item's score is its mean cosine to the session's other items; AUC over every (purchased, "
            f"non-purchased) pair within a session ({purchase.purchased:,} purchased items, "
            f"{purchase.pairs:,} pairs, {purchase.sessions:,} sessions; outcomes from "
            f"{ev.data.outcome_source}):",
            "",
            _table(["source", "AUC"], [[s, f"{v:.3f}"] for s, v in purchase.aucs.items()]),
            "",
        ]
    if ev.heads:
        head_names = list(next(iter(ev.heads.values())))
        md += [
            "Downstream heads over the frozen served item vectors (held-out AUC; paper 3's homogeneous "
            "configuration = the inner product the vectors were trained with):",
            "",
            _table(
                ["task", "rows", *head_names],
                [
                    [t, f"{ev.head_rows[t]:,}", *[f"{h[k]:.3f}" for k in head_names]]
                    for t, h in ev.heads.items()
                ],
            ),
            "",
            "`return` / `return proxy`: a user vector (mean of the user's items with an earlier "
            "timestamp, never the row's own or a later one) and the item vector predict the return "
            f"(proxy: a rating <= 2); rows of the scored stream, {ev.return_no_history:,} rows skipped "
            "because the user had no earlier item; oldest 70% of rows train, newest 30% test. "
            "`next item vs random item`: does b follow a in a session of the scored stream, or is b a "
            "random item; oldest 70% of pairs train, newest 30% test, and a test pair whose unordered "
            "{a, b} occurs in training is dropped. The negatives are uniform random items, so the "
            "concatenation heads can also read how popular b is (and, for the return proxy, how an item "
            "is rated whoever rates it), which an inner product cannot express.",
        ]
    return ("Paper 1's tasks", md) if md else None


def _kernel_section(ev: Evaluation) -> Section | None:
    md: list[str] = []
    if ev.tracked_alignment:
        md += [
            _table(
                ["task", "alignment of served vectors, running sums", "batch recomputation"],
                [[t, f"{a:.4f}", f"{b:.4f}"] for t, (a, b) in ev.tracked_alignment.items()],
            ),
            "",
            "(The served vectors contain the attribute tokens, so attribute tasks align partly through "
            "them.)",
            "",
        ]
    if ev.grid is not None:
        grid = ev.grid
        md += [
            "Embedding variants (behaviour only, trained on the whole stream): alignment / probe "
            "balanced accuracy",
            "",
            _table(
                ["variant", *grid.tasks],
                [
                    [
                        v,
                        *[
                            f"{grid.alignment[i, t]:.3f} / {grid.probe[i, t]:.3f}"
                            for t in range(len(grid.tasks))
                        ],
                    ]
                    for i, v in enumerate(grid.variants)
                ],
            ),
            "",
            _table(
                ["task", "Spearman(alignment, probe)"],
                [[t, f"{r:.2f}"] for t, r in zip(grid.tasks, grid.spearman(), strict=True)],
            ),
            "",
            "![alignment vs probe](alignment_grid.png)",
        ]
    return ("Kernel predictability (paper 3)", md) if md else None


def _has_map(ev: Evaluation) -> bool:
    return len(ev.probe_items) > 2  # a 2-D PCA needs more than two items


def _map_and_drift_section(ev: Evaluation) -> Section | None:
    md: list[str] = []
    if _has_map(ev):
        md += ["![item map](item_map.png)", ""]
    if ev.drift:
        last = ev.drift[-1]
        md += [
            "Snapshots of the live item vectors while it learns: CKA to the first snapshot ends at "
            f"{last['cka_first']:.3f}, "
            f"cosine change after Procrustes {last['cosine_change_first']:.3f}.",
            "",
            "![drift](drift.png)",
        ]
    return ("Item map and drift", md) if md else None


def similar_items_lines(result: SimilarItems) -> list[str]:
    """The similar-items measurement as Markdown; nothing when no item could be scored."""
    if not result.rows:
        return []
    return [
        f"At the end of the history ({_date(result.cut)}), each item's {result.k} nearest neighbours "
        "by each vector of the model frozen there, and by two references computed from the events "
        "before it (the items it co-occurred with most, ties by clicks; the most clicked items), "
        f"against the items it co-occurs with **after** it (clicked at most {result.window} clicks apart "
        f"in one session). Items scored: the {result.scored:,} clicked at least {result.min_clicks} "
        f"times before the cut that co-occur with another item after it; neighbours among "
        f"{result.candidates:,} candidates (probe items clicked before the cut). Popularity "
        "percentile: of the neighbours, by clicks before the cut (100 = the most clicked candidate; "
        "a random list averages 50).",
        "",
        _table(
            ["neighbours by", f"precision@{result.k}", "neighbours' popularity percentile"],
            [[r.method, f"{r.precision:.3f}", f"{r.popularity_percentile:.1f}"] for r in result.rows],
        ),
    ]


def _similar_items_section(ev: Evaluation) -> Section | None:
    lines = similar_items_lines(ev.similar_items)
    return ("Similar items", lines) if lines else None


def _verdict(held: bool | None) -> str:
    return "n/a" if held is None else ("yes" if held else "**no**")
