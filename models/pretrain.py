"""Offline pre-training: warm up an :class:`OnlineTrainer` on a historical events table
before it goes live, and measure it on held-out events the way the live learner does.

Three steps, each matching what the stream would do with the same events:

* :func:`session_examples` turns a normalised events frame (what
  :func:`onevec.models.datasets.load_events` returns) into the example records the stream's session
  window emits for it, so offline and online training read identical inputs;
* :func:`pretrain` feeds those records to ``trainer.learn`` in stream order, in micro-batches,
  for several epochs;
* :func:`evaluate_next_item` ranks each held-out example's next item with
  :func:`onevec.models.ranking.target_ranks` (HR@k / MRR@k), without learning from it.

A pre-trained trainer is saved with ``trainer.save_checkpoint(path, {})``: empty offsets,
since none of the examples came from the live topics.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from onevec.models.clickstream.events import EventType
from onevec.models.online.base import parse_examples
from onevec.models.online.trainer import OnlineTrainer
from onevec.models.ranking import TOP_K, PrequentialScore, target_ranks

__all__ = ["evaluate_next_item", "pretrain", "session_examples"]

# The stream's defaults (onevec.models.clickstream.sessions.SessionWindow, Settings.session_gap_seconds).
DEFAULT_MAX_ITEMS = 50
DEFAULT_GAP_SECONDS = 1800.0
# Examples ranked per target_ranks call: it builds a (batch x known items) float32 score
# matrix, so this bounds evaluation memory on large catalogues (256 x 1M items = 1 GB).
EVAL_BATCH = 256

_REQUIRED = ("user_id", "session_id", "item_id", "event_type", "timestamp")
_EVENT_TYPES = frozenset(t.value for t in EventType)


@dataclass
class _Session:
    """What the stream's session window keeps per open session (see onevec.models.clickstream.sessions)."""

    last: float
    items: deque[str]  # the newest max_items items, oldest first
    n_events: int = 0  # events applied, including those no longer kept in ``items``
    # fingerprint -> position of the newest max_items applied events: an event the stream
    # recognises as already applied is re-sent flagged ``duplicate``, not applied twice.
    seen: dict[tuple[str, str, float], int] = field(default_factory=dict)


def session_examples(
    events: pd.DataFrame, max_items: int = DEFAULT_MAX_ITEMS, *, gap_seconds: float = DEFAULT_GAP_SECONDS
) -> list[dict[str, Any]]:
    """The example records the stream emits for ``events``, in the same (arrival) order.

    ``events`` is a normalised events frame in timestamp order, as ``load_events`` returns
    it. Each row becomes one record with the keys of ``onevec.models.clickstream.sessions.Example.to_dict()``:
    ``event_id`` (``"{session_id}:{position}"``, stable across calls), ``session_id``,
    ``user_id``, ``item_id``, ``event_type``, ``timestamp``, ``prefix`` (the session's
    previous items, oldest first, the newest ``max_items`` of them) and ``duplicate``.

    The stream's session rules that can apply to a time-ordered table are mirrored, so the
    records equal the stream's (event ids aside; the stream uses a content hash):

    * an event more than ``gap_seconds`` after its session's last event starts that session
      afresh (empty prefix, same id); this never happens with sessions ``load_events``
      derived with the same gap, only with explicit session ids spanning long pauses;
    * an exact repeat of one of the session's newest ``max_items`` events (same item,
      event type and timestamp) gets ``duplicate=True`` and its original's prefix, and does
      not extend the session; ``OnlineTrainer.learn`` skips it. Otherwise ``duplicate`` is
      False.

    Raises ``ValueError`` when a required column is missing or an event type is one the
    stream rejects (it would dead-letter those events, so no example could match it).
    """
    if max_items < 1:
        raise ValueError(f"max_items must be at least 1, got {max_items}")
    missing = [column for column in _REQUIRED if column not in events.columns]
    if missing:
        raise ValueError(f"events frame lacks column(s): {', '.join(missing)}")
    unknown = set(events["event_type"].astype(str).unique()) - _EVENT_TYPES
    if unknown:
        raise ValueError(
            f"event type(s) the stream rejects: {', '.join(sorted(unknown))}"
            f" (allowed: {', '.join(sorted(_EVENT_TYPES))})"
        )

    sessions: dict[str, _Session] = {}
    records: list[dict[str, Any]] = []
    # Plain column lists, not iterrows/itertuples: this loop is the whole cost (~0.3 s/100k).
    columns = zip(
        events["session_id"].astype(str).tolist(),
        events["user_id"].astype(str).tolist(),
        events["item_id"].astype(str).tolist(),
        events["event_type"].astype(str).tolist(),
        events["timestamp"].astype("float64").tolist(),
        strict=True,
    )
    for session_id, user_id, item_id, event_type, timestamp in columns:
        state = sessions.get(session_id)
        if state is None or timestamp - state.last > gap_seconds:
            state = sessions[session_id] = _Session(last=timestamp, items=deque(maxlen=max_items))
        mark = (item_id, event_type, timestamp)
        original = state.seen.get(mark)
        duplicate = original is not None and original >= state.n_events - max_items
        if original is not None and duplicate:
            # The items before the original's position that are still kept, as the stream does.
            first_kept = state.n_events - len(state.items)
            prefix = list(state.items)[: max(0, original - first_kept)]
            position = original
        else:
            prefix = list(state.items)
            position = state.n_events
            state.seen[mark] = position
            if len(state.seen) > 2 * max_items:  # keep the fingerprint memory bounded
                state.seen = {m: p for m, p in state.seen.items() if p > position - max_items}
            state.items.append(item_id)
            state.n_events += 1
            state.last = max(state.last, timestamp)
        records.append(
            {
                "event_id": f"{session_id}:{position}",
                "session_id": session_id,
                "user_id": user_id,
                "item_id": item_id,
                "event_type": event_type,
                "timestamp": timestamp,
                "prefix": prefix,
                "duplicate": duplicate,
            }
        )
    return records


