"""`onevec replay` into a worker that reads numeric timestamps as milliseconds: the replayed
records carry milliseconds, so that worker accepts them at the file's times (real broker)."""

from __future__ import annotations

import pandas as pd
import pytest

from onevec.models.clickstream.events import Event, TimestampUnit, ValidationLimits, validate_event
from onevec.streams.kafka.producer import EventProducer
from onevec.streams.kafka.replay import replay
from onevec.streams.kafka.topics import bootstrap_servers
from onevec.streams.settings import Settings
from tests.kafka_helpers import read_topic

START = 1_700_000_000.0
EVENTS = pd.DataFrame(
    {
        "user_id": [1, 1, 2],
        "item_id": ["a", "b", "c"],
        "timestamp": [START, START + 60.25, START + 120.5],  # seconds, as load_events gives them
        "event_type": ["click", "click", "click"],
        "session_id": ["s1", "s1", "s2"],
    }
)


@pytest.mark.parametrize("unit", ["s", "ms", "auto"])
def test_replayed_timestamps_are_read_back_at_the_files_times(
    settings: Settings, unit: TimestampUnit
) -> None:
    with EventProducer(bootstrap_servers(settings), settings.clicks_topic) as producer:
        replay(EVENTS, producer, timestamp_unit=unit)
    records = read_topic(settings, settings.clicks_topic, expect=len(EVENTS))
    limits = ValidationLimits(timestamp_unit=unit)
    read = [validate_event(r.value, limits, now=START + 1_000) for r in records]
    assert all(isinstance(event, Event) for event in read), read
    assert sorted(e.timestamp for e in read if isinstance(e, Event)) == EVENTS["timestamp"].tolist()
