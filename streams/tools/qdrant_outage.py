"""A real onevec worker whose Qdrant becomes unreachable while a switch file exists.

No Qdrant server runs on a single machine here, so an outage of the worker's embedded Qdrant
(qdrant-client local mode, on disk at ``ONEVEC_QDRANT_PATH``) is made by wrapping its client:
while the switch file exists every client call raises what qdrant-client raises when a server
refuses connections (``ResponseHandlingException`` around ``ConnectionRefusedError``). The
broker, Faust, the learner, its sink buffer and the storage are the real thing. ``onevec chaos``
and the reliability tests run their learn worker this way.

Run as ``python -m onevec.streams.tools.qdrant_outage SWITCH_FILE`` with the worker's environment.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qdrant_client import QdrantClient
from qdrant_client.http.exceptions import ResponseHandlingException

from onevec.streams.qdrant import store as qdrant_store
from onevec.streams.settings import load_settings
from onevec.streams.worker import run_worker

__all__ = ["UnavailableWhileSwitched", "worker_command"]


class UnavailableWhileSwitched:
    """Delegates to a real client; refuses every call while ``switch`` exists."""

    def __init__(self, client: QdrantClient, switch: Path) -> None:
        self._client = client
        self._switch = switch

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute) or name == "close":
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            if self._switch.exists():
                raise ResponseHandlingException(ConnectionRefusedError(111, "Connection refused"))
            return attribute(*args, **kwargs)

        return call


def worker_command(switch: Path) -> tuple[str, ...]:
    """The command line of a worker whose Qdrant is down while ``switch`` exists."""
    return (sys.executable, "-m", "onevec.streams.tools.qdrant_outage", str(switch))


def main(switch: Path) -> None:
    real_local_client: Callable[[Path | None], QdrantClient] = qdrant_store._local_client

    def local_client(path: Path | None) -> Any:
        return UnavailableWhileSwitched(real_local_client(path), switch)

    qdrant_store._local_client = local_client
    run_worker(load_settings())


if __name__ == "__main__":
    main(Path(sys.argv[1]))
