"""The learner's prequential ranking over a catalogue larger than a step's item budget: ranked
slice by slice over the following steps, from a snapshot of the model before its step, with
the same ranks as the shared ranker (:func:`onevec.models.ranking.target_ranks`) computes from
the item vectors of that moment."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from onevec.models.catalog import attribute_tokens, load_attributes
from onevec.models.clickstream.examples import ExampleRecord
from onevec.models.datasets import load_events
from onevec.models.online import round as round_module
from onevec.models.online.config import ModelConfig
from onevec.models.online.item_follows import Followed
from onevec.models.online.prequential import RankingPass
from onevec.models.online.repeat_gate import GateSoftmax, HistoryFeatures, RepeatGate
from onevec.models.online.round import LearningRound, RoundConfig
from onevec.models.online.trainer import LearnedStep, OnlineTrainer
from onevec.models.online.user_history import Had
from onevec.models.pretrain import session_examples
from onevec.models.ranking import target_ranks, tie_priority


@pytest.fixture(scope="module")
def movielens() -> tuple[list[ExampleRecord], dict[str, list[str]]]:
    attributes = load_attributes("movielens-100k")
    tokens = {item: attribute_tokens(attrs) for item, attrs in attributes.items()}
    return session_examples(load_events("movielens-100k").head(6_000)), tokens


def _trainer(tokens: dict[str, list[str]], gate: bool) -> OnlineTrainer:
    trainer = OnlineTrainer(ModelConfig(dim=16, negatives=64, repeat_gate=gate, seed=0))
    for item, bag in tokens.items():
        trainer.set_attributes(item, bag)
    return trainer


@pytest.mark.parametrize(("budget", "gate"), [(100_000, True), (300, False), (300, True)])
def test_ranks_are_the_shared_rankers_on_the_model_before_the_step(
    monkeypatch: pytest.MonkeyPatch,
    movielens: tuple[list[ExampleRecord], dict[str, list[str]]],
    budget: int,
    gate: bool,
) -> None:
    """Every pass's ranks, whether it completes in its own step (budget above the 1,682
    items) or over six steps while training and catalogue changes go on, equal the shared
    ranker's on the item vectors taken just before the pass's step (same exclusions and gate
    term). Real MovieLens-100k clicks and genres; a genre bag replaced every step."""
    examples, tokens = movielens
    trainer = _trainer(tokens, gate)
    learning = LearningRound(trainer, RoundConfig(batch_size=256, item_budget=budget, pass_examples=10**6))
    before: dict[str, np.ndarray] = {}
    learn = trainer.learn_with_sessions

    def learn_spy(
        batch: list[ExampleRecord], on_sessions: Callable[[LearnedStep], None] | None
    ) -> LearnedStep:
        before["matrix"] = trainer.item_encoder.item_matrix().numpy().copy()
        return learn(batch, on_sessions)

    expected: list[tuple[RankingPass, list[int | None]]] = []

    class Checked(RankingPass):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            vocab = trainer.item_encoder.item_vocab
            ranks = target_ranks(
                trainer,
                [[]] * len(self.targets),
                [vocab.key(row) for row in self.targets.tolist()],
                sessions=self.sessions.numpy(),
                matrix=before["matrix"][: self.snapshot.items],
                exclude=(self.skip[0][len(self.targets) :], self.skip[1][len(self.targets) :]),
                boost=self.boost,
            )
            expected.append((self, ranks))

    monkeypatch.setattr(trainer, "learn_with_sessions", learn_spy)
    monkeypatch.setattr(round_module, "RankingPass", Checked)
    genres = sorted({bag[0] for bag in tokens.values() if bag})
    for number, start in enumerate(range(0, len(examples), 256)):
        learning.step(examples[start : start + 256])
        # A catalogue change moves the bag (and so the vector) of an item mid-pass.
        trainer.set_attributes(str(1682 - number * 7), [genres[number % len(genres)]])
    done = [(ranking, ranks) for ranking, ranks in expected if ranking.done]
    assert len(done) >= 3
    for ranking, ranks in done:
        assert ranking.ranks() == ranks
    assert sum(rank is not None for _, ranks in done for rank in ranks) > 50  # hits, not only misses


def _tied_catalogue() -> Iterator[list[ExampleRecord]]:
    """SYNTHETIC: 40 catalogue items all carrying the one attribute ``c=x`` and no clicks, then
    steps of clicks on other items (which move rows of the model, and sampled negatives)."""

    def click(session: str, item: str, prefix: list[str]) -> ExampleRecord:
        return ExampleRecord(
            event_id=f"{session}/{item}",
            session_id=session,
            user_id=f"u-{session}",
            item_id=item,
            event_type="view",
            timestamp=0.0,
            prefix=prefix,
            duplicate=False,
        )

    yield [click(f"s{i}", f"i{(7 * i) % 40}", [f"i{(7 * i + 3) % 40}"]) for i in range(30)]
    for step in range(12):
        yield [
            click(f"t{step}-{i}", f"new-{step}-{i}", [f"i{i % 40}", *([f"new-{step}-{i - 1}"] if i else [])])
            for i in range(30)
        ]


@pytest.mark.parametrize("background", [True, False], ids=["ranking-thread", "inline"])
def test_a_pass_over_many_steps_ranks_ties_by_item_priority(background: bool) -> None:
    """SYNTHETIC: before the first step every catalogue item has the same vector (zero id
    vector, the same attribute), so each next item is tied with all of them and ranks after
    exactly those of higher tie priority (its prefix item excluded). Ranked 7 items a step,
    the pass runs over 6 steps whose clicks move rows it has not read yet (on the ranking
    thread, while it reads), and an item it has not read yet changes attribute in between:
    the ranks must still be those of the first moment."""
    trainer = OnlineTrainer(ModelConfig(dim=8, negatives=16, replay=0, repeat_gate=False, seed=0))
    items = [f"i{j}" for j in range(40)]
    for item in items:
        trainer.set_attributes(item, ["c=x"])
    config = RoundConfig(
        batch_size=30, item_budget=7, pass_examples=30, seed=1, background_ranking=background
    )
    learning = LearningRound(trainer, config)
    steps = _tied_catalogue()
    first = next(steps)
    assert learning.step(first).hits == []  # 40 items at 7 a step: not done yet
    trainer.set_attributes("i30", ["c=y"])
    completed = [len(learning.step(next(steps)).hits) for _ in range(5)]
    assert completed == [0, 0, 0, 0, 30]  # the pass ends in the 6th step (a next one starts)
    priority = dict(zip(items, tie_priority(items).tolist(), strict=True))
    expected = []
    for record in first:
        skipped = {record["item_id"], *record["prefix"]}
        rank = 1 + sum(priority[item] > priority[record["item_id"]] for item in items if item not in skipped)
        expected.append(rank if rank <= 20 else None)
    assert learning.score.scored == 30
    assert learning.score.hits == sum(rank is not None for rank in expected) > 0
    assert learning.score.reciprocal_rank == pytest.approx(sum(1 / rank for rank in expected if rank))


def test_above_the_budget_one_sampled_step_is_ranked_at_a_time(
    movielens: tuple[list[ExampleRecord], dict[str, list[str]]],
) -> None:
    """1,682 items at 300 a step: a pass takes about six steps and ranks ``pass_examples`` of
    its step's examples; no other step is scored meanwhile (real MovieLens-100k clicks)."""
    examples, tokens = movielens
    learning = LearningRound(_trainer(tokens, gate=True), RoundConfig(item_budget=300, pass_examples=16))
    scored = [
        len(learning.step(examples[start : start + 256]).hits) for start in range(0, len(examples), 256)
    ]
    # The score is labelled a sample; with a budget above the catalogue it would not be.
    assert learning.sampling
    assert not LearningRound(_trainer(tokens, gate=True), RoundConfig(item_budget=2_000)).sampling
    completed = [number for number, count in enumerate(scored) if count]
    assert len(completed) >= 3 and all(scored[number] == 16 for number in completed)
    assert all(later - earlier in (5, 6) for earlier, later in itertools.pairwise(completed))
    assert learning.score.scored == 16 * len(completed)


