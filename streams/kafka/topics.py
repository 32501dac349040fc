"""The Kafka topics onevec uses, created up front with the configured partition count.

Producers may start before the worker, and a broker's auto-created topic would get the wrong
partition count; so every entry point (worker, replay, demo) calls :func:`ensure_topics`.
"""

from __future__ import annotations

import logging
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from onevec.streams.settings import Settings

__all__ = ["bootstrap_servers", "ensure_topics", "plain_consumer", "topic_names"]

log = logging.getLogger(__name__)


def bootstrap_servers(settings: Settings, broker_url: str | None = None) -> list[str]:
    url = broker_url or settings.broker_url
    if not url:
        raise ValueError("no broker URL: start the embedded broker first")
    return [part.removeprefix("kafka://") for part in url.replace(";", ",").split(",") if part]


def plain_consumer(settings: Settings, **options: Any) -> KafkaConsumer:
    """A kafka-python consumer of the configured brokers, with their security options, that
    commits nothing on its own (``enable_auto_commit=False``). ``options`` add a caller's own
    ``KafkaConsumer`` options (``group_id``, say) or override these. The caller closes it."""
    shared: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers(settings),
        "enable_auto_commit": False,
        **settings.kafka_client_options(),
    }
    return KafkaConsumer(**{**shared, **options})


def topic_names(settings: Settings) -> list[str]:
    return [
        settings.clicks_topic,
        settings.dlq_topic,
        settings.examples_topic,
        settings.sessions_topic,
        settings.catalog_topic,
    ]


def ensure_topics(settings: Settings) -> None:
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap_servers(settings),
        request_timeout_ms=30_000,
        **settings.kafka_client_options(),
    )
    try:
        existing = set(admin.list_topics())
        missing = [
            NewTopic(
                name,
                num_partitions=settings.partitions,
                replication_factor=settings.replication_factor,
                # The catalogue is state keyed by item: compaction keeps each item's last record.
                topic_configs={"cleanup.policy": "compact"} if name == settings.catalog_topic else {},
            )
            for name in topic_names(settings)
            if name not in existing
        ]
        if missing:
            try:
                admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass  # another process won the race; the topic is what we need
            log.info("created topics %s", [t.name for t in missing])
    finally:
        admin.close()
