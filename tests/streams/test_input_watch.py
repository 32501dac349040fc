"""The sessionize agent's check that every input record reaches it (streams/kafka/input_watch.py):
the decisions on a clock of the test's own, the broker reads against the real embedded broker."""

from __future__ import annotations

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from onevec.streams.kafka.input_watch import (
    REFETCH_PATIENCE_SECONDS,
    STALL_SECONDS,
    InputWatch,
    first_offset_from,
    start_offsets,
)
from onevec.streams.kafka.topics import bootstrap_servers
from onevec.streams.settings import Settings


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_records_in_order_or_read_again_are_taken_and_a_jump_is_a_gap() -> None:
    watch = InputWatch(Clock())
    assert watch.unknown([0, 1]) == [0, 1]
    watch.start(0, 10)
    assert watch.unknown([0, 1]) == [1]
    assert watch.verdict(0, 10) == "take"
    watch.taken(0, 10)
    assert watch.verdict(0, 11) == "take"
    assert watch.verdict(0, 10) == "pass"  # read again (a seek back): taken already
    watch.taken(0, 11)
    assert watch.expected(0) == 12
    assert watch.verdict(0, 14) == "gap"


def test_after_a_seek_back_later_records_are_passed_over_until_the_missing_one_arrives() -> None:
    clock = Clock()
    watch = InputWatch(clock)
    watch.start(0, 10)
    assert watch.verdict(0, 40) == "gap"
    watch.sought(0)
    assert watch.verdict(0, 41) == "pass"  # fetched before the seek
    assert watch.verdict(0, 10) == "take"
    watch.taken(0, 10)
    assert watch.verdict(0, 12) == "gap"  # the seek is over: a new jump is a new gap
    watch.sought(0)
    clock.now += REFETCH_PATIENCE_SECONDS
    assert watch.verdict(0, 12) == "gap"  # the missing record never came: seek again


def test_an_accepted_jump_reads_on_from_the_record_after_it() -> None:
    watch = InputWatch(Clock())
    watch.start(0, 0)
    watch.accept(0, 50)
    assert watch.expected(0) == 50
    assert watch.verdict(0, 50) == "take"


def test_a_lagging_partition_is_stalled_only_while_the_agent_is_not_held_in_a_batch() -> None:
    clock = Clock()
    watch = InputWatch(clock)
    watch.start(0, 10)
    watch.start(1, 10)
    watch.taken(1, 10)
    clock.now += STALL_SECONDS
    ends = {0: 30, 1: 11}  # partition 1 has nothing more on the broker
    assert watch.stalled(ends) == [0]
    watch.sought(0)
    assert watch.stalled(ends) == []  # just sought: give it time
    clock.now += STALL_SECONDS
    assert watch.stalled(ends) == [0]
    watch.batch_started()
    clock.now += STALL_SECONDS  # a batch held this long (the broker is down, say)
    assert watch.stalled(ends) == []
    watch.batch_done()
    assert watch.stalled(ends) == [0]
    watch.forget(0)
    assert watch.stalled(ends) == []


def test_broker_reads_give_the_first_record_from_an_offset_and_the_group_start(
    settings: Settings,
) -> None:
    topic = settings.clicks_topic
    producer = KafkaProducer(bootstrap_servers=bootstrap_servers(settings))
    for n in range(6):
        producer.send(topic, f"r{n}".encode(), partition=0)
    producer.flush()
    producer.close()
    assert first_offset_from(settings, topic, 0, 3) == 3
    assert first_offset_from(settings, topic, 0, 6, timeout=1.0) is None  # nothing there yet
    assert first_offset_from(settings, topic, 1, 0, timeout=1.0) is None

    committer = KafkaConsumer(
        bootstrap_servers=bootstrap_servers(settings), group_id=settings.group_id, enable_auto_commit=False
    )
    committer.commit({TopicPartition(topic, 0): OffsetAndMetadata(4, "", -1)})
    committer.close()
    # Partition 0 starts at the committed offset, partition 1 (nothing committed) at its first.
    assert start_offsets(settings, topic, [0, 1]) == {0: 4, 1: 0}


def test_a_partition_revoked_during_a_batch_is_not_checked() -> None:
    watch = InputWatch(Clock())
    watch.start(0, 10)
    watch.forget(0)  # revoked while the agent's batch waited on the broker
    assert watch.verdict(0, 99) == "take"
    watch.taken(0, 99)
    watch.sought(0)
    watch.accept(0, 100)
    assert watch.unknown([0]) == [0]
