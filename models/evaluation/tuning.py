"""Hyper-parameters chosen on a validation slice of the history, never on the scored stream.

The slice is the history alone: each setting fits its first ``fit_share`` and is scored
test-then-train on the rest, by the same harness and ranking rule as the evaluation. The setting
with the best HR@k wins (MRR@k breaks ties; the first listed wins a full tie).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from onevec.models.clickstream.examples import ExampleRecord
from onevec.models.evaluation.harness import Recommender, run_prequential

__all__ = ["Tuned", "grid", "label", "tune"]

VALIDATION_FIT_SHARE = 0.8


def grid(**axes: Sequence[Any]) -> list[dict[str, Any]]:
    """Every combination of the axes' values, as keyword arguments."""
    return [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]


def label(setting: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in setting.items()) or "defaults"


@dataclass(frozen=True)
class Tuned:
    """The chosen setting of one recommender and what every setting scored on validation."""

    chosen: dict[str, Any]
    scores: dict[str, tuple[float, float]]  # label(setting) -> (HR@k, MRR@k) on the slice
    examples: int  # examples scored on the slice

    @property
    def summary(self) -> str:
        hr, mrr = self.scores[label(self.chosen)]
        return f"{label(self.chosen)} (validation {hr:.3f} / {mrr:.3f} of {len(self.scores)} settings)"


def tune(
    factory: Callable[..., Recommender],
    settings: Sequence[dict[str, Any]],
    history: Sequence[ExampleRecord],
    fit_share: float = VALIDATION_FIT_SHARE,
    batch_size: int = 256,
) -> Tuned:
    """The best of ``settings`` for ``factory(**setting, name=...)`` on the validation slice of
    ``history`` (the history records only: the caller never hands over the scored stream)."""
    if not settings:
        raise ValueError("no settings to choose from")
    models = [factory(**setting, name=label(setting)) for setting in settings]
    records = list(history)
    result = run_prequential(models, records, int(fit_share * len(records)), batch_size)
    scores = {model.name: (result.hr(model.name), result.mrr(model.name)) for model in models}
    best = max(range(len(settings)), key=lambda n: (scores[models[n].name], -n))
    return Tuned(dict(settings[best]), scores, len(result.timestamps))
