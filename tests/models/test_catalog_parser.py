"""One catalogue parser: a table read for attributes (the evaluation, the worker's start-up
catalogue) and the same table published on the ``catalog`` topic (the worker's catalogue
agent) give the same attributes, a year gives a decade whatever its form, and the flag rule
is decided per column of a table, never per value of a record."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from onevec.models.catalog import (
    CatalogItem,
    catalog_records,
    inline_images,
    load_attributes,
    validate_catalog_record,
)
from onevec.models.evaluation.data import load_eval_data, text_documents


def write(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    elif path.suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True, date_format="iso")
    else:
        frame.to_parquet(path, index=False)
    return path


def from_topic(path: Path) -> dict[str, dict]:
    """What the worker's catalogue agent reads after ``onevec catalog publish path``."""
    items = [
        validate_catalog_record(json.dumps(inline_images(r)).encode()) for r in catalog_records(str(path))
    ]
    assert all(isinstance(item, CatalogItem) for item in items)
    return {item.item_id: item.attributes for item in items}


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
@pytest.mark.parametrize("year", [1995, "1995", "01-Jan-1995"])
def test_a_year_as_number_string_or_date_gives_a_decade(tmp_path: Path, suffix: str, year: int | str) -> None:
    frame = pd.DataFrame({"item_id": ["a", "b"], "title": ["Heat", "Casino"], "year": [year, year]})
    path = write(frame, tmp_path / f"catalogue{suffix}")
    assert load_attributes(path)["a"]["decade"] == "1990s"
    assert from_topic(path)["a"]["decade"] == "1990s"


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_a_typed_date_and_a_release_year_give_a_decade(tmp_path: Path, suffix: str) -> None:
    frame = pd.DataFrame(
        {
            "item_id": ["a", "b", "c"],
            "release_date": pd.to_datetime(["1977-05-25", "2016-01-01", None]),
            "release_year": [1977.0, 2016.0, float("nan")],  # floats: an integer column with a gap
        }
    )
    path = write(frame, tmp_path / f"catalogue{suffix}")
    attributes = load_attributes(path)
    assert [attributes[i].get("decade") for i in "abc"] == ["1970s", "2010s", None]
    assert from_topic(path) == attributes


def test_no_year_no_decade() -> None:
    for year in ("unknown", "", 12, 1995.5, float("inf"), 10**400, True):
        item = validate_catalog_record(json.dumps({"item_id": "x", "year": year}).encode())
        assert isinstance(item, CatalogItem) and "decade" not in item.attributes, year


def test_flags_are_decided_per_column_of_a_table(tmp_path: Path) -> None:
    """Comedy and in_stock hold only 0/1 (or booleans): flags. count and rating are numbers
    that happen to be 0 or 1 for some items: never a genre."""
    frame = pd.DataFrame(
        {
            "item_id": [1, 2, 3],
            "category": ["Shoes", "Shoes", "Bags"],
            "Comedy": [1, 0, None],
            "in_stock": [True, False, True],
            "count": [1, 0, 7],
            "rating": [1.0, 3.5, 0.0],
        }
    )
    for suffix in (".csv", ".jsonl", ".parquet"):
        path = write(frame, tmp_path / f"catalogue{suffix}")
        attributes = load_attributes(path)
        assert attributes == {
            "1": {"genre": ["Comedy", "in_stock"], "category": "Shoes"},
            "2": {"category": "Shoes"},
            "3": {"genre": ["in_stock"], "category": "Bags"},
        }, suffix
        assert from_topic(path) == attributes, suffix


def test_in_a_single_record_only_a_boolean_is_a_flag() -> None:
    record = {"item_id": "x", "Comedy": True, "Drama": False, "count": 1, "rating": 1.0}
    item = validate_catalog_record(json.dumps(record).encode())
    assert isinstance(item, CatalogItem)
    assert item.attributes == {"genre": ["Comedy"]} and item.tokens == ["genre=Comedy"]


def test_the_evaluation_reads_the_catalogue_as_the_worker_does(tmp_path: Path) -> None:
    catalogue = pd.DataFrame(
        {
            "item_id": ["a", "b", "c"],
            "title": ["Red Shoes", "Blue Bag", "Green Hat"],
            "description": ["soft leather", "", "wool, warm"],
            "department": ["Shoes", "Bags", "Hats"],
            "year": [2001, 1999, None],
            "Sale": [1, 0, 1],
            "url": ["https://x/a", "https://x/b", "https://x/c"],
        }
    )
    path = write(catalogue, tmp_path / "catalogue.csv")
    events = tmp_path / "events.csv"
    pd.DataFrame({"user_id": [1, 1, 2], "item_id": ["a", "b", "c"], "timestamp": [1, 2, 3]}).to_csv(
        events, index=False
    )
    data = load_eval_data(events, path)
    assert data.attributes == from_topic(path)
    assert data.attributes["a"] == {
        "genre": ["Sale"],
        "title": "Red Shoes",
        "department": "Shoes",
        "decade": "2000s",
    }
    records = {
        r["item_id"]: validate_catalog_record(json.dumps(r).encode()) for r in catalog_records(str(path))
    }
    texts = text_documents(data.catalog)
    assert texts == {item: " ".join(parsed.text) for item, parsed in records.items()}
    assert texts["c"] == "green hat wool warm"  # words of the text columns; no URL, year or category
