"""Catalogue record validation: what each record becomes, or the reason it is refused."""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onevec.models.catalog import (
    CatalogItem,
    catalog_records,
    inline_images,
    parse_catalog_record,
    validate_catalog_record,
)
from onevec.models.clickstream.events import Rejection
from onevec.models.static.image_encoder import MAX_PIXELS, decode_image


def png_data(size: tuple[int, int] = (40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, size[::-1], dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


def png(path: Path, size: tuple[int, int] = (40, 40)) -> Path:
    path.write_bytes(png_data(size))
    return path


def parse_local(record: dict) -> CatalogItem | Rejection:
    """As `onevec static build` parses a local catalogue file: image paths are read."""
    return parse_catalog_record(record, allow_paths=True)


def test_a_movielens_row_becomes_words_and_attribute_tokens() -> None:
    item = parse_catalog_record(
        {
            "item_id": 1,
            "movie_title": "Toy Story (1995)",
            "release_date": "01-Jan-1995",
            "IMDb_URL": "http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)",
            "Animation": True,  # flags as `onevec catalog publish` sends a 0/1 column
            "Comedy": True,
            "Drama": False,
            "video_release_date": float("nan"),
        }
    )
    assert isinstance(item, CatalogItem)
    assert item.item_id == "1" and item.text == ["toy", "story"]
    assert item.attributes == {
        "title": "Toy Story (1995)",
        "decade": "1990s",
        "genre": ["Animation", "Comedy"],
    }
    assert item.tokens == ["genre=Animation", "genre=Comedy", "decade=1990s"]
    assert item.image is None


def test_images_from_a_file_or_inline_pixels_are_28x28_grey(tmp_path: Path) -> None:
    from_file = parse_local({"item_id": "a", "image": str(png(tmp_path / "a.png", (60, 80)))})
    inline = parse_catalog_record({"item_id": "b", "image_pixels": [[7] * 28] * 28})
    assert isinstance(from_file, CatalogItem) and from_file.image.shape == (28, 28)
    assert from_file.image.dtype == np.uint8
    assert isinstance(inline, CatalogItem) and int(inline.image[3, 5]) == 7


def test_topic_records_carry_the_image_never_a_path(tmp_path: Path) -> None:
    """The worker must not open a path a message names: even an existing file is refused."""
    path = str(png(tmp_path / "shoe.png"))
    for column in ("image", "image_path"):
        refused = validate_catalog_record(json.dumps({"item_id": "p", column: path}).encode())
        assert isinstance(refused, Rejection) and refused.reason == "path_not_allowed", refused
        assert column in refused.detail and "image_data" in refused.detail
    encoded = base64.b64encode(png_data((60, 80))).decode()
    for value in (encoded, f"data:image/png;base64,{encoded}"):
        item = validate_catalog_record(json.dumps({"item_id": "i", "image_data": value}).encode())
        assert isinstance(item, CatalogItem) and item.image.shape == (28, 28)
    pixels = validate_catalog_record(json.dumps({"item_id": "x", "image_pixels": [5] * 784}).encode())
    assert isinstance(pixels, CatalogItem) and int(pixels.image.max()) == 5
    assert validate_catalog_record(b'{"item_id": "b", "image_data": "not base64!"}').reason == "broken_image"


def test_publishing_inlines_local_image_files(tmp_path: Path) -> None:
    """`onevec catalog publish` reads the file on the publisher's machine and sends its bytes."""
    png(tmp_path / "shoe.png", (60, 80))
    path = tmp_path / "catalog.jsonl"
    path.write_text(json.dumps({"item_id": 1, "title": "shoe", "image": "shoe.png"}) + "\n")
    (record,) = [inline_images(r) for r in catalog_records(str(path))]
    assert "image" not in record and base64.b64decode(record["image_data"]) == png_data((60, 80))
    on_topic = validate_catalog_record(json.dumps(record).encode())
    assert isinstance(on_topic, CatalogItem)
    np.testing.assert_array_equal(
        on_topic.image, parse_local({"item_id": 1, "image": str(tmp_path / "shoe.png")}).image
    )


def test_special_files_are_refused_without_reading_them(tmp_path: Path) -> None:
    """/dev/zero would pass a size check (st_size 0) and never end; a FIFO would block open()."""
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    for path in ("/dev/zero", str(fifo)):
        refused = parse_local({"item_id": "z", "image": path})
        assert isinstance(refused, Rejection) and refused.reason == "broken_image", refused
        assert "not a regular file" in refused.detail


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG signature and IHDR chunk claiming a size, with almost no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    idat = b"IDAT" + zlib.compress(b"\0" * 64)
    return (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
        + struct.pack(">I", len(idat) - 4) + idat + struct.pack(">I", zlib.crc32(idat))
    )  # fmt: skip


def test_decompression_bombs_are_refused_from_the_header() -> None:
    """Under pillow's own bomb limit (89M pixels) but over ours: refused before decoding. The
    real 5000x4000 PNG compresses to kilobytes and would decode to 20 MB of pixels."""
    header_only = _png_header_only(6000, 6000)
    try:
        decode_image(header_only)
        raise AssertionError("a 6000x6000 header was accepted")
    except ValueError as error:
        assert "not decoded" in str(error) and "6000x6000" in str(error)  # not a truncation error
    buffer = io.BytesIO()
    Image.new("L", (5000, 4000)).save(buffer, "PNG")
    assert 5000 * 4000 > MAX_PIXELS and len(buffer.getvalue()) < 100_000
    started = time.perf_counter()
    record = {"item_id": "bomb", "image_data": base64.b64encode(buffer.getvalue()).decode()}
    refused = validate_catalog_record(json.dumps(record).encode())
    print(f"\nbomb refused in {time.perf_counter() - started:.4f} s")
    assert (
        isinstance(refused, Rejection)
        and refused.reason == "broken_image"
        and "not decoded" in refused.detail
    )


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({"title": "no id"}, "missing_field"),
        ({"item_id": None, "title": "null id"}, "missing_field"),
        ({"item_id": 1.5}, "invalid_field"),
        ({"item_id": "x", "title": {"nested": "object"}}, "wrong_shape"),
        ({"item_id": "x", "image_pixels": [1, 2, 3]}, "wrong_shape"),
        ({"item_id": "x", "image_pixels": [[300] * 28] * 28}, "invalid_field"),
        ({"item_id": "x", "image": "/nonexistent/shoe.png"}, "path_not_allowed"),
        (["not", "an", "object"], "not_an_object"),
    ],
)
def test_bad_records_are_refused_with_a_reason(record: object, reason: str) -> None:
    result = parse_catalog_record(record)
    assert isinstance(result, Rejection) and result.reason == reason, result


