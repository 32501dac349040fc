"""How far each clicks partition's examples reached the examples topic.

Every examples record carries a header with the highest clicks offset whose example is on the
topic once that record is (a running maximum per partition: examples partition p holds the
examples of clicks partition p). After an assignment the sessionizer reads it back from each
partition's last record, so the session table and the examples topic, written one after the
other, can be reconciled (see onevec.models.clickstream.sessions, "What was emitted").
"""

from __future__ import annotations

import logging
import time

from kafka import TopicPartition

from onevec.streams.kafka.topics import plain_consumer
from onevec.streams.settings import Settings

__all__ = ["EMITTED_HEADER", "emitted_header", "read_emitted_upto"]

log = logging.getLogger(__name__)

EMITTED_HEADER = "onevec-clicks-upto"


def emitted_header(upto: int) -> tuple[str, bytes]:
    return EMITTED_HEADER, str(upto).encode()


def _claim(header: bytes | None, tp: TopicPartition) -> int | None:
    """A header's offset; None when absent, or unreadable (written by something else: the
    partition then keeps the table's rules rather than stalling on it)."""
    if header is None:
        return None
    try:
        return int(header)
    except ValueError:
        log.warning(
            "%s: unreadable %s header %r; deciding by the session table", tp, EMITTED_HEADER, header[:40]
        )
        return None


def read_emitted_upto(
    settings: Settings, partitions: list[int], timeout: float = 10.0
) -> dict[int, int | None]:
    """Per partition, the header of the examples partition's last record: -1 for an empty
    partition, None when its last record has none (an older onevec) or an unreadable one: not
    known. TimeoutError when a partition's last record is not read within ``timeout``."""
    topic = settings.examples_topic
    wanted = [TopicPartition(topic, p) for p in partitions]
    consumer = plain_consumer(settings)
    try:
        consumer.assign(wanted)
        ends = consumer.end_offsets(wanted)
        result: dict[int, int | None] = {tp.partition: -1 for tp in wanted if ends[tp] == 0}
        missing = {tp for tp in wanted if ends[tp] > 0}
        for tp in missing:
            # Tansu's end offset is the last record batch's base + 1: read that batch whole.
            consumer.seek(tp, ends[tp] - 1)
        last: dict[TopicPartition, int] = {}
        deadline = time.monotonic() + timeout
        while missing and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=300).items():
                for record in records:
                    if record.offset >= last.get(tp, -1):
                        last[tp] = record.offset
                        result[tp.partition] = _claim(dict(record.headers or []).get(EMITTED_HEADER), tp)
            # Read up to the position the end offset gave (or further): the last batch is in.
            missing = {tp for tp in missing if consumer.position(tp) < ends[tp] or tp not in last}
        if missing:
            raise TimeoutError(f"the last examples record of {sorted(missing)} not read in {timeout:.0f} s")
        return result
    finally:
        consumer.close()
