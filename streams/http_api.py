"""HTTP endpoints of a worker: ``POST /events`` ingestion, lookups, ``GET /metrics``, ``GET /healthz``.

``POST /events`` takes a JSON array of events or JSON lines (one event per line), validates
each, sends the good ones to the clicks topic as received (packed records, one per partition
their session keys hash to) and the bad ones to the dead-letter topic with their reason, and
answers with the counts. The body is parsed as a whole only when it is a JSON array, so one
broken line of JSON lines rejects that line alone.

With ``ONEVEC_HTTP_INGEST_TOKEN`` set, every write (``POST /events``, ``POST /drift``) needs
``Authorization: Bearer <token>``, and with ``ONEVEC_HTTP_TOKEN_FOR_READS`` every lookup too;
``/metrics`` and ``/healthz`` stay open for scrapers and probes (docs/operations.md).

Under abuse (docs/operations.md, HTTP limits): one body limit (``ONEVEC_MAX_HTTP_BODY_BYTES``,
also aiohttp's ``client_max_size``), a connection closed when it sends no whole request head
within ``ONEVEC_HTTP_IDLE_TIMEOUT_SECONDS``, a body that must arrive within
``ONEVEC_HTTP_BODY_TIMEOUT_SECONDS``; every refusal, onevec's or aiohttp's parser's, and every
connection closed by the idle timeout (``header_timeout``, ``idle_timeout``) is counted in
``onevec_http_rejections_total{reason}``, and a malformed or oversized request is one WARNING line.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError, InvalidURLError, LineTooLong
from faust.web import Request, Response, View
from faust.web.drivers.aiohttp import Web as FaustAiohttpWeb
from prometheus_client import generate_latest

from onevec.models.clickstream.events import TOO_DEEP, Event, Rejection, json_error, validate_event
from onevec.monitoring import metrics
from onevec.streams.app import OnevecApp
from onevec.streams.learner.recommend import MODES, UnknownSession, UnknownUser

__all__ = ["ServerLog", "register_routes", "split_body", "unknown_filter_attributes"]

log = logging.getLogger(__name__)

MAX_REPORTED_ERRORS = 100
BROKER_UNAVAILABLE = (
    "the broker did not acknowledge the events in time; send the body again (events already "
    "written are recognised as duplicates downstream)"
)
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4"
LEARNER_STARTING = "the learner is starting (Qdrant collections, catalogue); ask again shortly"
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
UNAUTHORISED = {"error": "missing or wrong bearer token"}
BEARER_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="onevec"'}  # RFC 6750: say which scheme
# Where a handler names why it refused a request (aiohttp responses are mappings for such data);
# the rejection counter falls back to a name for the status.
REASON_KEY = "onevec_reason"
STATUS_REASONS = {
    400: "bad_request",
    401: "unauthorised",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "timeout",
    413: "body_too_large",
    414: "url_too_long",
    431: "headers_too_large",
    500: "internal_error",
    503: "unavailable",
    504: "timeout",
}
# Refusals of a malformed or oversized request: each logged as one WARNING line.
WARNED_STATUSES = frozenset({400, 408, 411, 413, 414, 431})


def split_body(body: bytes) -> list[bytes] | Rejection:
    """The raw events of a request body: the items of a JSON array, or its non-blank lines."""
    stripped = body.strip()
    if not stripped:
        return Rejection("empty_body", "the request body is empty")
    if stripped.startswith(b"["):
        # NaN / Infinity pass here and are refused per item by validate_event.
        try:
            return [json.dumps(item, allow_nan=True).encode() for item in json.loads(stripped)]
        except RecursionError:  # not a ValueError: deep nesting exhausts the (de)serialiser
            return TOO_DEEP
        except ValueError as error:
            detail = f"the body starts like a JSON array but is not one: {json_error(error)}"
            return Rejection("bad_json", detail)
    return [line for line in stripped.splitlines() if line.strip()]


MAX_K = 1000
K_ERROR = f"k must be an integer from 1 to {MAX_K}"


def parse_k(value: str) -> int | None:
    """The ``k`` query parameter, or None when it is not a sane result count."""
    try:
        k = int(value)
    except ValueError:
        return None
    return k if 1 <= k <= MAX_K else None


def parse_filters(values: list[str]) -> dict[str, str]:
    """``key=value`` query values as a payload filter."""
    return dict(value.split("=", 1) for value in values if "=" in value)


def unknown_filter_attributes(filters: Mapping[str, str], known: Collection[str]) -> str | None:
    """The error for filter keys outside the ``known`` attribute names, naming them and the
    known ones; None when every key is known."""
    unknown = [key for key in filters if key not in known]
    if not unknown:
        return None
    names = ", ".join(repr(key) for key in unknown)
    offered = f"known: {', '.join(sorted(known))}" if known else "no item has attributes (no catalogue)"
    return f"no item has the attribute {names} ({offered})"


def rejection_reason(status: int) -> str:
    return STATUS_REASONS.get(status, f"status_{status}")


def count_rejection(request: web.BaseRequest, status: int, reason: str | None) -> None:
    """Count a refused request; a malformed or oversized one is also one WARNING line."""
    reason = reason or rejection_reason(status)
    metrics.HTTP_REJECTIONS.labels(reason=reason).inc()
    if status in WARNED_STATUSES:
        log.warning(
            "HTTP %d to %s %s from %s: %s", status, request.method, request.path, request.remote, reason
        )


@web.middleware
async def count_rejections(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every refusal that reaches the application: a handler's 4xx/5xx answer, aiohttp's own
    (no such route, method not allowed) and a handler that failed (aiohttp answers 500)."""
    try:
        response = await handler(request)
    except web.HTTPException as error:
        count_rejection(request, error.status, None)
        raise
    except Exception:
        count_rejection(request, 500, None)
        raise
    if response.status >= 400:
        count_rejection(request, response.status, response.get(REASON_KEY))
    return response


