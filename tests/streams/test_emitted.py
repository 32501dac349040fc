"""Reading back how far each clicks partition's examples reached the topic (real broker)."""

from __future__ import annotations

from kafka import KafkaProducer

from onevec.streams.kafka.emitted import emitted_header, read_emitted_upto
from onevec.streams.kafka.topics import bootstrap_servers
from onevec.streams.settings import Settings


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
    producer.close()
    assert read_emitted_upto(settings, [0, 1, 2, 3]) == {0: 17, 1: 5, 2: -1, 3: -1}
