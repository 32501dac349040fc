"""A probe task knows every attribute that determines its label, not only its own: on a
constructed (SYNTHETIC) catalogue where a sub-category determines the category, the category
task withholds the sub-category too, and an attribute source without them probes at chance
while one that withholds only the category's own tokens reads the answer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from onevec.models.catalog import attribute_tokens, load_attributes
from onevec.models.evaluation.data import Task, tasks_from_attributes
from onevec.models.evaluation.probes import probe_score

ITEMS = 400
CATEGORIES = 4
SUBCATEGORIES = 20  # five per category, twenty items each


def catalogue(path: Path) -> Path:
    rng = np.random.default_rng(0)
    sub = np.arange(ITEMS) % SUBCATEGORIES
    pd.DataFrame(
        {
            "item_id": [f"i{n}" for n in range(ITEMS)],
            "category": [f"c{s % CATEGORIES}" for s in sub],
            "subcategory": [f"s{s}" for s in sub],
            "brand": [f"b{n}" for n in range(ITEMS)],  # unique per item: determines nothing
            "year": rng.integers(1970, 2020, ITEMS),  # unrelated to the category
        }
    ).to_csv(path, index=False)
    return path


def by_name(tasks: list[Task]) -> dict[str, Task]:
    return {task.name: task for task in tasks}


def test_a_sub_category_that_determines_the_category_is_withheld_with_it(tmp_path: Path) -> None:
    tasks = by_name(tasks_from_attributes(load_attributes(catalogue(tmp_path / "catalogue.csv"))))
    assert set(tasks) == {"category", "subcategory", "decade"}
    assert tasks["category"].determined_by == {"subcategory": 1.0}
    assert tasks["category"].withheld == ("category", "subcategory")
    # The category narrows the sub-category to five: it does not determine it.
    assert tasks["subcategory"].determined_by == {}
    assert tasks["decade"].determined_by == {}


def test_without_the_determining_attribute_the_attribute_source_probes_at_chance(tmp_path: Path) -> None:
    """The attribute source as the live model builds it: the mean of the item's attribute-token
    vectors (here random, one of 64 numbers per token, the live model's dimension), some
    attributes withheld."""
    attributes = load_attributes(catalogue(tmp_path / "catalogue.csv"))
    task = by_name(tasks_from_attributes(attributes))["category"]
    rng = np.random.default_rng(1)
    table: dict[str, np.ndarray] = {}
    items = sorted(task.labels)

    def source(withheld: tuple[str, ...]) -> np.ndarray:
        rows = []
        for item in items:
            kept = [t for t in attribute_tokens(attributes[item]) if t.split("=")[0] not in withheld]
            rows.append(np.mean([table.setdefault(t, rng.normal(size=64)) for t in kept], axis=0))
        return np.array(rows)

    labels = np.array([task.labels[item] for item in items])
    leaking = probe_score(source((task.key,)), labels)
    withheld = probe_score(source(task.withheld), labels)
    print(f"\ncategory probe: own tokens withheld {leaking:.3f}, determining attributes too {withheld:.3f}")
    assert leaking > 0.8
    assert withheld < 1 / CATEGORIES + 0.15