@pytest.mark.parametrize("budget", [600, 100_000])
def test_the_ranking_thread_ranks_as_the_inline_pass_does(
    movielens: tuple[list[ExampleRecord], dict[str, list[str]]], budget: int
) -> None:
    """Passes read on the ranking thread while steps move the rows they read: every rank, the
    gate it teaches and so the model are those of the same passes read inline (real
    MovieLens-100k clicks, 1,682 items at 600 a step and 64 examples a pass, or the whole
    catalogue for every example in its own step)."""
    examples, tokens = movielens
    runs = []
    for background in (True, False):
        trainer = _trainer(tokens, gate=True)
        config = RoundConfig(item_budget=budget, pass_examples=64, background_ranking=background)
        learning = LearningRound(trainer, config)
        hits = [learning.step(examples[start : start + 256]).hits for start in range(0, len(examples), 256)]
        gate = trainer.repeat_gate
        assert gate is not None
        table = trainer.item_encoder.tables["item"].detach().clone()
        runs.append((hits, learning.score.reciprocal_rank, (*gate.weights, gate.scale), table))
    (hits, rr, gate, table), (inline_hits, inline_rr, inline_gate, inline_table) = runs
    assert sum(map(len, hits)) >= 64 * 4 and any(map(any, hits))
    assert hits == inline_hits and rr == inline_rr
    assert gate == inline_gate
    assert np.array_equal(table.numpy(), inline_table.numpy())


