"""What an item point is made of: its behaviour vector, its static text / image vectors, its
catalogue attributes, fused into the unified vector (docs/static.md).

Static sources come from the built bundle (``onevec static build``) plus the items the
catalogue agent encoded since, journalled beside the checkpoint and restored on start.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from onevec.models.catalog import CatalogItem, attribute_tokens
from onevec.models.fusion import click_scaled_weights, fuse_batch
from onevec.models.online.trainer import OnlineTrainer
from onevec.models.static.bundle import CatalogJournal, StaticModels, StaticVectors, load_bundle
from onevec.streams.qdrant import ItemRecord

__all__ = ["ItemSources"]

log = logging.getLogger(__name__)


class ItemSources:
    """Per item: static sources and attributes; builds the whole point of any set of items."""

    def __init__(
        self,
        trainer: OnlineTrainer,
        attributes: dict[str, dict[str, Any]],
        static_path: Path,
        journal_path: Path,
        fusion_weights: Mapping[str, float],
        clicks_for_full_weight: float,
    ) -> None:
        self.trainer = trainer
        self.attributes = attributes
        for item_id, attrs in attributes.items():
            trainer.set_attributes(item_id, attribute_tokens(attrs))
        self.fusion_weights = dict(fusion_weights)
        self.clicks_for_full_weight = clicks_for_full_weight
        self.dim = trainer.config.dim
        self.static_models: StaticModels | None = None
        self.static = StaticVectors()
        bundle = load_bundle(static_path)
        if bundle is not None:
            self.static_models, self.static = bundle
            if self.static_models.dim != self.dim:
                raise ValueError(
                    f"static bundle {self.static_models.version} is {self.static_models.dim}-d, "
                    f"the model is {self.dim}-d: rebuild it with --dim"
                )
            log.warning("static bundle %s: %d items", self.static_models.version, len(self.static))
        self.journal = CatalogJournal(journal_path)
        # Journalled after the last checkpoint folded the log: their points may never have been
        # written (a crash), so a worker that reopens its store writes them again.
        self.since_checkpoint = _journalled_items(self.journal.log_path)
        self.journal.load()
        self.journal.apply_to(self.static)

    def static_only(self) -> list[str]:
        """Catalogue items the behaviour model never met (they have static sources only)."""
        known = self.trainer.item_encoder.item_vocab
        return [item_id for item_id in self.static.ids() if known.get(item_id) is None]

    def apply_record(self, item: CatalogItem) -> None:
        """A new or changed catalogue record: its static sources (encoded now), attributes and
        attribute tokens replace the item's. Journalled before the record's offset commits."""
        sources: dict[str, np.ndarray] = {}
        if self.static_models is not None:
            sources = self.static_models.encode([item.document], [item.image])[0]
        self.static.set(item.item_id, sources)
        self.journal.record(item.item_id, sources)
        self.attributes[item.item_id] = dict(item.attributes)
        tokens = attribute_tokens(item.attributes)
        if tokens:
            self.trainer.set_attributes(item.item_id, tokens)

    def remove(self, item_id: str) -> None:
        """A tombstone: the item's static sources and attributes go."""
        self.static.set(item_id, {})
        self.journal.record(item_id, {})
        self.attributes.pop(item_id, None)

    def records(
        self, items: Mapping[str, np.ndarray | None], clicks: Sequence[int], version: int, now: float
    ) -> list[ItemRecord]:
        """The whole points of these items (item -> behaviour vector, None if the model does not
        know it; ``clicks`` per item): behaviour and static sources, fused over the sources each
        really has, in one batch. An item with no source at all gets no record."""
        ids = list(items)
        sources = [self.static.sources(item_id) for item_id in ids]
        for found, behaviour in zip(sources, items.values(), strict=True):
            if behaviour is not None:
                found["behaviour"] = behaviour
        unified = self.unified(sources, np.asarray(clicks, dtype=np.float64))
        # An all-zero row: nothing known about the item yet (a catalogue item with no attribute
        # token and no click has a zero vector). Not an error, and nothing to publish.
        known = np.abs(unified).max(axis=1) > 0 if len(unified) else np.zeros(0, dtype=bool)
        return [
            ItemRecord(
                item_id=item_id,
                vectors={"unified": fused, **found},
                attributes=self.attributes.get(item_id, {}),
                model_version=version,
                updated_at=now,
                event_count=count,
            )
            for item_id, found, fused, count, usable in zip(ids, sources, unified, clicks, known, strict=True)
            if usable
        ]

    def unified(self, sources: list[dict[str, np.ndarray]], clicks: np.ndarray) -> np.ndarray:
        """Unified vectors of many items (sources per item, clicks per item) in one ``fuse_batch``:
        (n, dim), a zero row for an item with no source at all. With static sources present, a
        rarely clicked item leans on them (behaviour's weight grows with its clicks)."""
        fused = np.zeros((len(sources), self.dim), dtype=np.float32)
        names = sorted({name for found in sources for name in found})
        if not sources or not names:
            return fused
        matrices: dict[str, np.ndarray | None] = {}
        for name in names:
            matrix = np.zeros((len(sources), self.dim), dtype=np.float32)
            rows = [row for row, found in enumerate(sources) if name in found]
            matrix[rows] = np.array([sources[row][name] for row in rows])
            matrices[name] = matrix
        weights: dict[str, float | np.ndarray] = dict(self.fusion_weights)
        several = np.array([len(found) > 1 for found in sources])
        if several.any():
            # Only items with another source lean on it; a behaviour-only item keeps its vector.
            scaled = click_scaled_weights(self.fusion_weights, clicks, self.clicks_for_full_weight)
            for name in self.fusion_weights:
                weights[name] = np.where(several, scaled[name], self.fusion_weights[name])
        return fuse_batch(matrices, {name: weights[name] for name in names})


def _journalled_items(log_path: Path) -> list[str]:
    """The items of the journal's log (each once, in order); a line a crash cut short is skipped,
    as the journal itself skips it."""
    if not log_path.exists():
        return []
    items: dict[str, None] = {}
    for line in log_path.read_bytes().splitlines():
        try:
            items[str(json.loads(line)["item_id"])] = None
        except (ValueError, KeyError, TypeError):
            continue
    return list(items)