def pretrain(
    trainer: OnlineTrainer,
    examples: list[dict[str, Any]],
    epochs: int,
    batch_size: int = 256,
    on_progress: Callable[[int], None] | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train ``trainer`` on ``examples`` for ``epochs`` passes; return each pass's mean loss.

    Every pass walks the examples in the order given, which must be stream order (as
    :func:`session_examples` returns them), in consecutive micro-batches of ``batch_size``
    through ``trainer.learn``. There is deliberately no shuffling: the online learner sees
    sessions interleaved in time order, in micro-batches of co-occurring clicks (which also
    serve as each other's in-batch negatives), and pre-training should fit that same
    regime rather than a different one.

    ``on_progress(n)`` is called after each micro-batch with its number of examples (so the
    calls add up to ``epochs * len(examples)``); ``on_epoch(epoch, mean_loss)`` after each
    pass, ``epoch`` counting from 1. The mean loss is weighted by the examples each
    micro-batch trained on; records flagged ``duplicate`` are skipped by ``learn`` and so
    count for nothing (a pass with nothing to learn reports 0.0).
    """
    if epochs < 0:
        raise ValueError(f"epochs must not be negative, got {epochs}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    means: list[float] = []
    for epoch in range(1, epochs + 1):
        total, trained = 0.0, 0
        for start in range(0, len(examples), batch_size):
            batch = examples[start : start + batch_size]
            loss = trainer.learn(batch)
            # learn returns the batch mean over the examples it kept: weight it by them so a
            # short last batch or one full of duplicates does not skew the pass's mean.
            kept = sum(not record.get("duplicate", False) for record in batch)
            total += loss * kept
            trained += kept
            if on_progress is not None:
                on_progress(len(batch))
        mean = total / trained if trained else 0.0
        means.append(mean)
        if on_epoch is not None:
            on_epoch(epoch, mean)
    return means


def evaluate_next_item(
    trainer: OnlineTrainer,
    examples: Sequence[dict[str, Any]],
    k: int = TOP_K,
    batch_size: int = EVAL_BATCH,
) -> PrequentialScore:
    """HR@k and MRR@k of ``trainer`` on held-out ``examples``; the trainer is not updated.

    Scored exactly like the live learner's prequential score: only examples with a
    non-empty prefix that are not flagged ``duplicate``; each target ranked among all known
    items by inner product with its session vector, the prefix's own items excluded; a
    target the trainer never saw is a miss. Unlike the live score nothing is learned between
    batches, so this measures the model as it is (a held-out test, not test-then-train).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    # parse_examples normalises ids and prefixes to strings just as learning would.
    scored = [e for e in parse_examples(examples) if e.prefix]
    score = PrequentialScore()
    for start in range(0, len(scored), batch_size):
        chunk = scored[start : start + batch_size]
        ranks = target_ranks(trainer, [e.prefix for e in chunk], [e.item_id for e in chunk], k)
        for rank in ranks:
            score.add(rank)
    return score
