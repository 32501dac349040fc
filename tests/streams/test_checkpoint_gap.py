"""What a restarted learner learns before the live stream: the examples records its consumer
starts past (taken by a lost process after its last checkpoint), read from the real broker."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from onevec.deploy.embedded_broker import free_port
from onevec.models.clickstream.examples import encode_examples
from onevec.streams.kafka.topics import bootstrap_servers, ensure_topics
from onevec.streams.learner.checkpoints import Checkpoints, ExpectedOffsets, GapReadError, read_examples
from onevec.streams.settings import Settings
from onevec.streams.tools.broker_proxy import TcpProxy, tansu_behind
from onevec.streams.worker import WorkerProcess, metric_total
from tests.conftest import isolated_settings
from tests.reliability.reconcile import checkpoint_offsets, wait_for, wait_metric


def example(n: int) -> dict:
    return {"session_id": f"s{n}", "user_id": "u", "item_id": f"i{n}", "prefix": [f"i{n - 1}"]}


def test_skipped_records_are_read_from_the_broker(settings: Settings) -> None:
    topic = settings.examples_topic
    producer = KafkaProducer(bootstrap_servers=bootstrap_servers(settings))
    for partition in (0, 3):
        for n in range(5):
            for value in encode_examples([example(10 * partition + n)], 1 << 16):
                producer.send(topic, value, partition=partition)
    producer.send(topic, b"not json", partition=3)  # offset 5: dead-lettered by the agent, skipped here
    producer.send(topic, encode_examples([example(99)], 1 << 16)[0], partition=3)  # offset 6
    producer.flush()
    producer.close()

    def learned(source: str, start: int, end: int) -> list[tuple[int, list[str]]]:
        return [
            (b.offset, [e["item_id"] for e in b.examples])
            for b in read_examples(settings, source, start, end)
        ]

    assert learned(f"{topic}:0", 2, 5) == [(n, [f"i{n}"]) for n in (2, 3, 4)]
    assert learned(f"{topic}:3", 0, 7) == [(n, [f"i{30 + n}"]) for n in range(5)] + [(6, ["i99"])]


def test_expected_offsets_find_the_records_a_learner_never_took(settings: Settings) -> None:
    checkpoints = Checkpoints(settings)
    checkpoints.offsets = {"ex:0": 1}  # the restored checkpoint covers partition 0 up to offset 1
    expected = ExpectedOffsets(checkpoints)
    assert expected.take("ex:0", 2) is None  # the next record: nothing skipped
    assert expected.take("ex:0", 6) == (3, 6)  # the consumer jumped past 3-5
    assert expected.take("ex:0", 4) is None  # a redelivery after a rebalance
    assert expected.take("ex:3", 4) == (0, 4)  # a partition the checkpoint had no offset for
    assert expected.take("ex:1", 0) is None
    checkpoints.offsets["ex:1"] = 9  # learned from a hole read, beyond anything taken
    assert expected.take("ex:1", 10) is None


def committed_examples(settings: Settings, count: int) -> None:
    """``count`` examples records in partition 0, all committed by the group (taken by a lost
    worker)."""
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
        source = f"{settings.examples_topic}:0"
        back = threading.Timer(8.0, proxy.up)
        seek = KafkaConsumer.seek  # the gap has one partition here: one seek

        def seek_then_cut(consumer: KafkaConsumer, tp: TopicPartition, offset: int) -> None:
            seek(consumer, tp, offset)
            proxy.down()  # a real outage, right where the reading starts
            back.start()

        monkeypatch.setattr(KafkaConsumer, "seek", seek_then_cut)
        started = time.monotonic()
        gap = read_examples(settings, source, 0, 200, stall_seconds=60)
        back.join()
        assert time.monotonic() - started >= 8.0  # more than five empty polls
        assert [b.offset for b in gap] == list(range(200))

        def seek_then_stay_down(consumer: KafkaConsumer, tp: TopicPartition, offset: int) -> None:
            seek(consumer, tp, offset)
            proxy.down()

        monkeypatch.setattr(KafkaConsumer, "seek", seek_then_stay_down)
        try:
            with pytest.raises(GapReadError, match="read up to offset 0 of 200; no record for 3 s"):
                read_examples(settings, source, 0, 200, stall_seconds=3)
        finally:
            proxy.up()


def test_a_learner_whose_consumer_starts_past_its_checkpoint_learns_the_records_skipped(
    settings: Settings, start_worker: Callable[..., WorkerProcess]
) -> None:
    """A lost worker's group committed 40 examples records it never checkpointed: the learner
    started next is handed records from offset 40 on, and learns 0-39 from the broker first."""
    committed_examples(settings, 40)
    worker = start_worker(checkpoint_interval_seconds=1.0)
    wait_metric(worker, "onevec_examples_learned_total", 40)
    wait_for(
        lambda: checkpoint_offsets([settings.data_dir]).get(f"{settings.examples_topic}:0") == 39,
        "checkpoint",
    )
    assert metric_total(worker.metrics(), "onevec_examples_learned_total") == 40
