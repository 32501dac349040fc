"""A real onevec worker whose Qdrant becomes unreachable while a flag file exists.

This is a fake for Qdrant *unavailability* only, because no Qdrant server can run here (no
binary or image is reachable): the worker's real qdrant-client local-mode client is wrapped,
and while the file named by ``ONEVEC_TEST_QDRANT_DOWN_FILE`` exists every client call raises
the exception qdrant-client raises when a server refuses connections
(``ResponseHandlingException`` around ``ConnectionRefusedError``). Everything else (broker,
Faust, learner, buffer, local-mode storage) is the real thing.

Run as ``python -m tests.reliability.unavailable_qdrant_worker`` with the worker's environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from qdrant_client import QdrantClient
from qdrant_client.http.exceptions import ResponseHandlingException

from onevec.streams.qdrant import store as qdrant_store

DOWN_FILE_VARIABLE = "ONEVEC_TEST_QDRANT_DOWN_FILE"


class UnavailableWhileFlagged:
    """Delegates to a real client; refuses every call while ``down_file`` exists."""

    def __init__(self, client: QdrantClient, down_file: Path) -> None:
        self._client = client
        self._down_file = down_file

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute) or name == "close":
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            if self._down_file.exists():
                raise ResponseHandlingException(ConnectionRefusedError(111, "Connection refused"))
            return attribute(*args, **kwargs)

        return call


def main() -> None:
    real_local_client = qdrant_store._local_client
    down_file = Path(os.environ[DOWN_FILE_VARIABLE])

    def local_client(path: Path | None) -> Any:
        return UnavailableWhileFlagged(real_local_client(path), down_file)

    qdrant_store._local_client = local_client
    from onevec.streams.cli import app

    app(["worker"])


if __name__ == "__main__":
    main()
