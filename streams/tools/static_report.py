"""``onevec static build`` and ``onevec static report``: train the static encoders on a
catalogue and measure them on real data.

Build: the catalogue's records are parsed exactly as the worker's catalogue agent parses
them (:mod:`onevec.models.catalog`); a denoising autoencoder learns text vectors from every item's
words and attributes; a Siamese CNN learns image vectors from ``--images`` (a Fashion-MNIST
IDX file, labels read from its sibling labels file, or a directory of PNG/JPEG files, one
sub-directory per class) or else from the catalogue's own images; with ``--events``, a
BYOL inductive encoder learns from pairs of items that follow each other in a session. The
encoders and the catalogue's vectors are saved as one versioned bundle the worker loads.

Report: each source on the data that really has it (no image is paired with a MovieLens or
clothing item): Women's E-Commerce Clothing Reviews text, Fashion-MNIST images, MovieLens-100k
titles and genres fused with behaviour, and the BYOL encoder with and without its proximity term.
"""

from __future__ import annotations

import time
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
from onevec.models.datasets import derive_session_ids, load_catalog, load_clothing_reviews, load_events
from onevec.models.static.bundle import StaticModels, StaticVectors, TextEncoderName
from onevec.models.static.image_encoder import ImageEncoder, decode_image, read_idx
from onevec.models.static.inductive_encoder import InductiveEncoder
from onevec.models.static.text_autoencoder import TextAutoencoder, TokenVocabulary

__all__ = ["FASHION_DIR", "BuildOptions", "build_static", "clothing_items", "fashion_mnist", "run_report"]

Progress = Callable[[str, int, int], None]  # (stage, done, total)

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


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


# ---- data --------------------------------------------------------------------------------


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


def fashion_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(images (n, 28, 28) uint8, labels (n,)) of Fashion-MNIST from the Debian package."""
    prefix = "train" if split == "train" else "t10k"
    return (
        read_idx(FASHION_DIR / f"{prefix}-images-idx3-ubyte.gz"),
        read_idx(FASHION_DIR / f"{prefix}-labels-idx1-ubyte.gz"),
    )


def read_training_images(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Images for the Siamese CNN: an IDX images file (labels from the sibling labels file
    when present) or a directory of PNG/JPEG files (class = sub-directory, when there are
    several)."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        images, classes = [], []
        for file in files:
            try:
                images.append(decode_image(read_image_file(file)))
                classes.append(file.parent.name)
            except (OSError, ValueError):
                continue  # an unreadable training image is skipped, not fatal
        if not images:
            raise ValueError(f"{path}: no readable PNG/JPEG images")
        labels = np.asarray(classes) if len(set(classes)) > 1 else None
        return np.stack(images), labels
    images = read_idx(path)
    labels_path = path.with_name(path.name.replace("images-idx3", "labels-idx1"))
    labels = read_idx(labels_path) if labels_path != path and labels_path.exists() else None
    return images, labels


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


# ---- build -------------------------------------------------------------------------------


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


# ---- measurements ------------------------------------------------------------------------


def probe_accuracy(features: Any, labels: np.ndarray, folds: int = 5, seed: int = 0) -> float:
    """Mean accuracy of a logistic-regression probe, k-fold cross-validated."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import KFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    dense = isinstance(features, np.ndarray)
    probe = (
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
        if dense
        else LogisticRegression(max_iter=500)
    )
    cv = KFold(folds, shuffle=True, random_state=seed)
    return float(cross_val_score(probe, features, labels, cv=cv).mean())


def split_probe_accuracy(
    train: np.ndarray, y_train: np.ndarray, test: np.ndarray, y_test: np.ndarray
) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300))
    return float(probe.fit(train, y_train).score(test, y_test))


def precision_at_k(vectors: Any, labels: np.ndarray, k: int = 10, chunk: int = 2048) -> float:
    """Share of each item's k nearest neighbours (cosine, itself excluded) with its label."""
    from sklearn.preprocessing import normalize

    units = normalize(vectors)
    labels = np.asarray(labels)
    hits = 0.0
    for start in range(0, units.shape[0], chunk):
        scores = units[start : start + chunk] @ units.T
        scores = scores.toarray() if hasattr(scores, "toarray") else np.asarray(scores)
        rows = np.arange(scores.shape[0])
        scores[rows, rows + start] = -np.inf
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        hits += float((labels[top] == labels[start : start + scores.shape[0], None]).sum())
    return hits / (units.shape[0] * k)