def parse_reason(error: HttpProcessingError) -> str:
    if isinstance(error, LineTooLong):
        return "line_too_long"  # the request line or a header over aiohttp's max_line/field_size
    if isinstance(error, BadHttpMethod):
        return "bad_method"
    if isinstance(error, InvalidURLError):
        return "bad_url"
    return "bad_request"


class ServerLog(logging.LoggerAdapter[logging.Logger]):
    """aiohttp's server logger. A request aiohttp refuses while parsing it (a header over its
    size limit, a request line that is not HTTP) never reaches a handler or a middleware: aiohttp
    answers 400 itself and logs the parser's exception here, as an ERROR with a traceback. Such a
    refusal is counted and logged as one WARNING line instead (without the offending bytes, which
    may carry a credential); everything else passes through unchanged."""

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        error = kwargs.get("exc_info")
        if not isinstance(error, HttpProcessingError):
            super().log(level, msg, *args, **kwargs)
            return
        reason = parse_reason(error)
        metrics.HTTP_REJECTIONS.labels(reason=reason).inc()
        remote = args[0] if args else None  # aiohttp's message is "Error handling request from %s"
        self.logger.warning(
            "HTTP %d from %s refused while parsing: %s (%s)",
            error.code or 400,
            remote,
            reason,
            type(error).__name__,
        )


class TimeoutCountingHandler(web.RequestHandler):
    """aiohttp's connection handler, counting the connections its keep-alive timer closes in
    ``onevec_http_rejections_total``: ``header_timeout`` when no whole request head ever
    arrived (a slow-header client, or one that sent nothing), ``idle_timeout`` when it had been
    answered and sent no next request in time. aiohttp has no hook for this close; its timer
    (``_process_keepalive``, aiohttp pinned in pyproject) is wrapped, and
    tests/streams/test_http_limits.py fails if it stops closing or counting."""

    __slots__ = ()

    def _process_keepalive(self) -> None:
        was_open = not self._force_close
        super()._process_keepalive()
        if was_open and self._force_close:
            reason = "idle_timeout" if self._request_count else "header_timeout"
            metrics.HTTP_REJECTIONS.labels(reason=reason).inc()


class TimeoutCountingServer(web.Server):
    """aiohttp's server (the listening socket's protocol factory) with counting connections."""

    def __call__(self) -> web.RequestHandler:
        return TimeoutCountingHandler(self, loop=self._loop, **self._kwargs)


class TimeoutCountingRunner(web.AppRunner):
    """aiohttp's application runner, serving with :class:`TimeoutCountingServer`."""

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        return TimeoutCountingServer(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=made._loop,
            **made._kwargs,
        )


