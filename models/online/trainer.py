"""Online trainer: both encoders, one optimiser, a replay buffer, the repeat gate and the user
history it reads, and checkpoints that record input offsets."""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from onevec.models.clickstream.examples import ExampleRecord
from onevec.models.online.base import Example, parse_examples
from onevec.models.online.config import ModelConfig
from onevec.models.online.item_encoder import Batch, ItemEncoder
from onevec.models.online.item_follows import ItemFollows
from onevec.models.online.repeat_gate import HistoryFeatures, RepeatGate
from onevec.models.online.session_encoder import SessionEncoder
from onevec.models.online.user_history import UserHistory
from onevec.models.online.vocab import Vocabulary

__all__ = ["LearnedStep", "OnlineTrainer"]

_CHECKPOINT_FORMAT = 1


@dataclass(frozen=True, slots=True)
class LearnedStep:
    """One training step's loss and, per non-duplicate record, what the model before the step
    made of it: its session vector and its prefix as item rows (right-padded)."""

    loss: float
    sessions: np.ndarray  # (n, dim)
    prefix: np.ndarray  # (n, L)
    lengths: np.ndarray  # (n,)


class OnlineTrainer:
    """Trains the item and session encoders together, one micro-batch at a time.

    The loss of a step is the session encoder's next-item loss plus ``item_loss_weight``
    times the item objective (sgns or bpr); one backward pass and one step of the single
    optimiser (``item_encoder.optimizer``, which grows with the tables) per micro-batch, so a
    row touched by both losses gets one Adam update from the summed gradient.

    With ``replay`` > 0 each micro-batch is followed by that many steps on examples drawn
    uniformly from a buffer of the ``replay_size`` most recent ones: an example is learned more
    than once, as offline epochs would. Replayed clicks were counted when they arrived, so they
    do not enter the counts behind negative sampling and the log-Q correction again.

    The trainer also holds each user's history (``user_history``), gate or not, so a user's
    lookup (``/recommend?user=``) has the items they had; with ``repeat_gate`` it holds the
    gate that reads it (``repeat_gate``; None otherwise). Both are part of the model's state and
    its checkpoint, while the prequential round (``round.LearningRound``) drives them, since
    the gate learns from how the batch was ranked.
    """

    def __init__(self, config: ModelConfig | None = None) -> None:
        self.config = config or ModelConfig()
        self.item_encoder = ItemEncoder(self.config)
        self.session_encoder = SessionEncoder(self.item_encoder)
        self.steps = 0  # micro-batches learned (a replay step is part of its micro-batch's)
        self.replay_buffer: deque[Example] = deque(maxlen=self.config.replay_size)
        self._replay_generator = torch.Generator().manual_seed(self.config.seed)
        self.repeat_gate = RepeatGate(lr=self.config.gate_lr) if self.config.repeat_gate else None
        self.user_history = UserHistory(
            self.config.history_decay, self.config.history_users, self.config.history_items
        )
        self.item_follows = (
            ItemFollows(max_entries=self.config.follows_entries, max_next=self.config.follows_next)
            if self.config.follows
            else None
        )

    def observe(self, records: Sequence[ExampleRecord]) -> None:
        """Take in clicks the gate's features read: the users' histories and what followed
        what. Called after the records were scored, so no score reads its own future."""
        self.user_history.observe_records(records)
        if self.item_follows is not None:
            self.item_follows.observe_records(records)

    def gate_features(
        self,
        queries: Sequence[tuple[str, str, Sequence[str]]],
        column: Callable[[str], int | None] | Vocabulary,
    ) -> HistoryFeatures:
        """The repeat gate's features of (user id, session id, session items) queries over the
        candidates ``column`` locates (a vocabulary: its rows are the columns), from what was
        observed so far."""
        history, follows = self.user_history, self.item_follows
        recalled = [history.recall_arrays(user, session) for user, session, _ in queries]
        lookup = column.lookup if isinstance(column, Vocabulary) else column
        own = HistoryFeatures.of(recalled, lookup)
        if follows is None:
            return own
        many = follows.followed_many([items for _, _, items in queries])
        if isinstance(column, Vocabulary):
            columns = follows.columns_in(many, column)
        else:
            located = map(column, follows.names(many.ids))
            columns = np.array([-1 if c is None else c for c in located], dtype=np.int64)
        return own.merged(HistoryFeatures.following(many.rows, columns, many.values))

    def set_attributes(self, item_id: str, tokens: Sequence[str]) -> None:
        self.item_encoder.set_attributes(item_id, tokens)

    def learn(self, batch: Sequence[ExampleRecord]) -> float:
        """One step on a micro-batch of example records (duplicates skipped); returns the loss."""
        return self.learn_with_sessions(batch).loss

    def learn_with_sessions(
        self, batch: Sequence[ExampleRecord], on_sessions: Callable[[LearnedStep], None] | None = None
    ) -> LearnedStep:
        """One step; also returns what the model *before* the step made of each non-duplicate
        record (in record order), for prequential scoring. ``on_sessions`` gets the same as
        soon as the step has worked it out, before the step moves any row: a ranking can
        start reading beside the rest of the step."""
        examples = parse_examples(batch)
        if not examples:
            empty = np.zeros((0, 1), dtype=np.int64)
            return LearnedStep(0.0, np.zeros((0, self.config.dim), dtype=np.float32), empty, empty[:, 0])
        prepared = self.item_encoder.prepare(examples)
        loss, sessions = self._loss(prepared)
        learned = LearnedStep(
            loss.item(), sessions.numpy(), prepared.prefix.numpy(), prepared.lengths.numpy()
        )
        if on_sessions is not None:
            on_sessions(learned)
        self._update(loss)
        if self.config.replay:
            self._replay(examples)
        self.steps += 1
        return learned

    def _loss(self, prepared: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's loss and the (detached) session vectors the model before the step
        computed."""
        vectors = self.item_encoder.batch_vectors(prepared)  # one lookup for both losses
        loss, sessions = self.session_encoder.loss_and_sessions(prepared, vectors)
        if self.config.item_loss_weight:
            loss = loss + self.config.item_loss_weight * self.item_encoder.loss(prepared, vectors)
        return loss, sessions

    def _update(self, loss: torch.Tensor) -> None:
        """One backward pass and optimiser step."""
        loss.backward()
        self.item_encoder.step(self.session_encoder.named_parameters())

    def _replay(self, examples: Sequence[Example]) -> None:
        """Buffer ``examples`` (their prefixes cut to what a step reads), then take the replay
        steps on uniform draws from the buffer."""
        keep = self.config.max_prefix
        self.replay_buffer.extend(
            e if len(e.prefix) <= keep else Example(e.user_id, e.item_id, e.prefix[-keep:]) for e in examples
        )
        size = self.config.replay_batch or len(examples)
        for _ in range(self.config.replay):
            drawn = torch.randint(len(self.replay_buffer), (size,), generator=self._replay_generator).tolist()
            self._update(
                self._loss(self.item_encoder.prepare([self.replay_buffer[i] for i in drawn], count=False))[0]
            )

    def prefix_pairs(
        self, step: LearnedStep, positions: Sequence[int], prefixes: Sequence[Sequence[str]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """The item rows of these records' whole prefixes as (index into ``positions``, item row)
        pairs: read off the step's padded prefix matrix in one go, except for prefixes longer than
        the window the step read (looked up)."""
        chosen = np.asarray(positions, dtype=np.int64)
        lengths = step.lengths[chosen]
        where, column = np.nonzero(np.arange(step.prefix.shape[1])[None, :] < lengths[:, None])
        which, rows = [where], [step.prefix[chosen[where], column]]
        for index, prefix in enumerate(prefixes):
            if len(prefix) > self.config.max_prefix:
                known = np.asarray(self.item_encoder.known_rows(prefix), dtype=np.int64)
                which.append(np.full(len(known), index, dtype=np.int64))
                rows.append(known)
        return np.concatenate(which), np.concatenate(rows).astype(np.int64, copy=False)

    def encode_items(self, item_ids: Sequence[str]) -> np.ndarray:
        return self.item_encoder.encode_items(item_ids)

    def encode_session(self, prefix: Sequence[str]) -> np.ndarray:
        return self.session_encoder.encode_session(prefix)

    def encode_sessions(self, prefixes: Sequence[Sequence[str]]) -> np.ndarray:
        return self.session_encoder.encode_sessions(prefixes)

    def recommend(
        self, prefix: Sequence[str], k: int = 20, exclude: Collection[str] = ()
    ) -> list[tuple[str, float]]:
        return self.session_encoder.recommend(prefix, k, exclude)

    def changed_items(self) -> set[str]:
        return self.item_encoder.changed_items()

    def state_dict(self) -> dict[str, Any]:
        state = {
            "config": self.config.model_dump(),  # for inspection; the loader's config governs
            "steps": self.steps,
            "session": self.session_encoder.state_dict(),
            "replay": self._replay_state(),
            "user_history": self.user_history.state_dict(),
        }
        if self.repeat_gate is not None:
            state["repeat_gate"] = self.repeat_gate.state_dict()
        if self.item_follows is not None:
            state["item_follows"] = self.item_follows.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state; one written before the replay buffer, the gate, the history or the
        followers' table existed (or with the gate off) loads with an empty buffer, a fresh
        gate, an empty history and an empty table."""
        self.session_encoder.load_state_dict(state["session"])
        self.steps = int(state["steps"])
        self.replay_buffer.clear()
        if "replay" in state:
            self._load_replay_state(state["replay"])
        if "user_history" in state:
            self.user_history.load_state_dict(state["user_history"])
        if self.repeat_gate is not None and "repeat_gate" in state:
            self.repeat_gate.load_state_dict(state["repeat_gate"])
        if self.item_follows is not None and "item_follows" in state:
            self.item_follows.load_state_dict(state["item_follows"])

    def _replay_state(self) -> dict[str, Any]:
        """The buffer as plain lists (a checkpoint is loaded ``weights_only``) and the settings
        it was kept with (for inspection: the loader's config governs)."""
        buffer = self.replay_buffer
        return {
            "settings": {
                "replay": self.config.replay,
                "size": buffer.maxlen,
                "batch": self.config.replay_batch,
            },
            "users": [e.user_id for e in buffer],
            "items": [e.item_id for e in buffer],
            "prefix_lengths": torch.tensor([len(e.prefix) for e in buffer], dtype=torch.int64),
            "prefixes": [item for e in buffer for item in e.prefix],
            "generator": self._replay_generator.get_state(),
        }

    def _load_replay_state(self, state: dict[str, Any]) -> None:
        lengths = state["prefix_lengths"].tolist()
        if not len(state["users"]) == len(state["items"]) == len(lengths) or sum(lengths) != len(
            state["prefixes"]
        ):
            raise ValueError("replay state: users, items and prefixes differ in length")
        flat = iter(state["prefixes"])
        prefixes = (tuple(itertools.islice(flat, n)) for n in lengths)
        # A smaller replay_size now keeps the newest (the deque drops from the left).
        self.replay_buffer.extend(map(Example, state["users"], state["items"], prefixes))
        self._replay_generator.set_state(state["generator"])

    def save_checkpoint(self, path: str | os.PathLike[str], offsets: Mapping[str, int]) -> None:
        """Write weights, optimiser state, vocabularies, counts, step count and the input
        offsets they cover, atomically: a crash leaves the previous checkpoint intact."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "format": _CHECKPOINT_FORMAT,
            "offsets": {str(k): int(v) for k, v in offsets.items()},
            "state": self.state_dict(),
        }
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as file:
            torch.save(payload, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)

    def load_checkpoint(self, path: str | os.PathLike[str]) -> dict[str, int]:
        """Restore a checkpoint; returns the input offsets it covers (resume from there)."""
        # weights_only: a checkpoint is data, never code to unpickle.
        payload = torch.load(path, weights_only=True)
        if payload["format"] != _CHECKPOINT_FORMAT:
            raise ValueError(f"unknown checkpoint format {payload['format']}")
        self.load_state_dict(payload["state"])
        return dict(payload["offsets"])