def genre_auc(
    vectors: np.ndarray, genres: np.ndarray, min_items: int = 20, seed: int = 0, folds: int = 5
) -> float:
    """Mean ROC AUC of one-vs-rest logistic probes over genres with at least ``min_items``
    items, ``folds``-fold cross-validated predictions (0.5 = chance)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    cv = KFold(folds, shuffle=True, random_state=seed)
    aucs = []
    for column in range(genres.shape[1]):
        target = genres[:, column]
        if target.sum() < min_items:
            continue
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300))
        scores = cross_val_predict(probe, vectors, target, cv=cv, method="decision_function")
        aucs.append(roc_auc_score(target, scores))
    return float(np.mean(aucs))


@dataclass
class Row:
    dataset: str
    task: str
    method: str
    value: float
    note: str = ""


def clothing_rows(options: BuildOptions, progress: Progress | None = None) -> list[Row]:
    """Text vectors of the clothing items (words of their reviews only: department and class
    are the labels, so they are kept out of the input) against TF-IDF and the majority."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    catalog = clothing_items()
    result = build_static_frame(catalog[["item_id", "reviews"]], options, progress)
    vectors = result.models.text.encode([item.document for item in result.items])  # type: ignore[union-attr]
    texts = catalog["reviews"].to_numpy()
    tfidf = TfidfVectorizer(min_df=2, max_features=5000, sublinear_tf=True).fit_transform(texts)
    rows, n = [], len(catalog)
    for label in ("department", "class"):
        y = catalog[label].to_numpy(dtype=object)
        majority = float(pd.Series(y).value_counts(normalize=True).iloc[0])
        rows += [
            Row("clothing", f"{label} probe acc ({n} items)", "text autoencoder", probe_accuracy(vectors, y)),
            Row(
                "clothing",
                f"{label} probe acc ({n} items)",
                "TF-IDF + logistic regression",
                probe_accuracy(tfidf, y),
            ),
            Row("clothing", f"{label} probe acc ({n} items)", "majority class", majority),
        ]
    y = catalog["class"].to_numpy(dtype=object)
    chance = float((pd.Series(y).value_counts(normalize=True) ** 2).sum())
    rows += [
        Row("clothing", "similar-item P@10 by class", "text autoencoder", precision_at_k(vectors, y)),
        Row("clothing", "similar-item P@10 by class", "TF-IDF cosine", precision_at_k(tfidf, y)),
        Row("clothing", "similar-item P@10 by class", "random (label frequencies)", chance),
    ]
    rows.append(_loss_row("clothing", "text autoencoder", result.losses["text"]))
    return rows


