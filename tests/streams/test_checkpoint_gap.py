"""What a restarted worker learns before the live stream: the examples its group committed
(taken by the lost process) past the last checkpoint, read from the real broker."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from onevec.deploy.embedded_broker import free_port
from onevec.models.clickstream.examples import encode_examples
from onevec.streams.kafka.topics import bootstrap_servers, ensure_topics
from onevec.streams.learner.checkpoints import GapReadError, checkpoint_coverage, read_committed_gap
from onevec.streams.settings import Settings
from onevec.streams.tools.broker_proxy import TcpProxy, tansu_behind
from tests.conftest import isolated_settings


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


def committed_examples(settings: Settings, count: int) -> None:
    """``count`` examples in partition 0, all committed by the group (taken by a lost worker)."""
    producer = KafkaProducer(bootstrap_servers=bootstrap_servers(settings))
    for n in range(count):
        for value in encode_examples([example(n)], 1 << 16):
            producer.send(settings.examples_topic, value, partition=0)
    producer.flush()
    producer.close()
    group = KafkaConsumer(bootstrap_servers=bootstrap_servers(settings), group_id=settings.app_id)
    group.commit({TopicPartition(settings.examples_topic, 0): OffsetAndMetadata(count, "", -1)})
    group.close()


def test_the_gap_is_read_whole_across_a_broker_outage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker goes away once the read has started: the read waits for it instead of
    returning what it had (the group never delivers those records again), and raises once no
    record came for longer than it may wait."""
    plain_port = free_port()
    with TcpProxy(plain_port) as proxy, tansu_behind(proxy, plain_port) as url:
        settings = isolated_settings(url, tmp_path)
        ensure_topics(settings)
        committed_examples(settings, 200)
        covered = {f"{settings.examples_topic}:0": -1}
        back = threading.Timer(8.0, proxy.up)
        seek = KafkaConsumer.seek  # the gap has one partition here: one seek

        def seek_then_cut(consumer: KafkaConsumer, tp: TopicPartition, offset: int) -> None:
            seek(consumer, tp, offset)
            proxy.down()  # a real outage, right where the reading starts
            back.start()

        monkeypatch.setattr(KafkaConsumer, "seek", seek_then_cut)
        started = time.monotonic()
        gap = read_committed_gap(settings, covered, stall_seconds=60)
        back.join()
        assert time.monotonic() - started >= 8.0  # more than five empty polls
        assert [b.offset for b in gap] == list(range(200))

        def seek_then_stay_down(consumer: KafkaConsumer, tp: TopicPartition, offset: int) -> None:
            seek(consumer, tp, offset)
            proxy.down()

        monkeypatch.setattr(KafkaConsumer, "seek", seek_then_stay_down)
        try:
            with pytest.raises(GapReadError, match="read up to offset 0 of 200; no record for 3 s"):
                read_committed_gap(settings, covered, stall_seconds=3)
        finally:
            proxy.up()
