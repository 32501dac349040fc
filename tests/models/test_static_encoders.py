"""The static encoders learn on real data: the loss falls on held-out data and a linear probe
on their vectors beats chance by a clear margin. Small subsets and one or a few epochs keep
this to seconds of CPU; the full measurements are `onevec static report` (reports/static.md).
Also: the bundle and catalogue-journal files they are stored in."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from onevec.models.catalog import frame_records
from onevec.models.datasets import load_catalog, load_events
from onevec.models.evaluation.probes import label_aucs, neighbour_precision, probe_score, split_probe_score
from onevec.models.fusion import normalise
from onevec.models.static.bundle import CatalogJournal, StaticModels, StaticVectors, load_bundle, save_bundle
from onevec.models.static.image_encoder import ImageEncoder, batch_triplet_loss
from onevec.models.static.inductive_encoder import InductiveEncoder
from onevec.models.static.text_autoencoder import TextAutoencoder, TokenVocabulary
from onevec.models.static_build import clothing_items, parse_catalog, session_pairs
from onevec.streams.tools.static_report import fashion_mnist


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """These models are small: one intra-op thread is as fast, and on a shared runner more
    threads only oversubscribe the cores (measured 5x slower under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_text_autoencoder_learns_clothing_departments_from_review_words() -> None:
    catalog = clothing_items()
    items, _ = parse_catalog(frame_records(catalog[["item_id", "reviews"]]))
    documents = [item.document for item in items]
    held = np.arange(len(documents)) % 5 == 0  # every fifth item: never trained on
    train = [d for d, h in zip(documents, held, strict=True) if not h]
    model = TextAutoencoder(TokenVocabulary.build(train, max_size=3000), dim=32, hidden=128)
    held_bags = model.vocabulary.bags([d for d, h in zip(documents, held, strict=True) if h])

    def held_loss() -> float:
        with torch.no_grad():
            return float(model.loss(held_bags, torch.Generator().manual_seed(1)))

    before = held_loss()
    model.fit(train, epochs=8)
    after = held_loss()
    vectors = model.encode(documents)
    y = catalog["department"].to_numpy(dtype=object)
    chance = 1.0 / len(set(y))
    accuracy = probe_score(vectors, y)
    print(
        f"\nheld-out loss {before:.3f} -> {after:.3f}; "
        f"department probe balanced accuracy {accuracy:.3f}, chance {chance:.3f}"
    )
    assert after < 0.9 * before
    assert accuracy > chance + 0.15


def test_siamese_cnn_learns_fashion_mnist_classes() -> None:
    images, labels = fashion_mnist("train")
    test_images, test_labels = fashion_mnist("test")
    train, y_train = images[:2000], labels[:2000]
    held, y_held = test_images[:1000], test_labels[:1000]
    model = ImageEncoder(dim=32)

    def held_loss() -> float:
        with torch.no_grad():
            embedded = torch.from_numpy(model.encode(held[:256]))
            same = torch.from_numpy(y_held[:256, None] == y_held[None, :256])
            return float(batch_triplet_loss(embedded, same, model.margin))

    before = held_loss()
    model.fit(train, y_train, epochs=1)
    after = held_loss()
    vectors = model.encode(held)
    accuracy = split_probe_score(model.encode(train), y_train, vectors, y_held)
    precision = neighbour_precision(vectors, y_held)
    print(f"\nheld-out triplet loss {before:.4f} -> {after:.4f}; probe {accuracy:.3f}; P@10 {precision:.3f}")
    assert after < 0.7 * before
    assert accuracy > 0.1 + 0.4 and precision > 0.1 + 0.4  # 10 balanced classes: chance is 0.1


@pytest.fixture(scope="module")
def movielens_titles() -> tuple[list[list[str]], np.ndarray, np.ndarray]:
    """Documents without genres (titles + decade), session pairs, genre flags (the labels)."""
    catalog = load_catalog("movielens-100k")
    genre_columns = [
        c for c in catalog.columns if set(catalog[c].dropna().unique()) == {0, 1} and c != "unknown"
    ]
    items, _ = parse_catalog(frame_records(catalog[["item_id", "movie_title", "release_date"]]))
    pairs = session_pairs(
        load_events("movielens-100k"), {item.item_id: i for i, item in enumerate(items)}, 1800.0
    )
    return [item.document for item in items], pairs, catalog[genre_columns].to_numpy()


def test_byol_encoder_learns_genres_it_never_sees_from_co_occurrence(movielens_titles) -> None:
    """BYOL's training loss chases a moving (EMA) target, so it is measured on held-out pairs
    before and after training; genres are never an input, only co-occurrence can teach them."""
    documents, pairs, genres = movielens_titles
    order = np.random.default_rng(0).permutation(len(pairs))
    train, held = pairs[order[:30_000]], pairs[order[-2_000:]]
    vocabulary = TokenVocabulary.build(documents)
    bags = vocabulary.bags(documents)
    distances, aucs = {}, {}
    for proximity in (0.0, 1.0):
        model = InductiveEncoder(vocabulary, dim=32, proximity=proximity)

        def held_loss(model: InductiveEncoder = model) -> float:
            with torch.no_grad():
                return float(model.loss(bags[held[:, 0]], bags[held[:, 1]]))

        before = held_loss()
        model.fit(documents, train, epochs=2)
        after = held_loss()
        vectors = model.encode(documents)
        units = normalise(vectors)
        distances[proximity] = float(((units[held[:, 0]] - units[held[:, 1]]) ** 2).sum(1).mean())
        aucs[proximity] = float(np.mean(label_aucs(vectors, genres)))
        print(f"\nlambda={proximity}: held-out loss {before:.3f} -> {after:.3f}")
        assert after < before
    print(f"held-out pair distance {distances}; genre AUC {aucs}")
    assert distances[1.0] < distances[0.0]  # the proximity term pulls co-occurring items together
    assert min(aucs.values()) > 0.5 + 0.05


def test_triplet_loss_of_a_batch_without_valid_triplets_is_zero_not_nan() -> None:
    embedded = torch.nn.functional.normalize(torch.randn(6, 4, requires_grad=True), dim=1)
    one_class, singletons = torch.ones(6, 6, dtype=torch.bool), torch.eye(6, dtype=torch.bool)
    for same in (one_class, singletons):
        loss = batch_triplet_loss(embedded, same, 0.2)
        assert torch.isfinite(loss) and float(loss.detach()) == 0.0
        loss.backward(retain_graph=True)  # still part of the graph: a training step can take it
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    assert float(batch_triplet_loss(embedded, labels[:, None] == labels[None, :], 0.2).detach()) > 0.0


def test_encoders_leave_the_global_torch_rng_alone(tmp_path: Path) -> None:
    """Building or loading an encoder (as the worker does at start) must not reseed torch:
    the learner's own random draws would repeat after every load."""
    documents = [["red", "dress"], ["blue", "jeans"]] * 3
    vocabulary = TokenVocabulary.build(documents)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    models = StaticModels(
        dim=8,
        text=TextAutoencoder(vocabulary, dim=8, hidden=16, seed=5),
        image=ImageEncoder(dim=8, seed=5),
        inductive=InductiveEncoder(vocabulary, dim=8, hidden=16, projection=8, seed=5),
    )
    save_bundle(tmp_path, models, StaticVectors())
    loaded, _ = load_bundle(tmp_path)
    assert torch.equal(torch.rand(3), expected)
    # Still seeded: the same seed gives the same weights.
    again = TextAutoencoder(vocabulary, dim=8, hidden=16, seed=5)
    for a, b in zip(again.network.parameters(), loaded.text.network.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["text", "image", "inductive"])
def test_every_static_encoder_round_trips_through_a_bundle(kind: str, tmp_path: Path) -> None:
    """One contract for all: fit, encode, and the same vectors after save_bundle/load_bundle."""
    documents = [["red", "dress", "category=Dresses"], ["blue", "jeans", "category=Pants"]] * 10
    images = np.random.default_rng(0).integers(0, 255, (20, 28, 28), dtype=np.uint8)
    vocabulary = TokenVocabulary.build(documents)
    models = StaticModels(dim=8)
    if kind == "text":
        models.text = TextAutoencoder(vocabulary, dim=8, hidden=16)
        models.text.fit(documents, epochs=2)
    elif kind == "image":
        models.image = ImageEncoder(dim=8)
        models.image.fit(images, np.arange(20) % 2, epochs=1, batch_size=10)
    else:
        models.inductive = InductiveEncoder(vocabulary, dim=8, hidden=16, projection=8)
        models.inductive.fit(documents, np.array([[0, 2], [1, 3], [2, 4], [3, 5]]), epochs=2, batch_size=2)
        models.text_encoder = "inductive"
    encoded = models.encode(documents[:2], [images[0], None])
    vectors = StaticVectors({str(i): sources for i, sources in enumerate(encoded)})
    save_bundle(tmp_path, models, vectors)
    loaded, loaded_vectors = load_bundle(tmp_path)
    again = loaded.encode(documents[:2], [images[0], None])
    expected = {"text": ["text", "text"], "image": ["image", None], "inductive": ["text", "text"]}[kind]
    for i, source in enumerate(expected):
        if source is None:
            assert again[i] == {}
            continue
        assert set(again[i]) == {source}
        np.testing.assert_allclose(again[i][source], encoded[i][source], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(loaded_vectors.sources(str(i))[source], encoded[i][source])


def test_two_builds_in_one_second_get_their_own_bundles(tmp_path: Path) -> None:
    vector = {"text": np.ones(4, np.float32)}
    first, second = StaticModels(dim=4), StaticModels(dim=4)
    assert first.version != second.version  # made within the same second
    save_bundle(tmp_path, first, StaticVectors({"a": vector}))
    save_bundle(tmp_path, second, StaticVectors({"b": vector}))
    loaded, vectors = load_bundle(tmp_path)
    assert loaded.version == second.version and vectors.ids() == ["b"]
    assert (tmp_path / first.version / "static.pt").exists()
    assert not list(tmp_path.rglob("*.partial"))  # written whole, then renamed


def test_catalogue_journal_survives_a_crash_before_the_checkpoint(tmp_path: Path) -> None:
    """What the catalogue agent set is on disk when record() returns (before Faust commits the
    record's offset), without waiting for compact() at checkpoint time."""
    path = tmp_path / "catalog-vectors.pt"
    bundle = StaticVectors(
        {"old": {"text": np.ones(4, np.float32)}, "kept": {"image": np.ones(4, np.float32)}}
    )
    journal = CatalogJournal(path)
    journal.record("new", {"text": np.arange(4, dtype=np.float32), "image": np.full(4, 0.5, np.float32)})
    journal.record("old", {})  # a tombstone: hides the bundle's vectors
    with journal.log_path.open("ab") as log:
        log.write(b'{"item_id": "torn", "sour')  # a crash mid-append
    # "kill -9": no compact(); a new process reads the journal.
    restored = CatalogJournal(path)
    restored.load()
    static = StaticVectors(dict(bundle._vectors))
    restored.apply_to(static)
    assert sorted(static.ids()) == ["kept", "new"]
    np.testing.assert_array_equal(static.sources("new")["text"], np.arange(4, dtype=np.float32))
    restored.compact()
    assert not restored.log_path.exists() and path.exists()
    compacted = CatalogJournal(path)
    compacted.load()
    assert set(compacted.overrides) == {"new", "old"} and compacted.overrides["old"] == {}
    np.testing.assert_array_equal(compacted.overrides["new"]["image"], np.full(4, 0.5, np.float32))
    # A snapshot from before the journal (plain StaticVectors file) still loads.
    StaticVectors({"legacy": {"text": np.ones(4, np.float32)}}).save(path)
    legacy = CatalogJournal(path)
    legacy.load()
    assert list(legacy.overrides) == ["legacy"]
    assert json.loads(json.dumps(list(legacy.overrides)))  # plain ids
