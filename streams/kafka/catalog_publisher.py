"""``onevec catalog publish``: a catalogue file's records onto the compacted catalogue topic."""

from __future__ import annotations

import json
from collections.abc import Callable

from onevec.models.catalog import catalog_records, inline_images
from onevec.streams.kafka.producer import EventProducer
from onevec.streams.kafka.topics import bootstrap_servers, ensure_topics
from onevec.streams.settings import Settings

__all__ = ["publish_catalog"]


def publish_catalog(settings: Settings, source: str, on_progress: Callable[[int], None] | None = None) -> int:
    """Send a catalogue's records to the catalogue topic, keyed by item_id, with each image
    file inlined (:func:`inline_images`); returns the count."""
    ensure_topics(settings)
    records = [inline_images(record) for record in catalog_records(source)]
    options = settings.kafka_client_options()
    with EventProducer(bootstrap_servers(settings), settings.catalog_topic, **options) as producer:
        for sent, record in enumerate(records, start=1):
            item_id = record.get("item_id")
            key = None if item_id is None else str(item_id).encode()
            producer.send_raw(key, json.dumps(record, default=str).encode())
            if on_progress is not None and sent % 500 == 0:
                on_progress(sent)
    if on_progress is not None:
        on_progress(len(records))
    return len(records)
