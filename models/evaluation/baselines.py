"""The recommenders compared under the prequential protocol (see ``harness``).

* :class:`LiveModel`: onevec's online trainer (item + session encoders), pre-trained on the
  history, then learning every micro-batch after scoring it through the worker's own
  ``LearningRound`` (so replay, the repeat gate and the user history behave as in the worker);
  with the repeat gate it ranks with the gate over the user's history as it was before the
  batch. With ``frozen=True`` the same model never updated after pre-training (what online
  learning adds).
* :class:`FrozenSkipGram`: Prod2Vec, a skip-gram item table trained once on the history and
  never updated; a session is the mean of its newest ``window`` items.
* :class:`RecentPopularity`: the most clicked items among the last ``window`` events.
* :class:`ItemTransitions`: counts of "last item -> next item", ties by popularity.
* :class:`RandomScores`: a fixed random score per item (the floor every model must beat).

Session neighbours (SKNN, V-SKNN) are in :mod:`~onevec.models.evaluation.neighbours`, the user's
own history (P-Pop, TIFU-KNN) in :mod:`~onevec.models.evaluation.personal`, GRU4Rec in
:mod:`~onevec.models.evaluation.gru4rec`; :mod:`~onevec.models.evaluation.lineup` tunes them all.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence

import numpy as np

from onevec.models.clickstream.examples import ExampleRecord
from onevec.models.evaluation.harness import Query
from onevec.models.evaluation.item_columns import Popularity, learnable
from onevec.models.online.config import ModelConfig
from onevec.models.online.item_encoder import ItemEncoder
from onevec.models.online.round import LearningRound, RoundConfig
from onevec.models.online.trainer import OnlineTrainer
from onevec.models.pretrain import pretrain

__all__ = [
    "FrozenSkipGram",
    "ItemTransitions",
    "LiveModel",
    "RandomScores",
    "RecentPopularity",
]


class LiveModel:
    """onevec's online trainer; ``attributes`` maps item -> side-information tokens.

    Each stream batch is learned by a ``LearningRound`` step, the worker learner's own
    test-then-train (its prequential score is the worker's metric; the harness ranks
    separately, by the evaluation's rule). ``learn_seconds`` / ``learned`` time those steps:
    the learner's examples/s."""

    def __init__(
        self,
        config: ModelConfig,
        attributes: Mapping[str, Sequence[str]] | None = None,
        history_epochs: int = 2,
        frozen: bool = False,
        name: str | None = None,
    ) -> None:
        self.trainer = OnlineTrainer(config)
        for item_id, tokens in (attributes or {}).items():
            self.trainer.set_attributes(item_id, tokens)
        self.history_epochs = history_epochs
        self.frozen = frozen
        self.name = name or ("session model, frozen" if frozen else "onevec live model")
        self.round = LearningRound(self.trainer, RoundConfig(seed=config.seed))
        self.learn_seconds = 0.0
        self.learned = 0
        self._columns: dict[str, int] = {}  # candidate -> column (the harness only appends)

    def fit_history(self, records: list[ExampleRecord]) -> None:
        pretrain(self.trainer, records, self.history_epochs)
        self.trainer.observe(records)

    def score(self, queries: Sequence[Query], candidates: Sequence[str]) -> np.ndarray:
        sessions = self.trainer.encode_sessions([q.prefix for q in queries])
        scores = sessions @ self.trainer.encode_items(candidates).T
        gate = self.trainer.repeat_gate
        if gate is None:
            return scores
        for column in range(len(self._columns), len(candidates)):
            self._columns[candidates[column]] = column
        features = self.trainer.gate_features(
            [(q.user_id, q.session_id, q.prefix) for q in queries], self._columns.get
        )
        return gate.combine_batch(scores, features)

    def learn(self, records: list[ExampleRecord]) -> None:
        if not self.frozen:
            started = time.perf_counter()
            self.round.step(records)
            self.learn_seconds += time.perf_counter() - started
            self.learned += len(records)


class FrozenSkipGram:
    """Prod2Vec: skip-gram with negative sampling on the history only, then frozen."""

    def __init__(self, config: ModelConfig, epochs: int = 3, name: str = "skip-gram, frozen") -> None:
        self.encoder = ItemEncoder(config)
        self.epochs = epochs
        self.name = name
        self._rows: dict[str, int] = {}
        self._matrix = np.zeros((0, config.dim), dtype=np.float32)

    def fit_history(self, records: list[ExampleRecord], batch_size: int = 256) -> None:
        for _ in range(self.epochs):
            for start in range(0, len(records), batch_size):
                self.encoder.learn(records[start : start + batch_size])
        ids = self.encoder.item_ids()
        self._rows = {item: row for row, item in enumerate(ids)}
        self._matrix = self.encoder.item_matrix().numpy().copy()

    def _vectors(self, items: Sequence[str]) -> np.ndarray:
        rows = [self._rows.get(item) for item in items]
        out = np.zeros((len(items), self._matrix.shape[1]), dtype=np.float32)
        known = [(i, row) for i, row in enumerate(rows) if row is not None]
        if known:
            at, source = zip(*known, strict=True)
            out[list(at)] = self._matrix[list(source)]
        return out

    def score(self, queries: Sequence[Query], candidates: Sequence[str]) -> np.ndarray:
        window = self.encoder.config.window
        sessions = np.zeros((len(queries), self._matrix.shape[1]), dtype=np.float32)
        for i, query in enumerate(queries):
            rows = [self._rows[item] for item in query.prefix if item in self._rows][-window:]
            if rows:
                sessions[i] = self._matrix[rows].mean(0)
        return sessions @ self._vectors(candidates).T

    def learn(self, records: list[ExampleRecord]) -> None:
        """Never updated after the history: the point of this baseline."""


class RecentPopularity:
    """Clicks among the last ``window`` events."""

    def __init__(self, window: int = 5000, name: str = "recent popularity") -> None:
        self.recent: deque[str] = deque()
        self.counts: Counter[str] = Counter()
        self.window = window
        self.name = name

    def fit_history(self, records: list[ExampleRecord]) -> None:
        self.learn(records)

    def learn(self, records: list[ExampleRecord]) -> None:
        for record in learnable(records):
            item = str(record["item_id"])
            self.recent.append(item)
            self.counts[item] += 1
            if len(self.recent) > self.window:
                old = self.recent.popleft()
                self.counts[old] -= 1
        self.counts = +self.counts  # drop zero counts so the counter stays small

    def score(self, queries: Sequence[Query], candidates: Sequence[str]) -> np.ndarray:
        row = np.array([self.counts.get(item, 0) for item in candidates], dtype=np.float64)
        return np.broadcast_to(row, (len(queries), len(candidates)))


class ItemTransitions:
    """How often the next item followed the session's last item; ties by all-time popularity."""

    def __init__(self, name: str = "item-to-item transitions") -> None:
        self.transitions: dict[str, Counter[str]] = {}
        self.popularity = Popularity()
        self.name = name

    def fit_history(self, records: list[ExampleRecord]) -> None:
        self.learn(records)

    def learn(self, records: list[ExampleRecord]) -> None:
        self.popularity.learn(records)
        for record in learnable(records):
            if record.get("prefix"):
                self.transitions.setdefault(str(record["prefix"][-1]), Counter())[str(record["item_id"])] += 1

    def score(self, queries: Sequence[Query], candidates: Sequence[str]) -> np.ndarray:
        column = {item: i for i, item in enumerate(candidates)}
        # Popularity below one transition: it only orders items with equal transition counts.
        scores = np.tile(self.popularity.row(candidates), (len(queries), 1))
        for row, query in enumerate(queries):
            for item, count in self.transitions.get(query.prefix[-1], {}).items():
                if item in column:
                    scores[row, column[item]] += count
        return scores


class RandomScores:
    """A fixed random score per item: the chance level under the same protocol."""

    def __init__(self, seed: int = 0, name: str = "random") -> None:
        self.rng = np.random.default_rng(seed)
        self.values: dict[str, float] = {}
        self.name = name

    def fit_history(self, records: list[ExampleRecord]) -> None:
        """Nothing to learn."""

    def learn(self, records: list[ExampleRecord]) -> None:
        """Nothing to learn."""

    def score(self, queries: Sequence[Query], candidates: Sequence[str]) -> np.ndarray:
        for item in candidates:
            if item not in self.values:
                self.values[item] = float(self.rng.random())
        row = np.array([self.values[item] for item in candidates])
        return np.broadcast_to(row, (len(queries), len(candidates)))