def build_static_frame(
    catalog: pd.DataFrame, options: BuildOptions, progress: Progress | None
) -> BuildResult:
    """:func:`build_static` on an in-memory catalogue (written to a temporary Parquet file)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "catalog.parquet"
        catalog.to_parquet(path)
        return build_static(str(path), options=options, progress=progress)


def fashion_rows(options: BuildOptions, progress: Progress | None = None) -> list[Row]:
    """Siamese CNN on a Fashion-MNIST train subset; probe and retrieval on the test split."""
    from sklearn.decomposition import PCA

    images, labels = fashion_mnist("train")
    test_images, test_labels = fashion_mnist("test")
    keep = np.random.default_rng(options.seed).choice(len(images), options.image_limit, replace=False)
    images, labels = images[keep], labels[keep]
    encoder = ImageEncoder(dim=options.dim, seed=options.seed)
    losses = encoder.fit(
        images,
        labels,
        epochs=options.image_epochs,
        on_epoch=lambda e, _: (progress or (lambda *a: None))("image CNN", e, options.image_epochs),
    )
    train_vectors, test_vectors = encoder.encode(images), encoder.encode(test_images)
    pca = PCA(options.dim, random_state=options.seed).fit(images.reshape(len(images), -1) / 255.0)
    pca_train = pca.transform(images.reshape(len(images), -1) / 255.0)
    pca_test = pca.transform(test_images.reshape(len(test_images), -1) / 255.0)
    n, task_p, task_a = len(test_images), "test P@10 same class", "test probe acc"
    note = f"trained on {len(images)} of 60000 train images"
    return [
        Row(
            "fashion-mnist",
            f"{task_p} ({n})",
            "Siamese CNN (triplet)",
            precision_at_k(test_vectors, test_labels),
            note,
        ),
        Row(
            "fashion-mnist",
            f"{task_p} ({n})",
            f"raw-pixel PCA-{options.dim}",
            precision_at_k(pca_test, test_labels),
        ),
        Row("fashion-mnist", f"{task_p} ({n})", "random", 0.1),
        Row(
            "fashion-mnist",
            f"{task_a} ({n})",
            "Siamese CNN (triplet)",
            split_probe_accuracy(train_vectors, labels, test_vectors, test_labels),
            note,
        ),
        Row(
            "fashion-mnist",
            f"{task_a} ({n})",
            f"raw-pixel PCA-{options.dim}",
            split_probe_accuracy(pca_train, labels, pca_test, test_labels),
        ),
        Row("fashion-mnist", f"{task_a} ({n})", "majority class", 0.1),
        _loss_row("fashion-mnist", "Siamese CNN (triplet)", losses),
    ]


def behaviour_vectors(
    catalog_ids: list[str], events: pd.DataFrame, options: BuildOptions
) -> tuple[np.ndarray, np.ndarray]:
    """Behaviour vectors (the live learner's item encoder, pre-trained on every event without
    catalogue attributes, so they carry clicks only) and click counts for ``catalog_ids``."""
    from onevec.models.online.config import ModelConfig
    from onevec.models.online.trainer import OnlineTrainer
    from onevec.models.pretrain import pretrain, session_examples

    trainer = OnlineTrainer(ModelConfig(dim=options.dim, seed=options.seed))
    pretrain(trainer, session_examples(events, gap_seconds=options.session_gap_seconds), epochs=1)
    counts = events["item_id"].value_counts()
    clicks = np.asarray([counts.get(i, 0) for i in catalog_ids], dtype=np.float64)
    known = set(trainer.item_encoder.item_vocab.keys())
    vectors = np.zeros((len(catalog_ids), options.dim), dtype=np.float32)
    rows = [i for i, item in enumerate(catalog_ids) if item in known]
    vectors[rows] = trainer.encode_items([catalog_ids[i] for i in rows])
    return vectors, clicks


def movielens_rows(
    options: BuildOptions, progress: Progress | None = None
) -> tuple[list[Row], dict[str, float]]:
    """Genre probes per source and for the unified vector on MovieLens-100k; and the BYOL
    encoder against the autoencoder on inputs without genres (titles and decade only)."""
    from onevec.models.fusion import click_scaled_weights, fuse_batch

    catalog = load_catalog("movielens-100k")
    genre_columns = [
        c for c in catalog.columns if set(catalog[c].dropna().unique()) == {0, 1} and c != "unknown"
    ]
    genres = catalog[genre_columns].to_numpy(dtype=np.int64)
    ids = catalog["item_id"].tolist()
    events = load_events("movielens-100k", options.session_gap_seconds)
    rows: list[Row] = []

    full = build_static_frame(
        catalog[["item_id", "movie_title", "release_date", *genre_columns]], options, progress
    )
    text = full.models.text.encode([i.document for i in full.items])  # type: ignore[union-attr]
    behaviour, clicks = behaviour_vectors(ids, events, options)
    weights = click_scaled_weights({"behaviour": 1.0, "text": 1.0}, clicks, 20.0)
    unified = fuse_batch({"behaviour": behaviour, "text": text}, weights)
    task = f"genre probe mean AUC ({len(ids)} items, {len(genre_columns)} genres)"
    rows += [
        Row(
            "movielens",
            task,
            "text AE (titles + genres + decade)",
            genre_auc(text, genres),
            "genres are inputs",
        ),
        Row(
            "movielens", task, "behaviour (live item encoder)", genre_auc(behaviour, genres), "no attributes"
        ),
        Row("movielens", task, "unified (behaviour + text)", genre_auc(unified, genres)),
        Row("movielens", task, "chance", 0.5),
    ]

    # Genres held out of the input: what do titles (+ decade) and co-occurrence tell?
    bare = build_static_frame(catalog[["item_id", "movie_title", "release_date"]], options, progress)
    documents = [i.document for i in bare.items]
    pairs = session_pairs(
        events, {i.item_id: n for n, i in enumerate(bare.items)}, options.session_gap_seconds
    )
    bare_text = bare.models.text.encode(documents)  # type: ignore[union-attr]
    held = "genre probe mean AUC, genres NOT in the input"
    rows.append(Row("movielens", held, "text AE (titles + decade)", genre_auc(bare_text, genres)))
    byol: dict[str, float] = {}
    for proximity in sorted({0.0, 0.1, 1.0, options.proximity}):
        encoder = InductiveEncoder(
            bare.models.text.vocabulary, dim=options.dim, proximity=proximity, seed=options.seed
        )  # type: ignore[union-attr]
        losses = encoder.fit(
            documents,
            pairs,
            epochs=options.inductive_epochs,
            on_epoch=lambda e, _, stage=f"BYOL lambda={proximity:g}": (progress or (lambda *a: None))(
                stage, e, options.inductive_epochs
            ),
        )
        vectors = encoder.encode(documents)
        byol[f"{proximity:g}"] = genre_auc(vectors, genres)
        units = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        distance = float(((units[pairs[:, 0]] - units[pairs[:, 1]]) ** 2).sum(1).mean())
        label = f"{'ablation: plain BYOL' if proximity == 0 else 'paper 2'}; pair distance {distance:.3f}"
        rows.append(
            Row("movielens", held, f"BYOL inductive, lambda={proximity:g}", byol[f"{proximity:g}"], label)
        )
        rows.append(_loss_row("movielens", f"BYOL lambda={proximity:g}", losses))
        if proximity == options.proximity:
            fused = fuse_batch({"behaviour": behaviour, "text": vectors}, weights)
            method = f"unified (behaviour + BYOL lambda={proximity:g})"
            rows.append(Row("movielens", held, method, genre_auc(fused, genres)))
    fused_ae = fuse_batch({"behaviour": behaviour, "text": bare_text}, weights)
    rows.append(Row("movielens", held, "unified (behaviour + text AE)", genre_auc(fused_ae, genres)))
    rows.append(Row("movielens", held, "chance", 0.5, f"{len(pairs)} session pairs (derived sessions)"))
    return rows, byol


def _loss_row(dataset: str, model: str, losses: list[float]) -> Row:
    return Row(dataset, "training loss first -> last epoch", model, losses[-1], f"from {losses[0]:.4f}")


def run_report(
    options: BuildOptions | None = None, progress: Progress | None = None
) -> tuple[list[Row], str]:
    """Every measurement; returns the rows and the Markdown report."""
    options = options or BuildOptions()
    started = time.monotonic()
    rows = clothing_rows(options, progress)
    rows += fashion_rows(options, progress)
    movielens, _ = movielens_rows(options, progress)
    rows += movielens
    return rows, render_markdown(rows, options, time.monotonic() - started)


def render_markdown(rows: list[Row], options: BuildOptions, seconds: float) -> str:
    lines = [
        "# Static vectors: measured on real data",
        "",
        f"Generated by `onevec static report` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
        f"in {seconds:.0f} s (dim {options.dim}, seed {options.seed}).",
        "",
        "Each source is measured on the data that really has it: text on Women's E-Commerce Clothing "
        "Reviews (item text = its reviews; department and class are only labels) and MovieLens-100k "
        "titles/genres, images on Fashion-MNIST (its own labelled product images). No image is paired "
        "with a MovieLens or clothing item here, so nothing in this table is synthetic. MovieLens "
        "sessions are derived (30-min idle gap), not browsing sessions. Probes: standardised logistic "
        "regression, 5-fold cross-validation over items (clothing, MovieLens) or train-subset -> test "
        "split (Fashion-MNIST). The encoders are unsupervised except the Siamese CNN, whose triplets "
        "come from the Fashion-MNIST train labels (as paper 1 uses product categories).",
        "",
        "| dataset | task | method | value | note |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r.dataset} | {r.task} | {r.method} | {r.value:.4f} | {r.note} |" for r in rows]
    return "\n".join(lines) + "\n"
