"""``onevec static build``: train the static encoders on a catalogue and encode its items.

The catalogue's records are parsed exactly as the worker's catalogue agent parses them
(:mod:`onevec.models.catalog`); a denoising autoencoder learns text vectors from every item's
words and attributes; a Siamese CNN learns image vectors from training images (a Fashion-MNIST
IDX file, labels read from its sibling labels file, or a directory of PNG/JPEG files, one
sub-directory per class) or else from the catalogue's own images; with events, a BYOL
inductive encoder learns from pairs of items that follow each other in a session. The result
is the encoders and the catalogue's vectors, which the CLI saves as one versioned bundle the
worker loads. Measuring them on real data is ``onevec static report``
(:mod:`onevec.streams.tools.static_report`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from onevec.models.catalog import (
    CatalogItem,
    catalog_records,
    frame_records,
    parse_catalog_record,
    read_image_file,
)
from onevec.models.clickstream.events import Rejection
from onevec.models.datasets import derive_session_ids, load_clothing_reviews, load_events
from onevec.models.static.bundle import StaticModels, StaticVectors, TextEncoderName
from onevec.models.static.image_encoder import ImageEncoder, decode_image, read_idx
from onevec.models.static.inductive_encoder import InductiveEncoder
from onevec.models.static.text_autoencoder import TextAutoencoder, TokenVocabulary

__all__ = [
    "BuildOptions",
    "BuildResult",
    "Progress",
    "build_static",
    "clothing_items",
    "parse_catalog",
    "read_training_images",
    "session_pairs",
]

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass
class BuildOptions:
    dim: int = 64
    text_epochs: int = 40
    image_epochs: int = 2
    image_limit: int = 10_000  # training images used (a subset keeps CPU time to seconds)
    inductive_epochs: int = 3
    proximity: float = 0.1  # paper 2's lambda; 0 = plain BYOL (the ablation)
    text_encoder: TextEncoderName = "autoencoder"
    session_gap_seconds: float = 1800.0
    seed: int = 0


@dataclass
class BuildResult:
    models: StaticModels
    vectors: StaticVectors
    items: list[CatalogItem]
    rejected: list[tuple[int, Rejection]]
    losses: dict[str, list[float]] = field(default_factory=dict)


def clothing_items() -> pd.DataFrame:
    """Women's E-Commerce Clothing Reviews as a catalogue: one row per clothing item with the
    text of all its reviews, and its (most frequent) department and class as labels."""
    reviews = load_clothing_reviews().dropna(subset=["Class Name"])
    reviews["text"] = reviews["Title"].fillna("") + " " + reviews["Review Text"].fillna("")
    grouped = reviews.groupby("Clothing ID")
    return pd.DataFrame(
        {
            "item_id": grouped.size().index.astype(str),
            "reviews": grouped["text"].agg(" ".join).to_numpy(),
            "department": grouped["Department Name"].agg(lambda s: s.mode()[0]).to_numpy(dtype=object),
            "class": grouped["Class Name"].agg(lambda s: s.mode()[0]).to_numpy(dtype=object),
        }
    )


def read_training_images(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Images for the Siamese CNN: an IDX images file (labels from the sibling labels file
    when present) or a directory of PNG/JPEG files (class = sub-directory, when there are
    several)."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        images: list[np.ndarray] = []
        classes: list[str] = []
        for file in files:
            try:
                images.append(decode_image(read_image_file(file)))
                classes.append(file.parent.name)
            except (OSError, ValueError):
                continue  # an unreadable training image is skipped, not fatal
        if not images:
            raise ValueError(f"{path}: no readable PNG/JPEG images")
        return np.stack(images), (np.asarray(classes) if len(set(classes)) > 1 else None)
    labels_path = path.with_name(path.name.replace("images-idx3", "labels-idx1"))
    return read_idx(path), (read_idx(labels_path) if labels_path != path and labels_path.exists() else None)


def parse_catalog(records: list[dict[str, Any]]) -> tuple[list[CatalogItem], list[tuple[int, Rejection]]]:
    """Parse every record as the catalogue agent would, except that image paths are read:
    the catalogue file and its images are local here."""
    items, rejected = [], []
    for position, record in enumerate(records):
        parsed = parse_catalog_record(record, allow_paths=True)
        if isinstance(parsed, Rejection):
            rejected.append((position, parsed))
        else:
            items.append(parsed)
    return items, rejected


def session_pairs(events: pd.DataFrame, index: dict[str, int], gap_seconds: float) -> np.ndarray:
    """(m, 2) catalogue indices of items clicked one after the other in a session."""
    if "session_id" not in events:
        events = events.assign(session_id=derive_session_ids(events, gap_seconds))
    ordered = events.sort_values(["session_id", "timestamp"], kind="stable")
    items = ordered["item_id"].astype(str).map(index).to_numpy()
    sessions = ordered["session_id"].to_numpy()
    follows = (sessions[1:] == sessions[:-1]) & ~np.isnan(items[1:]) & ~np.isnan(items[:-1])
    return np.stack([items[:-1][follows], items[1:][follows]], axis=1).astype(np.int64)


def build_static(
    catalog_source: str,
    images: Path | None = None,
    events: str | None = None,
    options: BuildOptions | None = None,
    progress: Progress | None = None,
) -> BuildResult:
    """Train the static encoders on a catalogue and encode every valid record."""
    options = options or BuildOptions()
    report = progress or (lambda stage, done, total: None)
    records = (
        frame_records(clothing_items())
        if catalog_source == "womens-clothing-reviews"
        else catalog_records(catalog_source)
    )
    items, rejected = parse_catalog(records)
    if not items:
        raise ValueError(f"{catalog_source}: no valid catalogue record")
    documents = [item.document for item in items]
    losses: dict[str, list[float]] = {}
    models = StaticModels(dim=options.dim, text_encoder=options.text_encoder)
    models.notes = {"catalog": catalog_source, "items": len(items), "rejected": len(rejected)}

    vocabulary = TokenVocabulary.build(documents, min_count=2, max_size=5000)
    if len(vocabulary):
        models.text = TextAutoencoder(vocabulary, dim=options.dim, hidden=128, seed=options.seed)
        losses["text"] = models.text.fit(
            documents,
            epochs=options.text_epochs,
            on_epoch=lambda e, _: report("text autoencoder", e, options.text_epochs),
        )

    train_images, labels = _image_training_set(items, images, options)
    if train_images is not None:
        models.image = ImageEncoder(dim=options.dim, seed=options.seed)
        losses["image"] = models.image.fit(
            train_images,
            labels,
            epochs=options.image_epochs,
            on_epoch=lambda e, _: report("image CNN", e, options.image_epochs),
        )
        models.notes["image_training"] = (
            f"{len(train_images)} images, {'labelled' if labels is not None else 'unlabelled'}"
        )

    if events is not None and len(vocabulary):
        index = {item.item_id: i for i, item in enumerate(items)}
        history = load_events(Path(events) if Path(events).exists() else events, options.session_gap_seconds)
        pairs = session_pairs(history, index, options.session_gap_seconds)
        models.inductive = InductiveEncoder(
            vocabulary, dim=options.dim, proximity=options.proximity, seed=options.seed
        )
        losses["inductive"] = models.inductive.fit(
            documents,
            pairs,
            epochs=options.inductive_epochs,
            on_epoch=lambda e, _: report("BYOL inductive", e, options.inductive_epochs),
        )
        models.notes["inductive_pairs"] = len(pairs)
    elif options.text_encoder == "inductive":
        raise ValueError("the inductive text encoder needs --events (sessions to learn co-occurrence from)")

    vectors = StaticVectors()
    for item, sources in zip(items, models.encode(documents, [item.image for item in items]), strict=True):
        if sources:
            vectors.set(item.item_id, sources)
    return BuildResult(models, vectors, items, rejected, losses)


def _image_training_set(
    items: Sequence[CatalogItem], images: Path | None, options: BuildOptions
) -> tuple[np.ndarray | None, np.ndarray | None]:
    if images is not None:
        pixels, labels = read_training_images(images)
    else:
        own = [item.image for item in items if item.image is not None]
        if len(own) < 2:
            return None, None
        pixels, labels = np.stack(own), None
    if len(pixels) > options.image_limit:
        keep = np.random.default_rng(options.seed).choice(len(pixels), options.image_limit, replace=False)
        pixels, labels = pixels[keep], None if labels is None else labels[keep]
    return pixels, labels
