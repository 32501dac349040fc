"""What an evaluation reads: the events, the catalogue, labels for probes, outcomes for tasks.

Inputs are a built-in dataset name or the user's own files in the documented format (see
docs/evaluation.md): an events file (``user_id``, ``item_id``, ``timestamp``, optional
``session_id``, ``event_type``, ``rating``) and a catalogue (``item_id`` plus any attribute
and text columns).

* **Labels** (probe tasks) come from the catalogue attributes the learner already reads
  (``onevec.streams.learner.learner.load_attributes``): a single-valued attribute (decade, department, ...)
  is one multi-class task; a multi-valued one (MovieLens genres) gives one yes/no task per
  frequent value plus a multi-class task over the items that have exactly one value.
* **Outcomes** (paper 1's purchase and return tasks) come from ``event_type``
  (``purchase``, ``return``) or, failing that, from a ``rating`` column: rating >= 4 stands in
  for a purchase ("highly rated") and rating <= 2 for a return. Those are *proxies* and the
  report says so.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from onevec.models.catalog import attribute_tokens, load_attributes
from onevec.models.datasets import (
    BUILTIN_DATASETS,
    load_catalog,
    movielens_ratings,
    normalise_events,
    read_table,
)

__all__ = ["EvalData", "Task", "load_eval_data", "restrict", "tasks_from_attributes", "text_documents"]

HIGH_RATING = 4.0
LOW_RATING = 2.0
_MIN_CLASS_ITEMS = 20
_MAX_BINARY_TASKS = 6


@dataclass(frozen=True)
class Task:
    """A probe task: a label per item (items without one are not part of the task).

    ``key`` is the attribute the label comes from: its tokens are withheld from the attribute
    source when probing this task, or the probe would read the answer.
    """

    name: str
    key: str
    labels: dict[str, int]
    classes: list[str]


@dataclass
class EvalData:
    name: str
    events: pd.DataFrame  # normalised (load_events), timestamp order
    catalog: pd.DataFrame
    attributes: dict[str, dict[str, Any]]
    positive: np.ndarray  # per event: purchased / highly rated
    negative: np.ndarray  # per event: returned / low rating (the return task's label)
    outcome_source: str  # "event types" or "ratings (proxy)" or "none"
    derived_sessions: bool
    notes: list[str] = field(default_factory=list)

    def tokens(self) -> dict[str, list[str]]:
        return {item: attribute_tokens(attrs) for item, attrs in self.attributes.items()}

    def head(self, n: int) -> EvalData:
        """The first ``n`` events in time, with their outcomes."""
        return replace(
            self,
            events=self.events.head(n),
            positive=self.positive[:n],
            negative=self.negative[:n],
            notes=[*self.notes, f"only the first {n:,} events"],
        )


def _raw_events(source: str | Path) -> pd.DataFrame:
    """The events table as given (MovieLens with its ratings), before normalisation."""
    if str(source) == "movielens-100k":
        return movielens_ratings(with_rating=True)
    if str(source) in BUILTIN_DATASETS:
        return BUILTIN_DATASETS[str(source)][0]()
    return read_table(Path(source))


def _ratings(raw: pd.DataFrame) -> pd.DataFrame | None:
    """(user_id, item_id, rating), the last rating per user and item, if the events have ratings."""
    if "rating" not in raw.columns:
        return None
    ratings = pd.DataFrame(
        {
            "user_id": raw["user_id"].astype(str),
            "item_id": raw["item_id"].astype(str),
            "rating": raw["rating"],
        }
    )
    return ratings.drop_duplicates(["user_id", "item_id"], keep="last")


def load_eval_data(
    events_source: str | Path, catalog_source: str | Path, gap_seconds: float = 1800.0
) -> EvalData:
    """Events, catalogue, attributes and outcomes from a dataset name or the user's files."""
    raw = _raw_events(events_source)
    has_sessions = "session_id" in raw.columns
    events = normalise_events(raw, gap_seconds)
    catalog = load_catalog(catalog_source)
    attributes = load_attributes(catalog_source)
    notes = []
    types = events["event_type"].to_numpy()
    if (types == "purchase").any() or (types == "return").any():
        positive = types == "purchase"
        returned = set(
            zip(events["user_id"][types == "return"], events["item_id"][types == "return"], strict=True)
        )
        # The return task asks of each purchase whether it was returned later.
        negative = np.array(
            [
                t == "purchase" and (u, i) in returned
                for t, u, i in zip(types, events["user_id"], events["item_id"], strict=True)
            ]
        )
        source = "event types"
    else:
        ratings = _ratings(raw)
        if ratings is not None:
            joined = events[["user_id", "item_id"]].merge(ratings, on=["user_id", "item_id"], how="left")
            rating = joined["rating"].to_numpy(dtype=np.float64)
            positive = rating >= HIGH_RATING
            negative = rating <= LOW_RATING
            source = "ratings (proxy)"
            notes.append(
                f"purchase = rating >= {HIGH_RATING:g}, return = rating <= {LOW_RATING:g}: proxies, not "
                "real outcomes"
            )
        else:
            positive = negative = np.zeros(len(events), dtype=bool)
            source = "none"
    if not has_sessions:
        notes.append(f"sessions are derived: each user's events cut at {gap_seconds / 60:g}-minute idle gaps")
    return EvalData(
        name=str(events_source) if str(events_source) in BUILTIN_DATASETS else Path(events_source).name,
        events=events,
        catalog=catalog,
        attributes=attributes,
        positive=np.asarray(positive, dtype=bool),
        negative=np.asarray(negative, dtype=bool),
        outcome_source=source,
        derived_sessions=not has_sessions,
        notes=notes,
    )