def configure_server(onevec: OnevecApp) -> None:
    """The rejection counter, and the runner's idle/header timeout and logger. Faust builds its
    aiohttp runner with aiohttp's defaults (an idle or half-sent connection kept 3,630 s, parser
    refusals logged as errors with a traceback) and has no setting for them: the runner is
    replaced before the server starts."""
    driver = cast(FaustAiohttpWeb, onevec.faust.web)
    driver.web_app.middlewares.append(count_rejections)
    # aiohttp's keep-alive timer starts when a connection opens and again after each answer, and
    # only a whole request head stops it: it is the header timeout as well as the idle one.
    driver._runner = TimeoutCountingRunner(
        driver.web_app,
        access_log=None,
        keepalive_timeout=onevec.settings.http_idle_timeout_seconds,
        logger=ServerLog(logging.getLogger("aiohttp.server")),
    )


def hit_json(hit: Any) -> dict[str, Any]:
    return {"item_id": hit.item_id, "score": hit.score, "attributes": hit.payload.get("attributes", {})}


def register_routes(onevec: OnevecApp) -> None:
    app = onevec.faust
    limits = onevec.limits
    max_body = onevec.settings.max_http_body_bytes
    token = onevec.settings.http_ingest_token
    token_for_reads = onevec.settings.http_token_for_reads
    body_timeout = onevec.settings.http_body_timeout_seconds
    configure_server(onevec)

    def counted(response: Response) -> Response:
        """A POST /events answer, counted by status (onevec_http_ingest_requests_total)."""
        metrics.HTTP_INGEST_REQUESTS.labels(status=str(response.status)).inc()
        return response

    def answer(
        view: View,
        status: int,
        payload: dict[str, Any],
        headers: dict[str, str] | None = None,
        reason: str | None = None,
    ) -> Response:
        response = view.json(payload, status=status, headers=headers)
        if reason is not None:
            cast(web.StreamResponse, response)[REASON_KEY] = reason
        return counted(response)

    def too_large(view: View) -> Response:
        return answer(view, 413, {"error": f"body larger than {max_body} bytes"}, reason="body_too_large")

    def authorised(request: Request) -> bool:
        """True when the request may pass: no token is configured, the method is a read and
        reads are open, or it carries the token as a Bearer token (compared in constant time,
        so response timing does not leak its prefix)."""
        if token is None or (request.method in READ_METHODS and not token_for_reads):
            return True
        expected = f"Bearer {token.get_secret_value()}".encode()
        return hmac.compare_digest(request.headers.get("Authorization", "").encode(), expected)

    class GuardedView(View):
        """A route behind the bearer token (checked before any handler runs, so no route can
        forget it); /metrics and /healthz are plain Views, open to scrapers and probes."""

        async def dispatch(self, request: Any) -> Any:
            if not authorised(request):
                return self.unauthorised()
            return await super().dispatch(request)

        def unauthorised(self) -> Response:
            return self.json(UNAUTHORISED, status=401, headers=BEARER_CHALLENGE)

    class RoleView(GuardedView):
        """A route that needs one half of the pipeline (Settings.role): on a worker without it,
        a 404 that names the role to ask instead of a bare one."""

        needs: str = "sessions"

        async def dispatch(self, request: Any) -> Any:
            part = onevec.session_table if self.needs == "sessions" else onevec.learner
            runs = part is not None
            if not runs:
                other = "ingest" if self.needs == "sessions" else "learn"
                role = onevec.settings.role
                error = f"this worker (role={role}) does not run the {self.needs}; ask a {other} worker"
                return self.json({"error": error}, status=404)
            if self.needs == "learner" and not onevec.store_ready.is_set():
                # Before the learner has created the collections and published the catalogue.
                return self.json({"error": LEARNER_STARTING}, status=503, headers={"Retry-After": "2"})
            return await super().dispatch(request)

    class LearnerView(RoleView):
        needs = "learner"

    @app.page("/events")
    class EventsView(GuardedView):
        def unauthorised(self) -> Response:
            return counted(super().unauthorised())

        async def post(self, request: Request) -> Response:
            if (request.content_length or 0) > max_body:  # type: ignore[attr-defined]  # aiohttp's request
                return too_large(self)
            try:
                async with asyncio.timeout(body_timeout):
                    body = await request.read()
            except web.HTTPRequestEntityTooLarge:  # a chunked body past client_max_size
                return too_large(self)
            except TimeoutError:
                error = f"the body did not arrive within {body_timeout:g} s"
                return answer(self, 408, {"error": error}, reason="timeout")
            raws = split_body(body)
            if isinstance(raws, Rejection):
                return answer(self, 400, {"error": raws.detail, "reason": raws.reason}, reason=raws.reason)
            errors: list[dict[str, Any]] = []
            records = []
            good: list[tuple[bytes, Event]] = []
            for index, raw in enumerate(raws):
                result = validate_event(raw, limits)
                if isinstance(result, Rejection):
                    records.append(onevec.dead_letter(None, raw, result, stage="http"))
                    if len(errors) < MAX_REPORTED_ERRORS:
                        errors.append({"index": index, "reason": result.reason, "detail": result.detail})
                    continue
                good.append((raw, result))
            # The accepted events as packed records, one per clicks partition (as sent, not re-encoded).
            records += onevec.packed_clicks(good)
            accepted = len(good)
            # 200 means the broker has every event (and every dead letter): waited for here.
            try:
                await onevec.deliver(records, timeout=onevec.settings.http_delivery_timeout_seconds)
            except TimeoutError:
                return answer(self, 503, {"error": BROKER_UNAVAILABLE}, headers={"Retry-After": "5"})
            rejected = len(raws) - accepted
            return answer(self, 200, {"accepted": accepted, "rejected": rejected, "errors": errors})

    @app.page("/metrics")
    class MetricsView(View):
        async def get(self, request: Request) -> Response:
            # aiohttp refuses a charset inside content_type; the exposition format is UTF-8.
            return self.bytes(generate_latest(), content_type=METRICS_CONTENT_TYPE)

    def session_json(state: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in state.items() if k not in ("seen", "previous")}

    @app.page("/sessions/{key}")
    class SessionView(RoleView):
        async def get(self, request: Request, key: str) -> Response:
            state = onevec.session_table.get(key)
            if state is None or state.get("tombstone"):
                return self.json({"error": f"no open session {key!r} on this worker"}, status=404)
            return self.json(session_json(state))

    @app.page("/sessions")
    class UserSessionsView(RoleView):
        """A user's open sessions in this worker's table (its partitions), each with the table
        key that /sessions/{key} takes and the session id that /recommend?session= takes."""

        async def get(self, request: Request) -> Response:
            user = request.query.get("user")
            if not user:
                return self.json({"error": "give ?user=ID"}, status=400)
            # One pass over this worker's open sessions (at most max_open_sessions): sessions
            # with the producer's own session ids are keyed by that id, not by the user.
            sessions = [
                {"key": key, **session_json(state)}
                for key, state in onevec.session_table.data.items()
                if not state.get("tombstone") and str(state.get("user_id")) == user
            ]
            partitions = sorted(onevec.partitions)
            return self.json({"user_id": user, "partitions": partitions, "sessions": sessions})

    # Attribute names some item has had: a filter on one of them skips the pass over the whole
    # catalogue (1M items); a name that went with its last item gives an empty answer, not a 400.
    known_attributes: set[str] = set()

    @app.page("/similar/{item_id}")
    class SimilarView(LearnerView):
        async def get(self, request: Request, item_id: str) -> Response:
            k = parse_k(request.query.get("k", "10"))
            if k is None:
                return self.json({"error": K_ERROR}, status=400)
            given = request.query.getall("filter", [])  # type: ignore[attr-defined]  # a MultiDict
            if any("=" not in value for value in given):
                return self.json({"error": "a filter is attribute=value"}, status=400)
            filters = parse_filters(given)
            if not filters.keys() <= known_attributes:  # a name not seen yet: read the catalogue
                catalogue = onevec.running_learner.sources.attributes
                known_attributes.update(key for attrs in catalogue.values() for key in attrs)
            if error := unknown_filter_attributes(filters, known_attributes):
                return self.json({"error": error}, status=400)
            try:
                hits = await onevec.store.similar(item_id, k=k, filter=filters or None)
            except KeyError:
                return self.json({"error": f"unknown item {item_id!r}"}, status=404)
            except ValueError as error:  # a key that is not a plain attribute name
                return self.json({"error": str(error)}, status=400)
            return self.json({"item_id": item_id, "similar": [hit_json(h) for h in hits]})

    @app.page("/items/{item_id}")
    class ItemView(LearnerView):
        async def get(self, request: Request, item_id: str) -> Response:
            stored = await onevec.store.get_item(item_id)
            if stored is None:
                return self.json({"error": f"unknown item {item_id!r}"}, status=404)
            return self.json(
                {"item_id": stored.item_id, "vectors": stored.vectors, "payload": stored.payload}
            )

    @app.page("/recommend")
    class RecommendView(LearnerView):
        async def get(self, request: Request) -> Response:
            k = parse_k(request.query.get("k", "20"))
            if k is None:
                return self.json({"error": K_ERROR}, status=400)
            mode = request.query.get("mode", "mixed")
            if mode not in MODES:
                return self.json({"error": f"mode must be one of {', '.join(MODES)}"}, status=400)
            asked = [name for name in ("user", "session", "items") if name in request.query]
            if len(asked) != 1:
                return self.json({"error": "give one of ?user=ID, ?session=ID or ?items=a,b,c"}, status=400)
            items = [i for i in request.query.get("items", "").split(",") if i]
            if asked == ["items"] and (not items or mode != "mixed"):
                error = "?items= needs item ids and has no user (mode=again or discover needs one)"
                return self.json({"error": error}, status=400)
            recommender = onevec.running_learner.recommender
            try:
                if asked == ["user"]:
                    found = await recommender.for_user(request.query["user"], k, mode)
                elif asked == ["session"]:
                    found = await recommender.for_session(request.query["session"], k, mode)
                else:
                    found = await onevec.running_learner.recommend_for_items(items, k)
            except UnknownUser as error:
                if onevec.running_learner.trainer.user_history is None:
                    error_text = "this worker keeps no user history (ONEVEC_MODEL_REPEAT_GATE is off)"
                else:
                    error_text = f"unknown user {error.args[0]!r}: no history of them"
                return self.json({"error": error_text}, status=404)
            except UnknownSession as error:
                return self.json({"error": f"no live session {error.args[0]!r} in Qdrant"}, status=404)
            return self.json(
                {
                    "user_id": found.user_id,
                    "session_id": found.session_id,
                    "items": found.items,
                    "mode": found.mode,
                    "recommended": [
                        {"item_id": r.item_id, "score": r.score, "attributes": r.attributes, "had": r.had}
                        for r in found.recommended
                    ],
                }
            )

    @app.page("/stats")
    class StatsView(LearnerView):
        async def get(self, request: Request) -> Response:
            return self.json(
                {
                    "items": await onevec.store.count("items"),
                    "sessions": await onevec.store.count("sessions"),
                    "model_steps": onevec.running_learner.trainer.steps,
                    "learner_queue": onevec.running_learner.queue.examples,
                    "prequential": {
                        "scored": onevec.running_learner.score.scored,
                        "hr@20": onevec.running_learner.score.hr,
                        "mrr@20": onevec.running_learner.score.mrr,
                        "sampled": onevec.running_learner.round.sampling,
                    },
                }
            )

    @app.page("/drift")
    class DriftView(LearnerView):
        """GET: the last drift window, thresholds, detector events, predictability.
        POST: take a new drift reference snapshot after the next window (on demand)."""

        async def get(self, request: Request) -> Response:
            return self.json(onevec.running_learner.drift.summary())

        async def post(self, request: Request) -> Response:
            onevec.running_learner.drift.request_rotation()
            return self.json({"rotation": "requested"}, status=202)

    def readiness() -> dict[str, dict[str, bool]]:
        """Per part this worker runs, each start-up step done or not; a part is ready when
        all are."""
        recovery = onevec.faust.tables.recovery  # type: ignore[attr-defined]  # TableManager's
        recovered = bool(onevec.partitions) and recovery.completed.is_set()
        parts: dict[str, dict[str, bool]] = {}
        if onevec.session_table is not None:
            parts["sessions"] = {"partitions_assigned": bool(onevec.partitions), "table_recovered": recovered}
        if onevec.learner is not None:
            parts["learner"] = {
                "checkpoint_checked": onevec.stream_bound.is_set(),
                "store_ready": onevec.store_ready.is_set(),
                "checkpoint_gap_learned": onevec.gap_learned.is_set(),
                "partitions_assigned": bool(onevec.partitions),
            }
        for steps in parts.values():
            steps["ready"] = all(steps.values())
        return parts

    @app.page("/healthz")
    class HealthView(View):
        """200 while the process serves HTTP (liveness), with each part's readiness; with
        ``?ready``, 503 until every part is ready (readiness probes)."""

        async def get(self, request: Request) -> Response:
            role, partitions = onevec.settings.role, sorted(onevec.partitions)
            parts = readiness()
            ready = all(steps["ready"] for steps in parts.values())
            status = 503 if "ready" in request.query and not ready else 200
            payload = {"status": "ok" if ready else "starting", "role": role, "partitions": partitions}
            return self.json(payload | {"ready": ready, "parts": parts}, status=status)