def test_broken_and_wrongly_shaped_image_files(tmp_path: Path) -> None:
    garbage = tmp_path / "broken.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    strip = png(tmp_path / "strip.png", (200, 10))
    assert parse_local({"item_id": "g", "image": str(garbage)}).reason == "broken_image"
    assert parse_local({"item_id": "s", "image": str(strip)}).reason == "wrong_shape"
    assert parse_local({"item_id": "m", "image": str(tmp_path / "missing.png")}).reason == "broken_image"


def test_raw_bytes_validation() -> None:
    assert validate_catalog_record(b"{not json").reason == "bad_json"
    assert validate_catalog_record(b"\xff\xfe").reason == "bad_encoding"
    assert validate_catalog_record(json.dumps({"item_id": "z"}).encode(), max_bytes=5).reason == "oversize"
    assert isinstance(validate_catalog_record(b'{"item_id": "z", "category": "Shoes"}'), CatalogItem)


def test_catalogue_files_resolve_relative_image_paths(tmp_path: Path) -> None:
    png(tmp_path / "shoe.png")
    path = tmp_path / "catalog.jsonl"
    path.write_text(
        json.dumps({"item_id": 1, "title": "shoe", "image": "shoe.png"})
        + "\n"
        + json.dumps({"title": "no id"})
        + "\n"
    )
    records = catalog_records(str(path))
    assert records[0]["image"] == str(tmp_path / "shoe.png")
    assert isinstance(parse_local(records[0]), CatalogItem)
    assert parse_catalog_record(records[1]).reason == "missing_field"
