"""The one web port of the supervised worker layout (:mod:`onevec.streams.supervisor`).

The supervisor serves it, not a child: it is the process that outlives a crash of either half,
so the port stays up while a child restarts, a request for the missing half answers 503 with
``Retry-After`` instead of a refused connection, and ``/healthz`` can say which child is down.

* ``POST /events`` and ``/sessions...`` go to the ingest child, every other route to the learn
  child, passed through unchanged (method, path, query, headers, body streamed as it arrives):
  the children keep their own checks (bearer token, body limits and timeouts, role errors).
* ``GET /healthz``: each child's process state (pid, restarts, last exit) and its own
  ``/healthz``; ``?ready`` answers 503 until both children are ready.
* ``GET /metrics``: both children's metrics, each sample labelled ``role`` with its child (as
  the deployed Prometheus labels the split workers), and the supervisor's own.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["Gateway", "Upstream", "merge_metrics"]

log = logging.getLogger(__name__)

INGEST_PATHS = ("/events", "/sessions")  # every other route is the learn child's
# Per connection, not end to end (RFC 9110, 7.6.1): never passed on. Host is the child's own.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)
HEALTH_TIMEOUT_SECONDS = 2.0
METRICS_TIMEOUT_SECONDS = 10.0
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4"


class Upstream(Protocol):
    """A child process as the gateway sees it."""

    role: str

    @property
    def base_url(self) -> str: ...

    @property
    def alive(self) -> bool: ...

    def status(self) -> dict[str, Any]: ...


def route_role(path: str) -> str:
    """The role of the child that answers ``path``."""
    return "ingest" if any(path == p or path.startswith(p + "/") for p in INGEST_PATHS) else "learn"


def merge_metrics(pages: Mapping[str, str], own: CollectorRegistry) -> bytes:
    """The children's /metrics pages as one page, every sample labelled ``role`` with its
    child, and the families of ``own`` (a family in several places is one family)."""
    families: dict[str, Metric] = {}

    def add(family: Metric, role: str | None) -> None:
        merged = families.setdefault(
            family.name, Metric(family.name, family.documentation, family.type, family.unit)
        )
        for sample in family.samples:
            labels = sample.labels if role is None else sample.labels | {"role": role}
            merged.samples.append(sample._replace(labels=labels))

    for family in own.collect():
        add(family, None)
    for role, text in pages.items():
        for family in text_string_to_metric_families(text):
            add(family, role)

    class Collected:
        def collect(self) -> Iterable[Metric]:
            return families.values()

    page = CollectorRegistry(auto_describe=False)
    page.register(Collected())
    return generate_latest(page)


class Gateway:
    """The public web server in front of the children (by role)."""

    def __init__(
        self,
        children: Mapping[str, Upstream],
        registry: CollectorRegistry,
        idle_timeout: float,
    ) -> None:
        self.children = children
        self.registry = registry
        self.idle_timeout = idle_timeout
        self.runner: web.AppRunner | None = None
        self.session: aiohttp.ClientSession | None = None

    async def start(self, host: str, port: int) -> None:
        # No pool limit (aiohttp's default caps a host at 100 connections): the children
        # bound their own load. No read timeout: the children answer within their own.
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
            auto_decompress=False,
        )
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_route("*", "/{path:.*}", self.forward)
        # The children's idle timeout, so a slow-header client is closed here as it would be there.
        self.runner = web.AppRunner(app, access_log=None, keepalive_timeout=self.idle_timeout)
        await self.runner.setup()
        await web.TCPSite(self.runner, host, port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
        if self.session is not None:
            await self.session.close()

    def unavailable(self, child: Upstream) -> web.Response:
        error = f"the {child.role} worker is not answering (starting or restarting); ask again shortly"
        status = child.status()
        payload = {"error": error, "role": child.role, "restarts": status["restarts"]}
        return web.json_response(payload, status=503, headers={"Retry-After": "2"})

    async def forward(self, request: web.Request) -> web.StreamResponse:
        assert self.session is not None  # started
        child = self.children[route_role(request.path)]
        if not child.alive:
            return self.unavailable(child)
        headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP)
        try:
            async with self.session.request(
                request.method,
                f"{child.base_url}{request.rel_url}",
                headers=headers,
                data=request.content if request.body_exists else None,
                allow_redirects=False,
            ) as upstream:
                body = await upstream.read()
        except (aiohttp.ClientError, ConnectionError):
            # The child went away during the request: whether it took the body is unknown, and
            # a POST /events sent again is recognised downstream as duplicates.
            return self.unavailable(child)
        passed = CIMultiDict(
            (k, v)
            for k, v in upstream.headers.items()
            if k.lower() not in HOP_BY_HOP and k.lower() != "content-length"
        )
        return web.Response(status=upstream.status, body=body, headers=passed)

    async def _get(self, child: Upstream, path: str, timeout: float) -> str | None:
        """A child's page, None when it is down or does not answer in time."""
        assert self.session is not None  # started
        if not child.alive:
            return None
        try:
            async with self.session.get(
                f"{child.base_url}{path}", timeout=aiohttp.ClientTimeout(total=timeout)
            ) as response:
                return await response.text() if response.status == 200 else None
        except (aiohttp.ClientError, ConnectionError, TimeoutError):
            return None

    async def healthz(self, request: web.Request) -> web.Response:
        """200 while the supervisor serves (liveness), with each child's process state and its
        own /healthz; with ``?ready``, 503 until both children are ready."""
        children = list(self.children.values())
        pages = await asyncio.gather(*(self._get(c, "/healthz", HEALTH_TIMEOUT_SECONDS) for c in children))
        parts: dict[str, Any] = {}
        states: dict[str, Any] = {}
        for child, page in zip(children, pages, strict=True):
            answer = json.loads(page) if page is not None else None
            states[child.role] = child.status() | {
                "answering": answer is not None,
                "ready": bool(answer and answer["ready"]),
                "partitions": answer["partitions"] if answer else [],
            }
            parts.update(answer["parts"] if answer else {})
        ready = all(state["ready"] for state in states.values())
        restarting = any(state["state"] == "restarting" for state in states.values())
        payload = {
            "status": "ok" if ready else "restarting" if restarting else "starting",
            "role": "supervised",
            "ready": ready,
            "parts": parts,
            "children": states,
        }
        status = 503 if "ready" in request.query and not ready else 200
        return web.json_response(payload, status=status)

    async def metrics(self, request: web.Request) -> web.Response:
        children = list(self.children.values())
        pages = await asyncio.gather(*(self._get(c, "/metrics", METRICS_TIMEOUT_SECONDS) for c in children))
        found = {child.role: page for child, page in zip(children, pages, strict=True) if page is not None}
        body = merge_metrics(found, self.registry)
        return web.Response(body=body, headers={"Content-Type": METRICS_CONTENT_TYPE})
