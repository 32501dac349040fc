"""Worker faults on a real broker with real worker processes, reconciled from the input file to
the examples topic, the dead-letter topic, Qdrant (local mode on disk) and the checkpoints.

tests/streams/test_restart.py already checks that the session table comes back after kill -9
(prefixes continue across the restart); these tests follow the same replay further, into the
learner and Qdrant, and add a consumer-group rebalance with two workers.
"""

from __future__ import annotations

from onevec.streams.tools.reconcile import locate_inputs
from onevec.streams.worker import metric_total
from tests.reliability.reconcile import (
    MALFORMED,
    checkpoint_offsets,
    movielens_slice,
    produce,
    reconcile_qdrant,
    reconcile_topics,
    uncovered_examples,
    wait_for,
    wait_metric,
)

LEARNER = {"checkpoint_interval_seconds": 1.0, "upsert_interval_ms": 200.0}


def test_kill_9_mid_replay_then_restart(settings, start_worker, tmp_path) -> None:
    events = movielens_slice(settings, 30_000, 33_000)
    half = len(events) // 2
    malformed = [raw for raw, _ in MALFORMED]
    first = start_worker(**LEARNER)
    produce(settings, events.iloc[:half], malformed[:4])
    # Kill once the first worker has learned part of the stream and checkpointed it.
    wait_metric(first, "onevec_examples_learned_total", half // 3)
    wait_metric(first, "onevec_checkpoints_written_total", 1)
    before = first.metrics()
    first.kill()
    steps_in_checkpoint = checkpoint_offsets([settings.data_dir])
    produce(settings, events.iloc[half:], malformed[4:])

    second = start_worker(**LEARNER)
    after_start = second.metrics()
    result = reconcile_topics(settings, events, MALFORMED)
    # No learned state lost: the learner's periodic checkpoints come to cover every example
    # (those the killed worker learned but never checkpointed are learned again from the gap).
    wait_for(lambda: uncovered_examples(settings, [settings.data_dir]) == 0, "checkpoint covers all", 180)
    wait_for(lambda: second.metrics().get("onevec_upsert_buffer_pending_points", 1) == 0, "sink drained")
    examples_total = result.examples
    learned_second = metric_total(second.metrics(), "onevec_examples_learned_total")
    second.stop()
    # The click counts after a learner restart: tests/reliability/test_chaos_soak.py.
    reconcile_qdrant(result, events, [settings.qdrant_path], settings.model_dim, clicks=False)
    uncovered = uncovered_examples(settings, [settings.data_dir])
    result.notes.update(
        {
            "accepted before kill": int(metric_total(before, "onevec_events_accepted_total")),
            "learned before kill": int(metric_total(before, "onevec_examples_learned_total")),
            "checkpoint partitions at kill": len(steps_in_checkpoint),
            "restores": int(metric_total(after_start, "onevec_checkpoint_restores_total")),
            "learned after restart": int(learned_second),
            "examples past last checkpoint": uncovered,
        }
    )
    print("\n" + result.line("kill -9"))
    if result.lost:
        print(f"lost clicks (partition:offset): {locate_inputs(settings, result.lost_keys)}")
    result.assert_nothing_lost()
    assert examples_total >= len(events)
    assert metric_total(after_start, "onevec_checkpoint_restores_total") == 1, "checkpoint not restored"
    assert uncovered == 0, f"{uncovered} examples not covered by the last checkpoint"


def test_two_workers_rebalance_mid_stream(settings, start_worker, tmp_path) -> None:
    """Worker B joins the group mid-stream (rebalance), later A leaves gracefully (another).

    Each worker runs its own learner, checkpoint and Qdrant (local mode cannot be shared across
    processes), so Qdrant is reconciled on the union of both. Examples a worker had queued
    for its learner when its partitions moved are reported, not asserted: the worker that
    takes a partition over starts learning at the group's committed offset (see
    docs/operations.md, "Scaling").
    """
    events = movielens_slice(settings, 40_000, 43_000)
    third = len(events) // 3
    dirs = {name: tmp_path / name for name in ("a", "b")}
    a = start_worker(**LEARNER, data_dir=dirs["a"] / "data", qdrant_path=dirs["a"] / "qdrant")
    produce(settings, events.iloc[:third], [raw for raw, _ in MALFORMED[:3]])
    wait_metric(a, "onevec_events_accepted_total", third // 2)
    b = start_worker(**LEARNER, data_dir=dirs["b"] / "data", qdrant_path=dirs["b"] / "qdrant")
    partitions_b = metric_total(b.metrics(), "onevec_worker_partitions")
    produce(settings, events.iloc[third : 2 * third], [raw for raw, _ in MALFORMED[3:6]])
    wait_metric(b, "onevec_events_accepted_total", 1)
    accepted_a = metric_total(a.metrics(), "onevec_events_accepted_total")
    learned_a = metric_total(a.metrics(), "onevec_examples_learned_total")
    a.stop()  # graceful leave: B takes over every partition
    produce(settings, events.iloc[2 * third :], [raw for raw, _ in MALFORMED[6:]])
    result = reconcile_topics(settings, events, MALFORMED)
    wait_for(
        lambda: metric_total(b.metrics(), "onevec_worker_partitions") == settings.partitions, "B owns all"
    )
    wait_for(lambda: uncovered_examples(settings, [dirs["b"] / "data"]) == 0, "B's checkpoint", 180)
    wait_for(lambda: b.metrics().get("onevec_upsert_buffer_pending_points", 1) == 0, "sink drained")
    accepted_b = metric_total(b.metrics(), "onevec_events_accepted_total")
    learned_b = metric_total(b.metrics(), "onevec_examples_learned_total")
    b.stop()
    # Two learners, each counting the clicks it learned: click counts are not comparable.
    qdrants = [dirs["a"] / "qdrant", dirs["b"] / "qdrant"]
    reconcile_qdrant(result, events, qdrants, settings.model_dim, clicks=False)
    uncovered = uncovered_examples(settings, [dirs["b"] / "data"])
    result.notes.update(
        {
            "B partitions after joining": int(partitions_b),
            "accepted by A": int(accepted_a),
            "accepted by B": int(accepted_b),
            "learned by A before its stop + by B": int(learned_a + learned_b),
            "examples past B's last checkpoint": uncovered,
        }
    )
    print("\n" + result.line("rebalance"))
    result.assert_nothing_lost()
    assert 0 < partitions_b < settings.partitions, "B never shared the partitions"
    assert accepted_a > 0 and accepted_b > 0
    assert uncovered == 0, f"{uncovered} examples not covered by B's last checkpoint"
