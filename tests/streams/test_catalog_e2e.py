"""Cold start from the catalogue, end to end: a real broker, a real worker process, Qdrant
local mode and a static bundle trained here on real data (MovieLens-100k titles and genres
for the text autoencoder, a Fashion-MNIST subset for the Siamese CNN).

The images given to the new catalogue items below are Fashion-MNIST images: a SYNTHETIC
pairing (no real data set has images of these items); it only exercises the image path.

Also: a catalogue update survives a kill -9 of the worker once its offset is committed, and
tombstones take an item's static vectors (or its whole point) away.
"""

from __future__ import annotations

import io
import json
import random
import time
from collections import Counter

import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition
from PIL import Image

from onevec.models.catalog import load_attributes
from onevec.models.fusion import normalise
from onevec.models.static.bundle import save_bundle
from onevec.models.static_build import BuildOptions, build_static
from onevec.streams.kafka.catalog_publisher import publish_catalog
from onevec.streams.kafka.producer import EventProducer
from onevec.streams.kafka.topics import bootstrap_servers
from onevec.streams.settings import Settings
from onevec.streams.tools.static_report import FASHION_DIR, fashion_mnist
from onevec.streams.worker import WorkerProcess, metric_total
from tests.kafka_helpers import read_topic


def get(worker: WorkerProcess, path: str) -> dict | None:
    return worker.get_json(path)


def wait_item(worker: WorkerProcess, item_id: str, until, timeout: float = 60.0) -> tuple[dict, float]:
    """The item's stored point once ``until(point)`` holds, and the seconds it took."""
    started = time.monotonic()
    while True:
        point = get(worker, f"/items/{item_id}")
        if point is not None and until(point):
            return point, time.monotonic() - started
        assert time.monotonic() - started < timeout, f"item {item_id} not in Qdrant as expected: {point}"
        time.sleep(0.2)


