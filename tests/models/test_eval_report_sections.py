"""The report's item map stays readable with many classes, a section without data is left out
(no empty heading), and the similar-items measurement gets its section."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from onevec.models.evaluation.data import Task
from onevec.models.evaluation.harness import PrequentialResult
from onevec.models.evaluation.similar_items import SimilarItems, SimilarItemsRow
from onevec.models.evaluation.tasks import PurchaseResult
from onevec.streams.tools.evaluate.report import MAP_CLASSES, map_figure, map_groups, write_report
from onevec.streams.tools.evaluate.run import EvalOptions

CLASSES = 30


def many_classes(items: int = 1000, seed: int = 0) -> tuple[list[str], np.ndarray, Task]:
    """SYNTHETIC: 30 classes of decreasing size (class c has about 60 - 2c items), some items
    unlabelled, vectors clustered by class."""
    rng = np.random.default_rng(seed)
    sizes = np.linspace(60, 2, CLASSES).astype(int)
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(sizes)])
    labels = np.concatenate([labels, np.full(items - len(labels), -1)])
    names = [f"item{n}" for n in range(items)]
    centres = rng.normal(size=(CLASSES + 1, 16)) * 3
    vectors = centres[labels] + rng.normal(size=(items, 16))
    task = Task(
        "category",
        "category",
        {n: int(c) for n, c in zip(names, labels, strict=True) if c >= 0},
        [f"class {c}" for c in range(CLASSES)],
    )
    return names, vectors, task


def test_the_map_colours_the_largest_classes_and_greys_the_rest() -> None:
    names, _, task = many_classes()
    labels = np.array([task.labels.get(n, -1) for n in names])
    groups, other = map_groups(labels, task.classes)
    assert [name for name, _ in groups] == [f"class {c}" for c in range(MAP_CLASSES)]  # largest first
    assert other.sum() == (labels >= MAP_CLASSES).sum() + (labels < 0).sum()
    covered = np.logical_or.reduce([mask for _, mask in groups]) | other
    assert covered.all() and sum(int(mask.sum()) for _, mask in groups) + int(other.sum()) == len(names)


def test_the_map_legend_sits_beside_the_points() -> None:
    names, vectors, task = many_classes()
    fig = map_figure(vectors, names, task)
    try:
        fig.canvas.draw()
        axis = fig.axes[0]
        legend = axis.get_legend()
        assert len(legend.get_texts()) == MAP_CLASSES + 1  # the top classes and "other"
        colours = {tuple(np.round(c.get_facecolor()[0], 3)) for c in axis.collections}
        assert len(colours) == MAP_CLASSES + 1  # no colour repeats
        renderer = fig.canvas.get_renderer()
        points, box = axis.get_window_extent(renderer), legend.get_window_extent(renderer)
        assert box.x0 >= points.x1  # right of the axes: never over a point
        assert box.x1 <= fig.bbox.x1 and box.y0 >= fig.bbox.y0  # and inside the image
    finally:
        plt.close(fig)


def bare_evaluation(**overrides: object) -> SimpleNamespace:
    """An evaluation whose embedding tasks all came out empty: no probes, no purchases, no
    heads, no grid, no tracked alignment, no drift, no item to map."""
    events = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u2"],
            "item_id": ["a", "b", "a"],
            "session_id": ["s1", "s1", "s2"],
            "timestamp": [0.0, 60.0, 86_400.0],
        }
    )
    ranks = {name: np.array([1, 0, 3]) for name in ("onevec live model", "session model, frozen", "random")}
    values: dict[str, object] = {
        "data": SimpleNamespace(name="tiny", events=events, outcome_source="none"),
        "options": EvalOptions(),
        "prequential": PrequentialResult(20, np.array([10.0, 20.0, 30.0]), ranks, 1, 3),
        "repeats": np.array([True, False, False]),
        "repeat_share": 1 / 3,
        "tuned": {},
        "tasks": [],
        "probes": [],
        "fusion_weights": {},
        "probe_items": [],
        "map_vectors": np.zeros((0, 8)),
        "purchase": PurchaseResult({}, 0, 0, 0),
        "similar_items": SimilarItems(10, 5, 5, 1_000_000.0, 3, 0, []),
        "heads": {},
        "head_rows": {},
        "return_no_history": 0,
        "grid": None,
        "tracked_alignment": {},
        "drift": [],
        "alignment_over_time": [],
        "upserts": 0,
        "sources": [],
        "notes": [],
    }
    return SimpleNamespace(**{**values, **overrides})


def headings(report: str) -> list[str]:
    return re.findall(r"^## (.*)$", report, re.M)


def test_sections_without_data_are_left_out(tmp_path: Path) -> None:
    report = write_report(bare_evaluation(), tmp_path).read_text()  # type: ignore[arg-type]
    assert headings(report) == ["Claims", "1. Prequential next-item prediction (HR@20, MRR@20)"]
    for absent in ("Purchased vs non-purchased", "Downstream heads", "item_map.png", "Sources:"):
        assert absent not in report
    assert not (tmp_path / "item_map.png").exists()


def test_hits_are_split_into_repeats_and_new_items(tmp_path: Path) -> None:
    report = write_report(bare_evaluation(), tmp_path).read_text()  # type: ignore[arg-type]
    # Ranks 1, 0, 3 with only the first next item one the user had: 1 of 1 repeats hit, 1 of 2 new.
    assert "| random | 0.6667 | 0.4444 | 1.000 / 0.500 |" in report
    assert "Repeat share: 33.3%" in report
    only_new = bare_evaluation(repeats=np.zeros(3, dtype=bool), repeat_share=0.0)
    assert "| random | 0.6667 | 0.4444 | - / 0.667 |" in write_report(only_new, tmp_path / "new").read_text()  # type: ignore[arg-type]


def test_the_similar_items_section(tmp_path: Path) -> None:
    rows = [SimilarItemsRow("unified", 0.25, 61.0), SimilarItemsRow("popularity", 0.18, 99.8)]
    measured = SimilarItems(10, 5, 5, 1_000_000.0, 2046, 1530, rows)
    report = write_report(bare_evaluation(similar_items=measured), tmp_path).read_text()  # type: ignore[arg-type]
    assert headings(report)[-1] == "2. Similar items"
    assert "| unified | 0.250 | 61.0 |" in report and "| popularity | 0.180 | 99.8 |" in report
    assert "1,530 clicked at least 5 times" in report
    nothing = SimilarItems(10, 5, 5, 1_000_000.0, 3, 0, [])
    empty = write_report(bare_evaluation(similar_items=nothing), tmp_path / "empty").read_text()  # type: ignore[arg-type]
    assert "Similar items" not in empty
