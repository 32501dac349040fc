"""HTTP endpoints of a worker: ``POST /events`` ingestion, lookups, ``GET /metrics``, ``GET /healthz``.

``POST /events`` takes a JSON array of events or JSON lines (one event per line), validates
each, sends the good ones to the clicks topic (keyed by session) and the bad ones to the
dead-letter topic with their reason, and answers with the counts. The body is parsed as a
whole only when it is a JSON array, so one broken line of JSON lines rejects that line alone.

With ``ONEVEC_HTTP_INGEST_TOKEN`` set, every write (``POST /events``, ``POST /drift``) needs
``Authorization: Bearer <token>``, and with ``ONEVEC_HTTP_TOKEN_FOR_READS`` every lookup too;
``/metrics`` and ``/healthz`` stay open for scrapers and probes (docs/operations.md).
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from faust.web import Request, Response, View
from prometheus_client import generate_latest

from onevec.models.clickstream.events import TOO_DEEP, Rejection, json_error, validate_event
from onevec.monitoring import metrics
from onevec.streams.app import OnevecApp
from onevec.streams.learner.recommend import MODES, UnknownSession, UnknownUser

__all__ = ["register_routes", "split_body"]

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


def hit_json(hit: Any) -> dict[str, Any]:
    return {"item_id": hit.item_id, "score": hit.score, "attributes": hit.payload.get("attributes", {})}


def register_routes(onevec: OnevecApp) -> None:
    app = onevec.faust
    limits = onevec.limits
    max_body = onevec.settings.max_http_body_bytes
    token = onevec.settings.http_ingest_token
    token_for_reads = onevec.settings.http_token_for_reads

    def counted(response: Response) -> Response:
        """A POST /events answer, counted by status (onevec_http_ingest_requests_total)."""
        metrics.HTTP_INGEST_REQUESTS.labels(status=str(response.status)).inc()
        return response

    def answer(
        view: View, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None
    ) -> Response:
        return counted(view.json(payload, status=status, headers=headers))

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
                return answer(self, 413, {"error": f"body larger than {max_body} bytes"})
            body = await request.read()
            if len(body) > max_body:
                return answer(self, 413, {"error": f"body larger than {max_body} bytes"})
            raws = split_body(body)
            if isinstance(raws, Rejection):
                return answer(self, 400, {"error": raws.detail, "reason": raws.reason})
            accepted = 0
            errors: list[dict[str, Any]] = []
            records = []
            for index, raw in enumerate(raws):
                result = validate_event(raw, limits)
                if isinstance(result, Rejection):
                    records.append(onevec.dead_letter(None, raw, result, stage="http"))
                    if len(errors) < MAX_REPORTED_ERRORS:
                        errors.append({"index": index, "reason": result.reason, "detail": result.detail})
                    continue
                records.append(onevec.click(result))
                accepted += 1
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

    @app.page("/sessions/{key}")
    class SessionView(RoleView):
        async def get(self, request: Request, key: str) -> Response:
            state = onevec.session_table.get(key)
            if state is None or state.get("tombstone"):
                return self.json({"error": f"no open session {key!r} on this worker"}, status=404)
            return self.json({k: v for k, v in state.items() if k not in ("seen", "previous")})

    @app.page("/similar/{item_id}")
    class SimilarView(LearnerView):
        async def get(self, request: Request, item_id: str) -> Response:
            k = parse_k(request.query.get("k", "10"))
            if k is None:
                return self.json({"error": K_ERROR}, status=400)
            filters = parse_filters(request.query.getall("filter", []))  # type: ignore[attr-defined]  # a MultiDict
            try:
                hits = await onevec.store.similar(item_id, k=k, filter=filters or None)
            except KeyError:
                return self.json({"error": f"unknown item {item_id!r}"}, status=404)
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
                    },
                }
            )

    @app.page("/drift")
    class DriftView(LearnerView):
        """GET: the last drift window, thresholds, detector events, predictability.
        POST: take a new drift reference snapshot at the end of the next window (on demand)."""

        async def get(self, request: Request) -> Response:
            return self.json(onevec.running_learner.drift.summary())

        async def post(self, request: Request) -> Response:
            onevec.running_learner.drift.request_rotation()
            return self.json({"rotation": "requested"}, status=202)

    @app.page("/healthz")
    class HealthView(View):
        async def get(self, request: Request) -> Response:
            role, partitions = onevec.settings.role, sorted(onevec.partitions)
            return self.json({"status": "ok", "role": role, "partitions": partitions})
