"""Static (catalogue) vectors and the encoders that make them, stored by model version.

A *bundle* is one directory ``<root>/<version>/static.pt`` holding the trained encoders (text
autoencoder, Siamese image CNN, BYOL inductive encoder; any may be absent), which of them
fills the ``text`` named vector, and the vectors computed for the catalogue they were built
on; ``<root>/CURRENT`` names the version a worker loads at start. The worker keeps encoding
new or changed catalogue items with the same encoders, so their vectors stay comparable with
the bundle's; what it changes is kept in a :class:`CatalogJournal` beside its checkpoint.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from onevec.models.static.image_encoder import ImageEncoder
from onevec.models.static.inductive_encoder import InductiveEncoder
from onevec.models.static.text_autoencoder import TextAutoencoder

__all__ = [
    "CatalogJournal",
    "StaticModels",
    "StaticVectors",
    "TextEncoderName",
    "load_bundle",
    "new_version",
    "save_bundle",
]

TextEncoderName = Literal["autoencoder", "inductive"]
STATIC_SOURCES = ("text", "image")


class StaticVectors:
    """item id -> {"text": vector, "image": vector}, only the sources each item has."""

    def __init__(self, vectors: Mapping[str, Mapping[str, np.ndarray]] | None = None) -> None:
        self._vectors: dict[str, dict[str, np.ndarray]] = {k: dict(v) for k, v in (vectors or {}).items()}

    def set(self, item_id: str, sources: Mapping[str, np.ndarray]) -> None:
        """Replace the item's static sources (a changed catalogue record replaces them all);
        an item left with none is forgotten."""
        if not sources:
            self._vectors.pop(item_id, None)
            return
        self._vectors[item_id] = {s: np.asarray(v, dtype=np.float32) for s, v in sources.items()}

    def sources(self, item_id: str) -> dict[str, np.ndarray]:
        return dict(self._vectors.get(item_id, {}))

    def ids(self) -> list[str]:
        return list(self._vectors)

    def update(self, other: StaticVectors) -> None:
        self._vectors.update(other._vectors)

    def __len__(self) -> int:
        return len(self._vectors)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._vectors

    def state_dict(self) -> dict[str, Any]:
        """Per source: the item ids that have it and their vectors as one tensor."""
        state: dict[str, Any] = {}
        for source in STATIC_SOURCES:
            ids = [i for i, sources in self._vectors.items() if source in sources]
            if ids:
                matrix = np.stack([self._vectors[i][source] for i in ids])
                state[source] = {"ids": ids, "vectors": torch.from_numpy(matrix)}
        return state

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> StaticVectors:
        vectors = cls()
        for source, part in state.items():
            for item_id, vector in zip(part["ids"], part["vectors"].numpy(), strict=True):
                vectors._vectors.setdefault(item_id, {})[source] = vector
        return vectors

    def save(self, path: Path) -> None:
        _save_atomically(self.state_dict(), path)

    @classmethod
    def load(cls, path: Path) -> StaticVectors:
        return cls.from_state_dict(torch.load(path, weights_only=True))


def _save_atomically(state: Any, path: Path) -> None:
    """torch.save to a partial file, fsync, then rename: a crash mid-write leaves the old file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    partial.replace(path)