def wait_catalog_committed(settings: Settings, timeout: float = 60.0) -> None:
    """Until the worker's consumer group has committed the whole catalogue topic: from then
    on a restarted worker never reads those records again."""
    group = KafkaConsumer(
        bootstrap_servers=bootstrap_servers(settings), group_id=settings.app_id, enable_auto_commit=False
    )
    partitions = [TopicPartition(settings.catalog_topic, p) for p in range(settings.partitions)]
    try:
        ends = group.end_offsets(partitions)
        deadline = time.monotonic() + timeout
        while any((group.committed(tp) or 0) < ends[tp] for tp in partitions):
            assert time.monotonic() < deadline, "catalogue offsets not committed"
            time.sleep(0.5)
    finally:
        group.close()


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).resize((56, 56)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def bundle() -> tuple:
    """Static encoders trained once for the module (a few seconds of CPU)."""
    images, _ = fashion_mnist("test")
    options = BuildOptions(text_epochs=15, image_epochs=1, image_limit=2000)
    result = build_static(
        "movielens-100k", images=FASHION_DIR / "train-images-idx3-ubyte.gz", options=options
    )
    return result, images


def test_new_catalogue_item_gets_a_unified_vector_before_any_click(
    settings: Settings, start_worker, bundle, tmp_path
) -> None:
    result, images = bundle
    save_bundle(settings.static_path, result.models, result.vectors)
    # Checkpoints far apart: catalogue updates must be durable without one (review finding 3).
    worker = start_worker(checkpoint_interval_seconds=600.0)
    attributes = load_attributes("movielens-100k")

    # The built catalogue is served at start: static sources only, no behaviour yet.
    point, _ = wait_item(worker, "1", lambda p: "text" in p["vectors"])
    assert set(point["vectors"]) == {"unified", "text"} and point["payload"]["event_count"] == 0

    shoe = tmp_path / "shoe.png"
    shoe.write_bytes(png_bytes(images[0]))  # synthetic image for a made-up item
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    catalog = tmp_path / "new-items.jsonl"
    records = [
        # Never clicked, never in the bundle: a new animated children's comedy with an image.
        {"item_id": "new-1", "movie_title": "Toy Friends (1996)", "release_date": "01-Jan-1996",
         "Animation": 1, "Children's": 1, "Comedy": 1, "image": "shoe.png"},
        # Text only: fusion must use the text vector alone.
        {"item_id": "new-2", "movie_title": "Space War (1997)", "Sci-Fi": 1, "Action": 1},
        # Image only (no word the encoder knows): fusion must use the image vector alone.
        {"item_id": "new-3", "image_pixels": images[1].tolist()},
        {"movie_title": "No id at all", "Drama": 1},
        {"item_id": "bad-image", "movie_title": "Broken", "image": "broken.png"},
        {"item_id": "bad-shape", "movie_title": "Wrong", "image_pixels": [1, 2, 3]},
    ]  # fmt: skip
    catalog.write_text("".join(json.dumps(r) + "\n" for r in records))
    sent_at = time.monotonic()
    assert publish_catalog(settings, str(catalog)) == len(records)
    # A record put on the topic with a path (not by `catalog publish`, which inlines images)
    # is refused: the worker never opens a path a message names.
    with EventProducer(bootstrap_servers(settings), settings.catalog_topic) as producer:
        producer.send_raw(b"by-path", json.dumps({"item_id": "by-path", "image": str(shoe)}).encode())

    new, seconds = wait_item(worker, "new-1", lambda p: True)
    print(
        f"\nnew catalogue item in Qdrant {seconds:.2f}s after publishing ({time.monotonic() - sent_at:.2f}s)"
    )
    # Text and image from the static encoders; the behaviour model adds its attribute-only
    # (ProdSI2Vec side-information) vector, which weighs nothing in fusion before any click.
    assert {"unified", "text", "image"} <= set(new["vectors"]) <= {"unified", "text", "image", "behaviour"}
    assert new["payload"]["event_count"] == 0
    assert new["payload"]["attributes"]["genre"] == ["Animation", "Children's", "Comedy"]
    static_only = normalise(sum(normalise(np.asarray(new["vectors"][s])) for s in ("text", "image")))
    assert float(np.asarray(new["vectors"]["unified"]) @ static_only) == pytest.approx(1.0, abs=1e-4)
    text_only, _ = wait_item(worker, "new-2", lambda p: True)
    image_only, _ = wait_item(worker, "new-3", lambda p: True)
    assert "image" not in text_only["vectors"] and "text" not in image_only["vectors"]
    assert set(image_only["vectors"]) == {"unified", "image"}  # no attribute, so no behaviour vector
    for point, source in ((text_only, "text"), (image_only, "image")):
        unit = normalise(np.asarray(point["vectors"][source]))
        assert float(np.asarray(point["vectors"]["unified"]) @ unit) == pytest.approx(1.0, abs=1e-4)

    # Its neighbours (by unified vector, before any click) share its genres far more often than
    # random catalogue items do.
    genres = {"Animation", "Children's", "Comedy"}
    hits = [h for h in get(worker, "/similar/new-1?k=10")["similar"] if h["item_id"] in attributes]
    rng = random.Random(0)
    sample = rng.sample(sorted(attributes), 500)
    random_rate = sum(bool(genres & set(attributes[i].get("genre", []))) for i in sample) / len(sample)
    similar_rate = sum(bool(genres & set(attributes[h["item_id"]].get("genre", []))) for h in hits) / len(
        hits
    )
    print(f"neighbours sharing a genre: {similar_rate:.2f}; random items: {random_rate:.2f}")
    assert similar_rate > random_rate + 0.2

    # Bad records went to the dead-letter topic with their reasons, nothing was upserted.
    dead = read_topic(settings, settings.dlq_topic, expect=4, timeout=60)
    reasons = Counter(dict(r.headers)["onevec-reason"].decode() for r in dead)
    stages = {dict(r.headers)["onevec-stage"].decode() for r in dead}
    expected = {"missing_field": 1, "broken_image": 1, "wrong_shape": 1, "path_not_allowed": 1}
    assert reasons == Counter(expected) and stages == {"catalog"}
    for refused in ("bad-image", "bad-shape", "by-path"):
        assert get(worker, f"/items/{refused}") is None
    assert metric_total(worker.metrics(), "onevec_catalog_items_encoded_total") == 3

    # The first click adds behaviour to the sources the item already had.
    with EventProducer(bootstrap_servers(settings), settings.clicks_topic) as producer:
        for position, item in enumerate(["new-1", "1"]):
            producer.send(
                {"user_id": "u1", "item_id": item, "event_type": "click", "timestamp": time.time() + position}
            )
    clicked, _ = wait_item(worker, "new-1", lambda p: p["payload"]["event_count"] >= 1)
    assert set(clicked["vectors"]) == {"unified", "behaviour", "text", "image"}

    # A changed record (new-2 now has an image) is re-encoded and replaces the item's sources.
    changed = tmp_path / "changed.jsonl"
    changed.write_text(json.dumps({**records[1], "image_pixels": images[2].tolist()}) + "\n")
    sent_at = time.monotonic()
    publish_catalog(settings, str(changed))
    updated, _ = wait_item(worker, "new-2", lambda p: "image" in p["vectors"])
    print(f"changed catalogue item re-encoded in Qdrant {time.monotonic() - sent_at:.2f}s after publishing")
    assert {"unified", "text", "image"} <= set(updated["vectors"])

    # kill -9 once the update's offset is committed (long before a checkpoint): the restarted
    # worker never sees the record again, yet still has new-2's image vector, so its first
    # click does not overwrite the point without it.
    wait_catalog_committed(settings)
    worker.kill()
    worker = start_worker(checkpoint_interval_seconds=600.0)
    with EventProducer(bootstrap_servers(settings), settings.clicks_topic) as producer:
        producer.send({"user_id": "u2", "item_id": "new-2", "event_type": "click", "timestamp": time.time()})
    clicked, _ = wait_item(worker, "new-2", lambda p: p["payload"]["event_count"] >= 1)
    assert {"unified", "behaviour", "text", "image"} <= set(clicked["vectors"])
    np.testing.assert_allclose(clicked["vectors"]["image"], updated["vectors"]["image"], rtol=1e-5, atol=1e-6)

    # Tombstones: an item the behaviour model never met loses its point; a known one keeps
    # only behaviour (its static text/image vectors are no longer served).
    with EventProducer(bootstrap_servers(settings), settings.catalog_topic) as producer:
        producer.send_raw(b"new-3", None)  # type: ignore[arg-type]
        producer.send_raw(b"new-2", None)  # type: ignore[arg-type]
    wait_item(worker, "new-2", lambda p: "text" not in p["vectors"] and "image" not in p["vectors"])
    started = time.monotonic()
    while get(worker, "/items/new-3") is not None:
        assert time.monotonic() - started < 60, "tombstoned item still in Qdrant"
        time.sleep(0.2)
    assert "new-3" not in {h["item_id"] for h in get(worker, "/similar/new-1?k=50")["similar"]}