def test_a_failed_step_or_ranking_leaves_no_snapshot_behind(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    movielens: tuple[list[ExampleRecord], dict[str, list[str]]],
) -> None:
    """A snapshot keeps the old value of every row a step moves until it is released: one
    left behind by a failed step would grow with every later step. A step that raises
    releases its own; a ranking read that raises (on the ranking thread) drops its pass with
    an error logged, and the next steps are scored again (real MovieLens-100k clicks)."""
    examples, tokens = movielens
    trainer = _trainer(tokens, gate=True)
    learning = LearningRound(trainer, RoundConfig(item_budget=100_000))  # passes end in their step
    snapshots = trainer.item_encoder._snapshots
    learning.step(examples[:256])
    assert snapshots == []
    learn = trainer.learn_with_sessions

    def failing(batch: list[ExampleRecord], on_sessions: Callable[[LearnedStep], None] | None) -> LearnedStep:
        raise RuntimeError("the step failed")

    monkeypatch.setattr(trainer, "learn_with_sessions", failing)
    with pytest.raises(RuntimeError, match="the step failed"):
        learning.step(examples[256:512])
    assert snapshots == [] and learning._pending is None
    monkeypatch.setattr(trainer, "learn_with_sessions", learn)

    advance = RankingPass.advance

    def failing_read(self: RankingPass, items: int) -> int:
        raise ValueError("a slice failed")

    monkeypatch.setattr(RankingPass, "advance", failing_read)
    learning.step(examples[512:768])  # takes a pass; its first read fails
    assert "a prequential ranking pass failed" in caplog.text and learning.passes_dropped == 1
    assert snapshots == [] and learning._pending is None
    monkeypatch.setattr(RankingPass, "advance", advance)
    scored = learning.score.scored
    for start in range(768, 768 + 256 * 8, 256):
        learning.step(examples[start : start + 256])
    assert learning.score.scored > scored  # scoring goes on


def _dense_gate_step(
    gate: RepeatGate, scores: np.ndarray, targets: np.ndarray, features: HistoryFeatures, excluded: tuple
) -> np.ndarray:
    """Oracle: the gradient of the softmax cross-entropy over the whole (q, n) matrix in float64
    (rows with target -1 skipped, excluded pairs other than the target at -inf)."""
    known = np.flatnonzero(targets >= 0)
    logits = gate.scale * scores.astype(np.float64)
    logits[features.rows, features.columns] += gate.bonus(features)
    for row, column in zip(*excluded, strict=True):
        if column != targets[row]:
            logits[row, column] = -np.inf
    probability = np.exp(logits - logits.max(axis=1, keepdims=True))
    probability /= probability.sum(axis=1, keepdims=True)
    width = features.values.shape[1]
    gradient = np.zeros(width + 1)
    for row in known.tolist():
        own = features.rows == row
        gradient[:width] += (probability[row, features.columns[own]][:, None] * features.values[own]).sum(0)
        gradient[:width] -= features.values[own & (features.columns == targets[row])].sum(0)
        gradient[width] += (probability[row] * np.where(probability[row] > 0, scores[row], 0)).sum()
        gradient[width] -= scores[row, targets[row]]
    return gradient / len(known)


def test_the_gate_learns_the_same_from_slices_as_from_the_whole_matrix() -> None:
    """SYNTHETIC: 6 queries over 50 candidates, own items, followers (some of them own items
    too), exclusions, a skipped query."""
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(6, 50)).astype(np.float32)
    targets = np.array([3, -1, 10, 49, 0, 22])
    histories = [
        {f"c{j}": Had(float(rng.integers(1, 4)), int(rng.integers(0, 3))) for j in rng.choice(50, 5)}
        for _ in range(6)
    ]
    histories[2]["c10"] = Had(2.0, 1)  # a next item the user had before
    followed = [
        Followed.of([f"c{j}" for j in rng.choice(50, 6, replace=False)], rng.uniform(size=(6, 2)))
        for _ in range(6)
    ]
    followed[3] = Followed.of(["c49", *followed[3].items[1:]], followed[3].values)  # the next item
    features = HistoryFeatures.of(histories, lambda item: int(item[1:]), followed)
    assert len(set(zip(features.rows.tolist(), features.columns.tolist(), strict=True))) == len(features.rows)
    excluded = (np.array([0, 0, 2, 3, 4]), np.array([7, 3, 11, 20, 0]))  # (0, 3), (4, 0): targets
    base = RepeatGate()
    base.weights, base.scale = np.array([0.5, -0.2, 0.1, 0.7, -0.3]), 0.8
    expected = _dense_gate_step(base, scores, targets, features, excluded)
    for bounds in ([0, 50], [0, 7, 20, 21, 50]):
        gate = RepeatGate()
        gate.weights, gate.scale = base.weights.copy(), base.scale
        softmax = GateSoftmax(gate, targets, features, excluded)
        for start, stop in itertools.pairwise(bounds):
            softmax.add(start, scores[:, start:stop])
        gate.learn_softmax(softmax)
        # After Adagrad's first step its sums of squares are the gradient's squares, and the
        # step has the gradient's sign (the scale moves down by less when clipped at 1e-3).
        np.testing.assert_allclose(gate._squared - 1e-8, expected**2, rtol=1e-4, atol=1e-10)
        moved = np.append(base.weights - gate.weights, base.scale - gate.scale)
        assert np.array_equal(np.sign(moved), np.sign(expected))
