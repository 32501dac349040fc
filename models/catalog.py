"""Catalogue records: parsing, validation and the token documents the static encoders read.

A catalogue record is one JSON object (a row of a CSV / Parquet / JSON lines catalogue file):
``item_id`` (required) plus any columns. How columns are read, the same way for files
(``onevec static build``) and for the ``catalog`` topic (the worker's catalogue agent):

* ``image_data``: a PNG/JPEG inline, base64 (optionally as a ``data:image/...;base64,`` URL),
  decoded with pillow to 28x28 grey; ``image_pixels``: 784 numbers 0-255 (flat or 28 rows
  of 28);
* ``image`` / ``image_path``: a PNG/JPEG *file*, only where files are local to the reader
  (``onevec static build``, and ``onevec catalog publish``, which inlines it as
  ``image_data``). On the ``catalog`` topic a path is refused: the worker must never open a
  path a message names (it could be /dev/zero, a FIFO, a secret), and the path would be the
  publisher's, not the worker's;
* a category column (``category``, ``brand``, ``department``, ``class``, ...; see
  :data:`CATEGORY_COLUMNS`): an attribute, and the token ``department=Dresses``;
* flags (MovieLens genres): the attribute ``genre`` and tokens ``genre=Comedy`` for every
  column that is ``true``. In a record a flag is a boolean; in a table (a catalogue file, a
  built-in dataset) a column whose every value is 0 or 1 is a flag column, and
  :func:`frame_records` turns it into booleans. That is the one place the rule is decided, so
  a table read for attributes (:func:`load_attributes`) and the same table published to the
  topic (``onevec catalog publish``) give the same genres, and a number that happens to be 0
  or 1 in one record (a count, a rating) is never a genre;
* a year column (``year``, ``release_year``, ``release_date``): the attribute and token
  ``decade=1990s`` from a year given as a number (1995), a string ("1995") or a date
  ("01-Jan-1995", "1995-01-01");
* other numbers: ignored; any other text column (title, description, review text): words.

Bad records are refused with a :class:`~onevec.models.clickstream.events.Rejection` (sent to the dead-letter
topic with the reason, like bad clicks): not JSON, no ``item_id``, a field of the wrong type
or shape, an image path on the topic, an image that cannot be read or decoded.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import math
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from onevec.models.clickstream.events import Rejection, _as_id
from onevec.models.datasets import BUILTIN_DATASETS, load_catalog, read_table
from onevec.models.static.image_encoder import IMAGE_SIDE, ImageShapeError, decode_image
from onevec.models.static.text_autoencoder import words

__all__ = [
    "CATEGORY_COLUMNS",
    "CatalogItem",
    "attribute_tokens",
    "load_attributes",
    "catalog_records",
    "flag_columns",
    "inline_images",
    "frame_records",
    "parse_catalog_record",
    "read_image_file",
    "table_items",
    "validate_catalog_record",
]

IMAGE_PATH_COLUMNS = ("image", "image_path")
IMAGE_PIXELS_COLUMN = "image_pixels"
IMAGE_DATA_COLUMN = "image_data"
TITLE_COLUMNS = ("title", "movie_title", "name")
MAX_TEXT_CHARS = 100_000
MAX_IMAGE_BYTES = 10 * 1024 * 1024
# Columns read as one categorical attribute each (and its side-information token).
CATEGORY_COLUMNS = {
    "category",
    "subcategory",
    "brand",
    "colour",
    "color",
    "department",
    "division",
    "class",
    "price_band",
}
# Columns whose year becomes the ``decade`` attribute.
YEAR_COLUMNS = {"year", "release_year", "release_date"}
_YEAR = re.compile(r"(?<!\d)(\d{4})(?!\d)")


@dataclass(frozen=True)
class CatalogItem:
    """One valid catalogue record, ready for the encoders."""

    item_id: str
    text: list[str]  # words of the text columns
    attributes: dict[str, Any]  # payload attributes (category columns, genres, decade)
    image: np.ndarray | None = None  # (28, 28) uint8 grey
    tokens: list[str] = field(default_factory=list)  # attribute tokens, "department=Dresses"

    @property
    def document(self) -> list[str]:
        """What the text and inductive encoders read: words and attribute tokens."""
        return [*self.text, *self.tokens]


def validate_catalog_record(raw: bytes, max_bytes: int = 16 * 1024 * 1024) -> CatalogItem | Rejection:
    """Validate one raw ``catalog`` topic message value."""
    if len(raw) > max_bytes:
        return Rejection("oversize", f"{len(raw)} bytes exceeds the {max_bytes} limit")
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        return Rejection("bad_encoding", f"not UTF-8: {error.reason} at byte {error.start}")
    except RecursionError:  # not a ValueError: deep nesting exhausts the parser's recursion
        return Rejection("bad_json", "not JSON: nested too deeply")
    except ValueError as error:
        return Rejection("bad_json", f"not JSON: {error}")
    return parse_catalog_record(data)


def parse_catalog_record(data: Any, allow_paths: bool = False) -> CatalogItem | Rejection:
    """Validate an already-decoded record (a dict, as from a catalogue file's row).

    ``allow_paths``: read ``image`` / ``image_path`` files (regular files only, at most
    ``MAX_IMAGE_BYTES``); only for catalogue files on this machine, never for topic records."""
    if not isinstance(data, Mapping):
        return Rejection("not_an_object", f"expected a JSON object, got {type(data).__name__}")
    if _missing(data.get("item_id")):
        return Rejection("missing_field", "missing field 'item_id'")
    try:
        item_id = _as_id(data["item_id"])
    except ValueError as error:
        return Rejection("invalid_field", f"'item_id' {error}")
    text: list[str] = []
    attributes: dict[str, Any] = {}
    genres: list[str] = []
    image: np.ndarray | None = None
    for column, value in data.items():
        if column == "item_id" or _missing(value):
            continue
        if column == IMAGE_PIXELS_COLUMN:
            pixels = _pixels(value)
            if isinstance(pixels, Rejection):
                return pixels
            image = pixels
        elif column == IMAGE_DATA_COLUMN:
            decoded = _image_data(value)
            if isinstance(decoded, Rejection):
                return decoded
            image = decoded
        elif column in IMAGE_PATH_COLUMNS:
            if not allow_paths:
                return Rejection(
                    "path_not_allowed",
                    f"'{column}' is a file path; a catalogue record on the topic must carry the image "
                    f"itself ('{IMAGE_DATA_COLUMN}': base64 PNG/JPEG, or '{IMAGE_PIXELS_COLUMN}')",
                )
            decoded = _image_file(column, value)
            if isinstance(decoded, Rejection):
                return decoded
            image = decoded
        elif isinstance(value, bool):
            if value:
                genres.append(column)
        elif column.lower() in YEAR_COLUMNS and isinstance(value, (str, int, float)):
            decade = _decade(value)
            if decade is not None:
                attributes["decade"] = decade
        elif isinstance(value, (int, float)):
            continue  # other numbers (ratings, counts) are not catalogue text
        elif not isinstance(value, str):
            return Rejection(
                "wrong_shape", f"'{column}' must be a string, number or flag, got {type(value).__name__}"
            )
        elif value.startswith(("http://", "https://")):
            continue  # links are not descriptions
        elif column.lower() in CATEGORY_COLUMNS and 0 < len(value) <= 64:
            attributes[column] = value
        elif column in TITLE_COLUMNS:
            attributes["title"] = value  # payload only: its words are text, not a token
            text.extend(words(value[:MAX_TEXT_CHARS]))
        else:
            text.extend(words(value[:MAX_TEXT_CHARS]))
    if genres:  # first: the order of an item's tokens is the order the model meets them in
        attributes = {"genre": genres, **attributes}
    return CatalogItem(
        item_id=item_id, text=text, attributes=attributes, image=image, tokens=attribute_tokens(attributes)
    )


def _missing(value: Any) -> bool:
    if value is None or value is pd.NaT or value is pd.NA:
        return True
    return value == "" or (isinstance(value, float) and math.isnan(value))


def _decade(value: str | float) -> str | None:
    """``1990s`` from a year as a number or the first four-digit group of a string; None
    when there is no year."""
    if isinstance(value, str):
        found = _YEAR.search(value)
        year = int(found.group(1)) if found else None
    elif isinstance(value, int):
        year = value
    else:
        year = int(value) if math.isfinite(value) and value.is_integer() else None
    if year is None or not 1000 <= year <= 9999:
        return None
    return f"{year // 10 * 10}s"


def _pixels(value: Any) -> np.ndarray | Rejection:
    try:
        pixels = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):  # OverflowError: integers beyond float range
        return Rejection("wrong_shape", f"'{IMAGE_PIXELS_COLUMN}' must be numbers")
    if pixels.size != IMAGE_SIDE * IMAGE_SIDE or pixels.ndim not in (1, 2):
        return Rejection(
            "wrong_shape",
            f"'{IMAGE_PIXELS_COLUMN}' must hold {IMAGE_SIDE}x{IMAGE_SIDE} values, got shape {pixels.shape}",
        )
    if not np.all(np.isfinite(pixels)) or pixels.min() < 0 or pixels.max() > 255:
        return Rejection("invalid_field", f"'{IMAGE_PIXELS_COLUMN}' values must be 0-255")
    return pixels.reshape(IMAGE_SIDE, IMAGE_SIDE).astype(np.uint8)


def read_image_file(path: Path) -> bytes:
    """A local image file's bytes: a regular file (not a device, FIFO or directory, which
    could block or never end) of at most ``MAX_IMAGE_BYTES``, read without following a
    size the file system may misreport. Raises OSError or ValueError."""
    # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then refuses it.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        data = handle.read(MAX_IMAGE_BYTES + 1)
    if len(data) > MAX_IMAGE_BYTES:
        raise ValueError(f"larger than {MAX_IMAGE_BYTES} bytes")
    return data


def _image_file(column: str, value: Any) -> np.ndarray | Rejection:
    if not isinstance(value, str):
        return Rejection("wrong_shape", f"'{column}' must be a file path, got {type(value).__name__}")
    path = Path(value)
    try:
        data = read_image_file(path)
    except OSError as error:
        return Rejection("broken_image", f"{path}: unreadable ({error.strerror or error})")
    except ValueError as error:
        return Rejection("broken_image", f"{path}: {error}")
    return _decoded(data, str(path))


def _image_data(value: Any) -> np.ndarray | Rejection:
    if not isinstance(value, str):
        return Rejection("wrong_shape", f"'{IMAGE_DATA_COLUMN}' must be a base64 string")
    if value.startswith("data:"):
        value = value.partition(",")[2]
    if len(value) > MAX_IMAGE_BYTES * 4 // 3 + 4:
        return Rejection("broken_image", f"'{IMAGE_DATA_COLUMN}': larger than {MAX_IMAGE_BYTES} bytes")
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return Rejection("broken_image", f"'{IMAGE_DATA_COLUMN}' is not valid base64")
    return _decoded(data, IMAGE_DATA_COLUMN)


def _decoded(data: bytes, where: str) -> np.ndarray | Rejection:
    try:
        return decode_image(data)
    except ImageShapeError as error:
        return Rejection("wrong_shape", f"{where}: {error}")
    except ValueError as error:
        return Rejection("broken_image", f"{where}: {error}")


def attribute_tokens(attributes: dict[str, Any]) -> list[str]:
    """Side-information tokens ("genre=Comedy") from an item's attributes; the title is text
    for the static encoders, not a token (it would only re-encode the id)."""
    tokens: list[str] = []
    for key, value in attributes.items():
        if key == "title":
            continue
        values = value if isinstance(value, list) else [value]
        tokens.extend(f"{key}={v}" for v in values if v not in (None, ""))
    return tokens


def table_items(catalog: pd.DataFrame) -> list[CatalogItem]:
    """A catalogue table's rows read by :func:`parse_catalog_record`, as the worker reads the
    ``catalog`` topic, images left out (not read); a row the worker would refuse (a field of
    the wrong shape) is left out too."""
    images = [
        c for c in (*IMAGE_PATH_COLUMNS, IMAGE_PIXELS_COLUMN, IMAGE_DATA_COLUMN) if c in catalog.columns
    ]
    parsed = (parse_catalog_record(record) for record in frame_records(catalog.drop(columns=images)))
    return [item for item in parsed if isinstance(item, CatalogItem)]


def load_attributes(source: str | Path) -> dict[str, dict[str, Any]]:
    """Catalogue attributes per item of a file or a built-in dataset (see :func:`table_items`)."""
    return {item.item_id: item.attributes for item in table_items(load_catalog(source))}


def catalog_records(source: str) -> list[dict[str, Any]]:
    """A catalogue file's rows (or a built-in dataset's) as JSON-ready dicts, unvalidated:
    the worker validates, so a bad row reaches the dead-letter topic with its reason."""
    path = Path(source)
    if source in BUILTIN_DATASETS:
        return frame_records(BUILTIN_DATASETS[source][1]())
    return frame_records(read_table(path), base_dir=path.parent)


def flag_columns(frame: pd.DataFrame) -> list[str]:
    """The table's flag columns: boolean, or numbers that are all 0 or 1 (gaps aside)."""
    flags = []
    for column in frame.columns:
        values = frame[column]
        if column == "item_id" or values.dtype.kind not in "biuf":
            continue
        if values.dtype.kind == "b" or values.dropna().isin((0, 1)).all():
            flags.append(str(column))
    return flags


