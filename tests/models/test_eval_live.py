"""The live model under the evaluation harness learns through the worker's own round (replay,
the repeat gate, the user history) and ranks with the gate; the live-only tool that chooses
its settings on the validation slice."""

from __future__ import annotations

import pytest

from onevec.models.clickstream.examples import ExampleRecord
from onevec.models.evaluation.baselines import LiveModel
from onevec.models.evaluation.harness import Query, run_prequential
from onevec.models.online.config import ModelConfig
from onevec.models.online.repeat_gate import FEATURES
from onevec.models.online.user_history import Recalled
from onevec.streams.tools.evaluate.live import parse_variant, run_live, split, table, throughput
from tests.models.synthetic_streams import repeat_stream


def _live(repeat: float, gate: bool) -> tuple[LiveModel, float, float]:
    """A gated or plain live model over a SYNTHETIC stream where ``repeat`` of the next items
    are repeats: (model, HR@20, MRR@20)."""
    model = LiveModel(ModelConfig(dim=16, negatives=32, repeat_gate=gate, seed=0), history_epochs=1)
    records = repeat_stream(repeat)
    result = run_prequential([model], records, len(records) // 5, batch_size=64)
    return model, result.hr(model.name), result.mrr(model.name)


def test_the_harness_ranks_with_the_gate_and_the_gate_learns_where_repeats_pay() -> None:
    gated, gated_hr, gated_mrr = _live(1.0, gate=True)
    plain, plain_hr, plain_mrr = _live(1.0, gate=False)
    assert gated_hr > 1.5 * plain_hr and gated_mrr > 1.5 * plain_mrr
    assert gated.trainer.repeat_gate is not None and gated.trainer.repeat_gate.weights[0] > 0
    never, _, _ = _live(0.0, gate=True)
    assert never.trainer.repeat_gate is not None and never.trainer.repeat_gate.weights[0] < 0
    assert gated.learned == plain.learned > 0 and gated.learn_seconds > 0


def test_the_harness_score_never_reads_a_users_future(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every history the harness's ranking reads holds only clicks of batches learned before."""
    model = LiveModel(ModelConfig(dim=16, negatives=32, repeat_gate=True, seed=0), history_epochs=1)
    learned: dict[str, set[str]] = {}
    read: list[int] = []
    fit, learn, score = model.fit_history, model.learn, model.score
    recall = model.trainer.user_history.recall_arrays
    in_score = False

    def remember(records: list[ExampleRecord]) -> None:
        for record in records:
            learned.setdefault(str(record["user_id"]), set()).add(str(record["item_id"]))

    def fit_spy(records: list[ExampleRecord]) -> None:
        fit(records)
        remember(records)

    def learn_spy(records: list[ExampleRecord]) -> None:
        learn(records)
        remember(records)

    def score_spy(queries: list[Query], candidates: list[str]) -> object:
        nonlocal in_score
        in_score = True
        try:
            return score(queries, candidates)
        finally:
            in_score = False

    def recall_spy(user_id: str, session_id: str | None = None) -> Recalled:
        recalled = recall(user_id, session_id)
        if in_score:
            assert set(recalled.items) <= learned.get(user_id, set()), "read a click not learned yet"
            read.append(len(recalled.items))
        return recalled

    monkeypatch.setattr(model, "fit_history", fit_spy)
    monkeypatch.setattr(model, "learn", learn_spy)
    monkeypatch.setattr(model, "score", score_spy)
    monkeypatch.setattr(model.trainer.user_history, "recall_arrays", recall_spy)
    records = repeat_stream(0.5)
    run_prequential([model], records, len(records) // 5, batch_size=64)
    assert sum(read) > 1000  # histories were read, and were not empty


def test_the_history_is_kept_without_the_gate() -> None:
    model, _, _ = _live(0.5, gate=False)
    assert model.trainer.repeat_gate is None
    assert model.trainer.user_history.items("u0")  # what /recommend?user= serves


def test_variants_and_splits() -> None:
    assert parse_variant("base") == ("base", {})
    assert parse_variant("B:replay=1,replay_batch=none,repeat_gate=true") == (
        "B",
        {"replay": "1", "replay_batch": None, "repeat_gate": "true"},
    )
    with pytest.raises(ValueError):
        parse_variant("x:no_such_field=1")
    records = repeat_stream(0.5)
    walked, fitted = split(records, "validation")
    history = int(0.3 * len(records))
    assert walked == records[:history] and fitted == int(0.8 * history)  # never past the history
    assert split(records, "test") == (records, history)


def test_the_tool_runs_each_variant_per_seed_on_a_real_slice() -> None:
    variants = [
        parse_variant("plain:repeat_gate=false"),
        parse_variant("gate:repeat_gate=true,negatives=128"),
    ]
    runs = run_live("movielens-100k", "validation", variants, [0, 1], limit=3_000)
    assert [(r.variant, r.seed) for r in runs] == [("plain", 0), ("plain", 1), ("gate", 0), ("gate", 1)]
    assert all(0 < r.mrr <= r.hr <= 1 and r.scored > 100 and r.examples_per_second > 0 for r in runs)
    assert runs[0].gate == {} and set(runs[2].gate) == {"scale", *FEATURES}
    assert runs[0].hr != runs[2].hr
    assert "| gate | 0." in table(runs)


def test_throughput_times_every_variant_on_the_same_batches() -> None:
    variants = [parse_variant("plain:repeat_gate=false,replay=0"), parse_variant("replayed:replay=2")]
    rates = throughput("movielens-100k", variants, examples=1_500, warmup=2)
    assert set(rates) == {"plain", "replayed"} and all(rate > 0 for rate in rates.values())
