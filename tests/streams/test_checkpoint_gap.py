"""What a restarted worker learns before the live stream: the examples its group committed
(taken by the lost process) past the last checkpoint, read from the real broker."""

from __future__ import annotations

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from onevec.models.clickstream.examples import encode_examples
from onevec.streams.kafka.topics import bootstrap_servers
from onevec.streams.learner.checkpoints import checkpoint_coverage, read_committed_gap
from onevec.streams.settings import Settings


def example(n: int) -> dict:
    return {"session_id": f"s{n}", "user_id": "u", "item_id": f"i{n}", "prefix": [f"i{n - 1}"]}


def test_partitions_missing_from_the_checkpoint_are_read_from_their_start(settings: Settings) -> None:
    topic = settings.examples_topic
    producer = KafkaProducer(bootstrap_servers=bootstrap_servers(settings))
    for partition in (0, 3):
        for n in range(5):
            for value in encode_examples([example(10 * partition + n)], 1 << 16):
                producer.send(topic, value, partition=partition)
    producer.send(topic, b"not json", partition=3)  # offset 5: dead-lettered by the agent, skipped here
    producer.flush()
    producer.close()
    # The lost worker's group committed every record of both partitions; its last checkpoint
    # covered partition 0 up to offset 1 and had no offset at all for partition 3.
    group = KafkaConsumer(bootstrap_servers=bootstrap_servers(settings), group_id=settings.app_id)
    group.commit({TopicPartition(topic, 0): OffsetAndMetadata(5, "", -1)})
    group.commit({TopicPartition(topic, 3): OffsetAndMetadata(6, "", -1)})
    group.close()

    covered = checkpoint_coverage(settings, {f"{topic}:0": 1})
    assert covered == {f"{topic}:0": 1, f"{topic}:1": -1, f"{topic}:2": -1, f"{topic}:3": -1}
    gap = read_committed_gap(settings, covered)
    learned = sorted((b.source, b.offset, [e["item_id"] for e in b.examples]) for b in gap)
    assert learned == [(f"{topic}:0", n, [f"i{n}"]) for n in (2, 3, 4)] + [
        (f"{topic}:3", n, [f"i{30 + n}"]) for n in range(5)
    ]
