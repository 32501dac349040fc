"""What every worker entry point does before it runs (one worker process, or the supervisor of
the default layout): start the embedded broker when none is configured, pick the web port,
create the data folder and the topics. No Faust here: the supervisor imports this too."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from onevec.deploy.embedded_broker import EmbeddedBroker, free_port
from onevec.streams.kafka.topics import ensure_topics
from onevec.streams.settings import Settings

__all__ = ["prepared"]


@contextmanager
def prepared(settings: Settings) -> Iterator[Settings]:
    """``settings`` with a broker URL and a web port, the topics created; an embedded broker
    started here runs until the block ends."""
    broker: EmbeddedBroker | None = None
    if settings.embedded:
        broker = EmbeddedBroker(host=settings.bind_host).start()
        settings = settings.model_copy(update={"broker_url": broker.url, "tansu": True})
        print(f"embedded broker on {broker.url}", flush=True)
    if settings.web_port == 0:
        settings = settings.model_copy(update={"web_port": free_port(settings.bind_host)})
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        ensure_topics(settings)
        yield settings
    finally:
        if broker is not None:
            broker.stop()