class CatalogJournal:
    """The static sources the catalogue agent set since the bundle was built, durable per record.

    Each change (new sources, or none: a tombstone or a record with nothing to encode) is
    appended to ``<path>.log`` and fsynced before the agent moves on, so before Faust commits
    the record's offset: a crash right after can lose no catalogue update. ``compact()`` (at
    checkpoint time) folds the log into the snapshot ``<path>`` and empties it. ``overrides``
    maps item -> sources, an empty dict meaning "no static source" (it hides the bundle's).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.log_path = path.with_name(path.name + ".log")
        self.overrides: dict[str, dict[str, np.ndarray]] = {}
        self._dirty = False

    def load(self) -> None:
        """The snapshot, then the log on top (a torn last line from a crash is skipped)."""
        if self.path.exists():
            state = torch.load(self.path, weights_only=True)
            if "vectors" not in state:  # the older snapshot format: sources only
                state = {"vectors": state, "removed": []}
            vectors = StaticVectors.from_state_dict(state["vectors"])
            self.overrides = {i: vectors.sources(i) for i in vectors.ids()}
            self.overrides.update({i: {} for i in state["removed"]})
        if self.log_path.exists():
            for line in self.log_path.read_bytes().splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # the line a crash cut short: its offset was never committed
                self.overrides[entry["item_id"]] = {
                    s: np.asarray(v, dtype=np.float32) for s, v in entry["sources"].items()
                }
                self._dirty = True

    def record(self, item_id: str, sources: Mapping[str, np.ndarray]) -> None:
        """Keep ``sources`` as the item's static sources (empty: it has none), durably."""
        self.overrides[item_id] = {s: np.asarray(v, dtype=np.float32) for s, v in sources.items()}
        line = json.dumps({"item_id": item_id, "sources": {s: v.tolist() for s, v in sources.items()}})
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as handle:
            handle.write(line.encode() + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        self._dirty = True

    def apply_to(self, static: StaticVectors) -> None:
        for item_id, sources in self.overrides.items():
            static.set(item_id, sources)

    def compact(self) -> None:
        """Fold the log into the snapshot (atomically), then empty the log."""
        if not self._dirty:
            return
        kept = StaticVectors({i: s for i, s in self.overrides.items() if s})
        removed = [i for i, s in self.overrides.items() if not s]
        _save_atomically({"vectors": kept.state_dict(), "removed": removed}, self.path)
        # A crash before this truncation replays the log onto a snapshot that has it: harmless.
        self.log_path.unlink(missing_ok=True)
        self._dirty = False


@dataclass
class StaticModels:
    """The trained static encoders of one version, and which one makes ``text`` vectors."""

    dim: int
    text: TextAutoencoder | None = None
    image: ImageEncoder | None = None
    inductive: InductiveEncoder | None = None
    text_encoder: TextEncoderName = "autoencoder"
    version: str = field(default_factory=lambda: new_version())
    notes: dict[str, Any] = field(default_factory=dict)  # how it was built, for the manifest

    def text_model(self) -> TextAutoencoder | InductiveEncoder | None:
        return self.inductive if self.text_encoder == "inductive" else self.text

    def encode(
        self, documents: Sequence[Sequence[str]], images: Sequence[np.ndarray | None]
    ) -> list[dict[str, np.ndarray]]:
        """Static sources of n items: ``text`` when the document has a known token, ``image``
        when the item has an image and an image encoder exists. Nothing is invented."""
        out: list[dict[str, np.ndarray]] = [{} for _ in documents]
        model = self.text_model()
        if model is not None and documents:
            texts = model.encode([list(d) for d in documents])
            for sources, vector in zip(out, texts, strict=True):
                if np.any(vector):
                    sources["text"] = vector
        with_image = [i for i, image in enumerate(images) if image is not None]
        if self.image is not None and with_image:
            vectors = self.image.encode(np.stack([image for image in images if image is not None]))
            for i, vector in zip(with_image, vectors, strict=True):
                out[i]["image"] = vector
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "dim": self.dim,
            "version": self.version,
            "text_encoder": self.text_encoder,
            "notes": self.notes,
            "text": None if self.text is None else self.text.state_dict(),
            "image": None if self.image is None else self.image.state_dict(),
            "inductive": None if self.inductive is None else self.inductive.state_dict(),
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> StaticModels:
        return cls(
            dim=state["dim"],
            version=state["version"],
            text_encoder=state["text_encoder"],
            notes=dict(state.get("notes") or {}),
            text=None if state["text"] is None else TextAutoencoder.from_state_dict(state["text"]),
            image=None if state["image"] is None else ImageEncoder.from_state_dict(state["image"]),
            inductive=(
                None if state["inductive"] is None else InductiveEncoder.from_state_dict(state["inductive"])
            ),
        )


def new_version() -> str:
    """UTC time to the second (so versions sort by age) and a random suffix: two builds in
    the same second get different directories."""
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"


def save_bundle(root: Path, models: StaticModels, vectors: StaticVectors) -> Path:
    """Write ``<root>/<version>/static.pt`` and point ``<root>/CURRENT`` at it, each through a
    partial file and a rename: a worker starting meanwhile loads the previous bundle whole."""
    directory = root / models.version
    directory.mkdir(parents=True, exist_ok=False)  # never overwrite another build's version
    path = directory / "static.pt"
    _save_atomically({"models": models.state_dict(), "vectors": vectors.state_dict()}, path)
    current = root / "CURRENT.partial"
    current.write_text(models.version + "\n")
    current.replace(root / "CURRENT")
    return path


def load_bundle(root: Path) -> tuple[StaticModels, StaticVectors] | None:
    """The CURRENT bundle under ``root``, or None when none was built."""
    pointer = root / "CURRENT"
    if not pointer.exists():
        return None
    state = torch.load(root / pointer.read_text().strip() / "static.pt", weights_only=True)
    return StaticModels.from_state_dict(state["models"]), StaticVectors.from_state_dict(state["vectors"])
