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

from collections.abc import Callable, Sequence

import pandas as pd

from onevec.models.clickstream.events import Event, EventType
from onevec.models.clickstream.examples import ExampleRecord
from onevec.models.clickstream.sessions import SessionBook, SessionWindow
from onevec.models.online.base import parse_examples
from onevec.models.online.trainer import OnlineTrainer
from onevec.models.ranking import TOP_K, PrequentialScore, target_ranks

__all__ = ["evaluate_next_item", "pretrain", "session_examples"]

_STREAM_WINDOW = SessionWindow()  # the stream's defaults (Settings.session_gap_seconds too)
# Examples ranked per target_ranks call: it builds a (batch x known items) float32 score
# matrix, so this bounds evaluation memory on large catalogues (256 x 1M items = 1 GB).
EVAL_BATCH = 256

_REQUIRED = ("user_id", "session_id", "item_id", "event_type", "timestamp")
_EVENT_TYPES = {t.value: t for t in EventType}
# Every field given, and the set the frame fills: model_construct then computes no default.
_FIELDS = set(_REQUIRED)


def session_examples(
    events: pd.DataFrame,
    max_items: int = _STREAM_WINDOW.max_items,
    *,
    gap_seconds: float = _STREAM_WINDOW.gap,
) -> list[ExampleRecord]:
    """The example records the stream emits for ``events``, in the same (arrival) order.

    ``events`` is a normalised events frame in timestamp order, as ``load_events`` returns
    it. Its rows go through the stream's own session window (a
    :class:`~onevec.models.clickstream.sessions.SessionBook` over a plain dict, one partition,
    the row number as input offset), so the records are the ones the stream emits: each row
    becomes one record with the keys of ``Example.to_dict()``: ``event_id`` (the stream's
    content fingerprint of item, event type and time), ``session_id``, ``user_id``,
    ``item_id``, ``event_type``, ``timestamp``, ``prefix`` (the session's previous items,
    oldest first, the newest ``max_items`` of them) and ``duplicate``. In particular:

    * an event more than ``gap_seconds`` after its session's last event starts that session
      afresh (empty prefix, same id); this never happens with sessions ``load_events``
      derived with the same gap, only with explicit session ids spanning long pauses;
    * an exact repeat of one of the session's newest ``max_items`` events (same item,
      event type and timestamp) gets ``duplicate=True`` and its original's prefix, and does
      not extend the session; ``OnlineTrainer.learn`` skips it.

    No session is evicted to bound memory (the frame is in memory already): a worker evicts
    the longest idle session of a partition only beyond ``SessionWindow.max_open``.

    Raises ``ValueError`` when a required column is missing or an event type is one the
    stream rejects (it would dead-letter those events, so no example could match it).
    """
    if max_items < 1:
        raise ValueError(f"max_items must be at least 1, got {max_items}")
    missing = [column for column in _REQUIRED if column not in events.columns]
    if missing:
        raise ValueError(f"events frame lacks column(s): {', '.join(missing)}")
    unknown = set(events["event_type"].astype(str).unique()) - set(_EVENT_TYPES)
    if unknown:
        raise ValueError(
            f"event type(s) the stream rejects: {', '.join(sorted(unknown))}"
            f" (allowed: {', '.join(sorted(_EVENT_TYPES))})"
        )
    window = SessionWindow(gap=gap_seconds, max_items=max_items, max_open=max(len(events), 1))
    book = SessionBook({}, window)
    # Plain column lists, not iterrows/itertuples; the rows are normalised already, so the
    # events are constructed without validation.
    rows = zip(
        events["session_id"].astype(str).tolist(),
        events["user_id"].astype(str).tolist(),
        events["item_id"].astype(str).tolist(),
        map(_EVENT_TYPES.__getitem__, events["event_type"].astype(str).tolist()),
        events["timestamp"].astype("float64").tolist(),
        strict=True,
    )
    return [
        book.process(
            Event.model_construct(
                _FIELDS,
                session_id=session_id,
                user_id=user_id,
                item_id=item_id,
                event_type=kind,
                timestamp=timestamp,
                price=None,
                quantity=None,
            ),
            0,
            offset,
        )[0].to_dict()
        for offset, (session_id, user_id, item_id, kind, timestamp) in enumerate(rows)
    ]


def pretrain(
    trainer: OnlineTrainer,
    examples: list[ExampleRecord],
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
    examples: Sequence[ExampleRecord],
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
