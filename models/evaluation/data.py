"""What an evaluation reads: the events, the catalogue, labels for probes, outcomes for tasks.

Inputs are a built-in dataset name or the user's own files in the documented format (see
docs/evaluation.md): an events file (``user_id``, ``item_id``, ``timestamp``, optional
``session_id``, ``event_type``, ``rating``) and a catalogue (``item_id`` plus any attribute
and text columns).

* **Attributes and text** are read by the worker's own catalogue parser
  (``onevec.models.catalog.table_items``), so the evaluation probes the attributes and words the
  worker serves.
* **Labels** (probe tasks) come from those attributes: a single-valued attribute (decade,
  department, ...) is one multi-class task; a multi-valued one (MovieLens genres) gives one
  yes/no task per frequent value plus a multi-class task over the items that have exactly one
  value. Each task lists the other attributes that determine its label (their values alone
  predict it): a probe must withhold them with the label's own, or it reads the answer.
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
from sklearn.metrics import balanced_accuracy_score

from onevec.models.catalog import attribute_tokens, table_items
from onevec.models.datasets import (
    BUILTIN_DATASETS,
    load_catalog,
    movielens_ratings,
    normalise_events,
    read_table,
)

__all__ = [
    "EvalData",
    "Task",
    "determining_attributes",
    "load_eval_data",
    "restrict",
    "tasks_from_attributes",
    "text_documents",
]

HIGH_RATING = 4.0
LOW_RATING = 2.0
_MIN_CLASS_ITEMS = 20
_MAX_BINARY_TASKS = 6
# An attribute whose values alone predict a label this well (balanced accuracy) determines it.
DETERMINES_LABEL = 0.9


@dataclass(frozen=True)
class Task:
    """A probe task: a label per item (items without one are not part of the task).

    ``key`` is the attribute the label comes from; ``determined_by`` the other attributes
    whose values alone predict the label (attribute -> balanced accuracy of that prediction,
    see :func:`determining_attributes`). The tokens of all of them (:attr:`withheld`) are
    withheld from the attribute source when probing this task, or the probe would read the
    answer.
    """

    name: str
    key: str
    labels: dict[str, int]
    classes: list[str]
    determined_by: dict[str, float] = field(default_factory=dict)

    @property
    def withheld(self) -> tuple[str, ...]:
        """The attributes a probe of this task must not read."""
        return (self.key, *self.determined_by)


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
    attributes = {item.item_id: item.attributes for item in table_items(catalog)}
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
    return [replace(task, determined_by=determining_attributes(task, attributes)) for task in tasks]


def determining_attributes(
    task: Task, attributes: dict[str, dict[str, Any]], threshold: float = DETERMINES_LABEL
) -> dict[str, float]:
    """The attributes other than the task's own whose values alone predict its label with a
    balanced accuracy of at least ``threshold`` (attribute -> that accuracy): a sub-category
    that determines the category, say.

    The prediction is leave-one-out: an item's label is guessed as the most common label of
    the *other* items with the same value of the attribute (for a multi-valued attribute,
    the same set of values), or the most common label overall when no other item has that
    value, so an attribute unique to each item (which would "determine" anything) predicts
    nothing. Only the task's items that have the attribute are scored."""
    others = sorted(
        {k for item in task.labels for k in attributes.get(item, {}) if k not in ("title", task.key)}
    )
    overall = Counter(task.labels.values())
    found: dict[str, float] = {}
    for other in others:
        values = {
            item: _hashable(attributes[item][other])
            for item in task.labels
            if attributes.get(item, {}).get(other) not in (None, "", [])
        }
        if not values:
            continue
        by_value: dict[Any, Counter[int]] = {}
        for item, value in values.items():
            by_value.setdefault(value, Counter())[task.labels[item]] += 1
        truth = [task.labels[item] for item in values]
        guesses = [_leave_one_out(by_value[values[item]], overall, task.labels[item]) for item in values]
        score = float(balanced_accuracy_score(truth, guesses))
        if score >= threshold:
            found[other] = round(score, 4)
    return found


def _hashable(value: Any) -> Any:
    return tuple(sorted(map(str, value))) if isinstance(value, list) else str(value)


def _leave_one_out(same_value: Counter[int], overall: Counter[int], label: int) -> int:
    """The most common label among the other items with the same value, else among all the
    other items; ties go to the smallest label (a fixed rule)."""
    rest = +(same_value - Counter({label: 1})) or +(overall - Counter({label: 1}))
    top = max(rest.values())
    return min(c for c, n in rest.items() if n == top)


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
    """Each item's free text: the words the catalogue parser reads from its text columns
    (titles, descriptions; not category, flag or year columns, numbers or URLs)."""
    return {item.item_id: " ".join(item.text) for item in table_items(catalog)}
