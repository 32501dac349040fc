"""The peer of the sessionize stage: a Quix Streams app with the same per-session state.

``onevec bench`` runs this file as a script with the Python of ``.peer-venv``
(``scripts/peer-env.sh``), never in onevec's own environment, so it imports only the standard
library and quixstreams (inside :func:`main`, so that the bench can import :func:`remember`):

    .peer-venv/bin/python quix_peer.py BOOTSTRAP TOPIC COUNT ITEMS STATE_DIR GROUP CONSUMER_CONFIG

It drains ``COUNT`` JSON clicks of ``TOPIC`` from the earliest offset, keeping for each record
key (the session) its last ``ITEMS`` items and its last event time in Quix's RocksDB state,
changelogged to the broker as Quix does by default, and prints one JSON line on stdout:
``{"peer": "quixstreams VERSION", "count": N, "elapsed": SECONDS}``.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

# derive_topic_config (patched below) was read in this release line.
PATCHED_FOR = "3.28."
# Kafka's broker default (log.retention.hours = 168).
DEFAULT_RETENTION_MS = str(7 * 24 * 3600 * 1000)


def remember(items: list[str], item_id: str, limit: int) -> list[str]:
    """A session's last ``limit`` items, oldest first, after one more click."""
    items.append(item_id)
    return items[-limit:] if len(items) > limit else items


def main(
    bootstrap: str,
    topic_name: str,
    count: int,
    limit: int,
    state_dir: str,
    group: str,
    consumer: dict[str, Any],
) -> None:
    import quixstreams  # type: ignore[import-not-found]
    from quixstreams.models.topics.manager import TopicManager  # type: ignore[import-not-found]

    if not quixstreams.__version__.startswith(PATCHED_FOR):
        raise SystemExit(
            f"quixstreams {quixstreams.__version__}: the retention.ms patch was checked against "
            f"{PATCHED_FOR}x; check TopicManager.derive_topic_config, then update PATCHED_FOR"
        )
    # Quix derives its changelog topic's config from the input topic's and reads
    # "retention.ms" without a default; Tansu's DescribeConfigs returns none, so the changelog
    # cannot be created. Default it to Kafka's before Quix reads it.
    derive = TopicManager.derive_topic_config.__func__

    def derive_with_retention(cls: Any, topics: Any) -> Any:
        for topic in topics:
            topic.broker_config.extra_config.setdefault("retention.ms", DEFAULT_RETENTION_MS)
        return derive(cls, topics)

    TopicManager.derive_topic_config = classmethod(derive_with_retention)

    app = quixstreams.Application(
        broker_address=bootstrap,
        consumer_group=group,
        auto_offset_reset="earliest",
        state_dir=state_dir,
        consumer_extra_config=consumer,
        loglevel="WARNING",
    )
    topic = app.topic(topic_name, value_deserializer="json", key_deserializer="bytes")
    seen = {"count": 0, "first": 0.0}

    def sessionize(event: dict[str, Any], state: Any) -> None:
        state.set("items", remember(state.get("items", []), event["item_id"], limit))
        state.set("last", event["timestamp"])
        seen["count"] += 1
        if seen["count"] == 1:
            seen["first"] = time.monotonic()

    app.dataframe(topic).update(sessionize, stateful=True)
    # run() returns after the count-th event and the checkpoint that follows it, which writes
    # the state and its changelog: that work is part of the time.
    app.run(count=count, timeout=60.0, collect=False)
    elapsed = time.monotonic() - seen["first"]
    if seen["count"] < count:
        raise SystemExit(f"the peer saw {seen['count']} of {count} events before 60 s without one")
    result = {"peer": f"quixstreams {quixstreams.__version__}", "count": seen["count"], "elapsed": elapsed}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    bootstrap, topic_name, count, limit, state_dir, group, consumer = sys.argv[1:8]
    main(bootstrap, topic_name, int(count), int(limit), state_dir, group, json.loads(consumer))
