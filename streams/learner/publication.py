"""What the serving store holds, recorded beside the checkpoint, so that a restarted worker
reopens the store instead of publishing every item again (docs/operations.md, "Restarts").

Two files, written in this order:

* ``publish-state.npz``, saved with each checkpoint on the learner thread (so at the same moment
  as the model): the unit vector last published per item row and the sweep's stamps
  (:meth:`PublishPolicy.state_dict`), the serving rotation, a fresh token, and the identity
  (size, mtime) of the checkpoint file it goes with.
* ``publication.json``, once every point added before that save has been written (the upsert
  buffers flushed): it vouches for that state by its token, and records where the store is,
  what shapes the points besides the model (:func:`point_inputs`) and how many item and user
  points the store held then.

A crash between the checkpoint and its state, or between the state and its record, leaves them
naming different files, and the next start publishes everything. Starting a full publish
withdraws the record first: the store is being rewritten, so the record no longer describes it.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onevec.streams.settings import Settings

__all__ = ["Publication", "SavedPublication", "point_inputs", "store_location"]


def store_location(settings: Settings, collections: Iterable[str]) -> str:
    """Where the points are: the server's URL or the embedded engine's folder, and the collection
    names. In memory there is nothing to reopen; its store is empty at every start anyway."""
    if settings.qdrant_url:
        place = settings.qdrant_url
    elif settings.qdrant_path is not None:
        place = f"{settings.qdrant_engine}:{settings.qdrant_path.resolve()}"
    else:
        place = "memory"
    return json.dumps({"at": place, "collections": sorted(collections)})


def point_inputs(settings: Settings, static_version: str | None) -> str:
    """What shapes every item point besides the model: the fusion weights, the static bundle
    and the catalogue's attributes. Another value of any of them changes every point."""
    catalog = Path(settings.catalog) if settings.catalog else None
    stat = catalog.stat() if catalog is not None and catalog.is_file() else None
    return json.dumps(
        {
            "dim": settings.model_dim,
            "fusion_weights": dict(sorted(settings.fusion_weights.items())),
            "clicks_for_full_weight": settings.clicks_for_full_weight,
            "static": static_version,
            "catalog": settings.catalog,
            "catalog_file": None if stat is None else [stat.st_size, stat.st_mtime_ns],
        },
        sort_keys=True,
    )


@dataclass(frozen=True)
class _Record:
    """The content of ``publication.json``."""

    state: str  # the token of the publish state it vouches for
    store: str
    inputs: str
    items: int  # item points in the store once the state's points were written
    users: int


@dataclass(frozen=True)
class SavedPublication:
    """A publish state the record vouches for, for the checkpoint just restored."""

    policy: dict[str, np.ndarray]  # PublishPolicy.state_dict()
    rotation: np.ndarray | None
    steps: int  # the model version (training steps) of the checkpoint
    items: int
    users: int


class Publication:
    """The two files beside the checkpoint, for one store location and one set of point inputs."""

    def __init__(self, directory: Path, store: str, inputs: str) -> None:
        self.state_path = directory / "publish-state.npz"
        self.record_path = directory / "publication.json"
        self.store = store
        self.inputs = inputs

    def save_state(
        self, policy: Mapping[str, np.ndarray], rotation: np.ndarray | None, steps: int, checkpoint: Path
    ) -> str:
        """Save the publish state that goes with the ``checkpoint`` just written (of the model at
        ``steps``); its token."""
        token = uuid.uuid4().hex
        arrays: dict[str, Any] = dict(policy)
        arrays["rotation"] = np.zeros((0, 0), dtype=np.float32) if rotation is None else rotation
        arrays["steps"] = np.array(steps, dtype=np.int64)
        arrays["checkpoint"] = _identity(checkpoint)
        arrays["token"] = np.array(token)
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        with open(tmp, "wb") as file:
            np.savez(file, **arrays)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, self.state_path)
        return token

    def vouch(self, token: str, items: int, users: int) -> None:
        """Every point added before the state ``token`` was saved is written: record it."""
        record = _Record(state=token, store=self.store, inputs=self.inputs, items=items, users=users)
        _write_atomically(self.record_path, json.dumps(asdict(record)))

    def withdraw(self) -> None:
        self.record_path.unlink(missing_ok=True)

    def load(self, checkpoint: Path) -> SavedPublication | str:
        """The publish state vouched for, if it goes with ``checkpoint`` (the one restored), this
        store and these point inputs; otherwise why not."""
        if not self.record_path.exists() or not self.state_path.exists():
            return "no record of what the store holds"
        try:
            record = _Record(**json.loads(self.record_path.read_text()))
        except (ValueError, TypeError) as error:
            return f"unreadable {self.record_path}: {error}"
        if record.store != self.store:
            return f"the store was {record.store}, now {self.store}"
        if record.inputs != self.inputs:
            return f"the points were made from {record.inputs}, now {self.inputs}"
        with np.load(self.state_path) as saved:
            if str(saved["token"]) != record.state:
                return "the record vouches for an older publish state (a crash before it was written)"
            if not np.array_equal(saved["checkpoint"], _identity(checkpoint)):
                return "the publish state goes with another checkpoint (a crash while saving one)"
            arrays = {name: saved[name] for name in saved.files}
        rotation, steps = arrays.pop("rotation"), int(arrays.pop("steps"))
        for name in ("checkpoint", "token"):
            arrays.pop(name)
        return SavedPublication(
            policy=arrays,
            rotation=rotation if rotation.size else None,
            steps=steps,
            items=record.items,
            users=record.users,
        )


def _identity(checkpoint: Path) -> np.ndarray:
    """Which checkpoint file: every save replaces it with a new file (new mtime)."""
    stat = checkpoint.stat()
    return np.array([stat.st_size, stat.st_mtime_ns], dtype=np.int64)


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)
