"""What every encoder shares: the training record, the verb set, and top-k by inner product."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from onevec.models.clickstream.examples import ExampleRecord

__all__ = ["Encoder", "Example", "parse_examples", "top_k"]


@dataclass(frozen=True, slots=True)
class Example:
    """The parts of an examples-topic record that training reads.

    A record also carries ``session_id``, ``event_type`` and ``timestamp``; sessionising
    already used them upstream, so they are not kept here.
    """

    user_id: str
    item_id: str
    prefix: tuple[str, ...]  # previous items of the session, oldest first

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Example:
        # Prefix items are kept as given (onevec's own records carry strings): str() on each of
        # ~30 items per example was half of parsing. The vocabulary maps any other id to its
        # string when it looks it up (Vocabulary.index_many).
        return cls(
            user_id=str(record["user_id"]),
            item_id=str(record["item_id"]),
            prefix=tuple(record.get("prefix") or ()),
        )


def parse_examples(records: Iterable[Mapping[str, Any]] | Iterable[ExampleRecord]) -> list[Example]:
    """Records to examples, dropping the ones flagged ``duplicate``.

    Delivery is at-least-once, so the same click may arrive twice; training on it twice
    would over-weight it, while the upsert side is idempotent and needs no such care.
    """
    return [Example.from_record(r) for r in records if not r.get("duplicate", False)]


class Encoder(Protocol):
    """The verb set every encoder and the trainer answer to (river-style: learn one batch)."""

    def learn(self, batch: list[dict[str, Any]]) -> float: ...

    def encode_items(self, item_ids: Sequence[str]) -> np.ndarray: ...

    def encode_session(self, prefix: Sequence[str]) -> np.ndarray: ...

    def recommend(
        self, prefix: Sequence[str], k: int = 20, exclude: Collection[str] = ()
    ) -> list[tuple[str, float]]: ...

    def changed_items(self) -> set[str]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def top_k(
    query: np.ndarray,
    keys: Sequence[str],
    vectors: np.ndarray,
    k: int,
    exclude: Collection[str] = (),
) -> list[tuple[str, float]]:
    """The ``k`` keys whose vectors have the largest inner product with ``query``.

    Inner product, not cosine: the encoders are trained on inner-product scores, so serving
    decodes them the same way (the "homogeneous configuration").
    """
    scores = vectors @ query
    if exclude:
        excluded = set(exclude)
        scores[[row for row, key in enumerate(keys) if key in excluded]] = -np.inf
    # A full stable sort (not argpartition) so ties always break by row: reproducible results.
    best = np.argsort(-scores, kind="stable")[:k]
    return [(keys[row], float(scores[row])) for row in best if np.isfinite(scores[row])]