def tasks_from_attributes(
    attributes: dict[str, dict[str, Any]], min_items: int = _MIN_CLASS_ITEMS
) -> list[Task]:
    """Probe tasks from catalogue attributes (see the module docstring)."""
    keys = sorted({key for attrs in attributes.values() for key in attrs if key != "title"})
    tasks = []
    for key in keys:
        values = {
            item: attrs[key] for item, attrs in attributes.items() if attrs.get(key) not in (None, "", [])
        }
        if any(isinstance(v, list) for v in values.values()):
            lists = {item: v if isinstance(v, list) else [v] for item, v in values.items()}
            frequency = Counter(x for v in lists.values() for x in v)
            # Yes/no tasks over every item of the catalogue for the most frequent values.
            for value, count in frequency.most_common(_MAX_BINARY_TASKS):
                if count >= min_items and len(attributes) - count >= min_items:
                    labels = {item: int(value in lists.get(item, [])) for item in attributes}
                    tasks.append(Task(f"{key}={value}", key, labels, ["no", "yes"]))
            single = {item: v[0] for item, v in lists.items() if len(v) == 1}
            task = _multiclass(f"{key} (single-{key} items)", key, single, min_items)
        else:
            task = _multiclass(key, key, {item: str(v) for item, v in values.items()}, min_items)
        if task is not None:
            tasks.append(task)
    return tasks


def restrict(task: Task, items: Collection[str], min_per_class: int = 10) -> Task | None:
    """The task on ``items`` only, classes with fewer than ``min_per_class`` of them dropped;
    None when fewer than two classes remain."""
    labels = {item: task.labels[item] for item in items if item in task.labels}
    counts = Counter(labels.values())
    kept = {c for c, n in counts.items() if n >= min_per_class}
    if len(kept) < 2:
        return None
    return replace(task, labels={item: c for item, c in labels.items() if c in kept})


def _multiclass(name: str, key: str, values: dict[str, str], min_items: int) -> Task | None:
    counts = Counter(values.values())
    classes = sorted(c for c, n in counts.items() if n >= min_items)
    if len(classes) < 2:
        return None
    index = {c: i for i, c in enumerate(classes)}
    return Task(name, key, {item: index[v] for item, v in values.items() if v in index}, classes)


def text_documents(catalog: pd.DataFrame) -> dict[str, str]:
    """Each item's free text: the string columns of several words on average (titles,
    descriptions), not identifiers, dates, URLs or category columns."""
    columns = []
    for column in catalog.columns:
        if column == "item_id" or catalog[column].dtype.kind not in "OSU":
            continue
        values = catalog[column].dropna().astype(str)
        if values.empty or values.str.startswith("http").mean() > 0.5:
            continue
        if values.str.split().str.len().mean() >= 2:
            columns.append(column)
    texts = (
        catalog[columns].fillna("").astype(str).agg(" ".join, axis=1)
        if columns
        else pd.Series("", index=catalog.index)
    )
    return dict(zip(catalog["item_id"].astype(str), texts, strict=True))