def frame_records(frame: pd.DataFrame, base_dir: Path | None = None) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts: missing values dropped to None, flag columns (see
    :func:`flag_columns`) as booleans, dates as ISO strings, an integral float item_id
    (pandas' type for an integer column with gaps) back to an integer, relative image paths
    resolved against ``base_dir``."""
    flags = flag_columns(frame)
    frame = frame.astype({column: "boolean" for column in flags})
    records = []
    for row in frame.to_dict("records"):
        record = {str(k): _plain(v) for k, v in row.items()}
        item_id = record.get("item_id")
        if isinstance(item_id, float) and item_id.is_integer():
            record["item_id"] = int(item_id)
        for column in IMAGE_PATH_COLUMNS:
            value = record.get(column)
            if isinstance(value, str) and base_dir is not None and not Path(value).is_absolute():
                record[column] = str((base_dir / value).resolve())
        records.append(record)
    return records


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if _missing(value):
        return None
    if isinstance(value, (dt.date, np.datetime64)):
        return pd.Timestamp(value).isoformat()
    return value.item() if isinstance(value, np.generic) else value


def inline_images(record: dict[str, Any]) -> dict[str, Any]:
    """The record with its image file (``image`` / ``image_path``, resolved on this machine)
    put inside it as base64 ``image_data``, for the topic. An unreadable file is left as a
    path: the worker then refuses the record with a reason in the dead-letter topic."""
    out = dict(record)
    for column in IMAGE_PATH_COLUMNS:
        value = out.get(column)
        if not isinstance(value, str):
            continue
        try:
            data = read_image_file(Path(value))
        except (OSError, ValueError):
            continue
        del out[column]
        out[IMAGE_DATA_COLUMN] = base64.b64encode(data).decode("ascii")
    return out
