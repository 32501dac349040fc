"""The bench's rows and how they are shown: one rich table on the console, and the same table
as Markdown (``.md``) and as data (``.json``)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.table import Table

__all__ = ["BenchRow", "format_value", "render_table", "write_reports"]

COLUMNS = ("section", "measure", "onevec", "ceiling", "ratio", "goal", "note")


@dataclass
class BenchRow:
    section: str
    measure: str
    value: float
    unit: str
    ceiling: float | None = None  # the same work done by the reference
    goal: str = ""  # e.g. ">= 0.5" on the ratio, "< 2" on the value
    note: str = ""
    # Why the row has no value (its value is NaN), shown in its place, e.g. a peer not installed.
    unavailable: str = ""

    @property
    def ratio(self) -> float | None:
        return self.value / self.ceiling if self.ceiling and not self.unavailable else None

    @property
    def met(self) -> bool | None:
        if not self.goal:
            return None
        op, bound = self.goal.split()
        subject = self.ratio if self.ceiling is not None else self.value
        if subject is None or not math.isfinite(subject):
            return False
        return subject >= float(bound) if op == ">=" else subject < float(bound)


def render_table(rows: Sequence[BenchRow], title: str) -> Table:
    table = Table(title=title)
    for column in COLUMNS:
        table.add_column(column, justify="right" if column in ("onevec", "ceiling", "ratio") else "left")
    for row in rows:
        table.add_row(*_cells(row, rich=True))
    return table


def write_reports(rows: Sequence[BenchRow], title: str, output: Path) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"## {title}", "", "| " + " | ".join(COLUMNS) + " |", "|---" * len(COLUMNS) + "|"]
    lines += ["| " + " | ".join(_cells(row, rich=False)) + " |" for row in rows]
    output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    payload = {
        "title": title,
        "rows": [asdict(r) | {"ratio": r.ratio, "met": r.met} for r in rows],
    }
    output.with_suffix(".json").write_text(json.dumps(payload, indent=2, allow_nan=True) + "\n")


def format_value(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"  # shares and seconds below one: HR@20 0.228, not 0.23


def _cells(row: BenchRow, rich: bool) -> list[str]:
    ratio = row.ratio
    return [
        row.section,
        row.measure,
        row.unavailable or f"{format_value(row.value)} {row.unit}",
        "" if row.ceiling is None else f"{format_value(row.ceiling)} {row.unit}",
        "" if ratio is None else f"{ratio:.2f}" if ratio >= 0.1 else f"{ratio:.2g}",  # 0.0072, not 0.01
        _goal_cell(row, rich),
        row.note,
    ]


def _goal_cell(row: BenchRow, rich: bool) -> str:
    if row.met is None:
        return ""
    mark = "met" if row.met else "MISSED"
    if rich:
        mark = f"[green]{mark}[/]" if row.met else f"[red]{mark}[/]"
    return f"{row.goal} {mark}"
