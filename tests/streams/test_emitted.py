"""How far each clicks partition's examples reached the topic: the headers a worker writes and
reading them back (real broker; MovieLens-100k for the worker)."""

from __future__ import annotations

from itertools import accumulate

from kafka import KafkaProducer

from onevec.models.clickstream.examples import decode_examples
from onevec.models.datasets import load_events
from onevec.streams.app import _claim
from onevec.streams.kafka.emitted import EMITTED_HEADER, emitted_header, read_emitted_upto
from onevec.streams.kafka.producer import EventProducer
from onevec.streams.kafka.replay import iter_event_dicts
from onevec.streams.kafka.topics import bootstrap_servers
from onevec.streams.settings import Settings
from tests.kafka_helpers import read_topic, wait_processed


def test_the_last_records_header_per_partition(settings: Settings) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap_servers(settings), linger_ms=20)
    topic = settings.examples_topic
    for upto in (4, 9, 17):  # a running maximum, as the sessionizer writes it
        producer.send(topic, b"{}", partition=0, headers=[emitted_header(upto)])
    producer.flush()
    for upto in (3, 5):  # two record batches on partition 1
        producer.send(topic, b"{}", partition=1, headers=[emitted_header(upto)])
        producer.flush()
    producer.send(topic, b"{}", partition=2)  # an older onevec's record: no header
    producer.send(topic, b"{}", partition=3, headers=[(EMITTED_HEADER, b"not a number")])
    producer.close()
    assert read_emitted_upto(settings, [0, 1, 2, 3]) == {0: 17, 1: 5, 2: None, 3: None}
    assert read_emitted_upto(settings.model_copy(update={"examples_topic": settings.clicks_topic}), [0]) == {
        0: -1
    }


def test_a_worker_claims_each_partitions_clicks_in_order_across_split_records(settings, start_worker) -> None:
    """Records split to 1 KiB (several per partition and batch): along each examples partition
    the headers only grow, each covers at least as many clicks as the examples before it and
    its own, and the last one is the partition's last clicks offset."""
    events = load_events("movielens-100k", settings.session_gap_seconds).head(1500)
    worker = start_worker(examples_record_max_bytes=1024)
    with EventProducer(bootstrap_servers(settings), settings.clicks_topic) as producer:
        for event in iter_event_dicts(events):
            producer.send(event)
    wait_processed(worker, len(events))
    records = read_topic(settings, settings.examples_topic, 0, settle=2.0)
    clicks = read_topic(settings, settings.clicks_topic, len(events))
    last_click = {p: max(r.offset for r in clicks if r.partition == p) for p in {r.partition for r in clicks}}
    for partition, last in last_click.items():
        mine = sorted((r for r in records if r.partition == partition), key=lambda r: r.offset)
        claims = [int(dict(r.headers)[EMITTED_HEADER]) for r in mine]
        assert len(mine) > 1 and claims == sorted(claims)
        counts = list(accumulate(len(decode_examples(r.value)) for r in mine))
        assert all(claim + 1 >= count for claim, count in zip(claims, counts, strict=True))
        assert claims[-1] == last


def test_a_claim_is_the_highest_whole_record_even_after_a_seek_back() -> None:
    # In order: the last record, or the one before it when its examples go on in the next chunk.
    assert _claim([5, 6, 7], 3) == 7
    assert _claim([5, 6, 7, 7], 3) == 6
    # A batch that went back to records it took before (a seek back): 566-569 went out, then
    # 562-565 again; the claim is 569, not 565, or 566-569 would come again unflagged.
    assert _claim([566, 567, 568, 569, 562, 563, 564, 565], 8) == 569
    assert _claim([566, 567, 568, 569, 562, 569], 5) == 568  # 569's examples go on in the next chunk
