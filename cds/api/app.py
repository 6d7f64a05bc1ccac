"""The FastAPI application factory: health, readiness, metrics, error translation."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cds.api.outcome import outcome_response
from cds.core.runtime import EngineContext

logger = logging.getLogger(__name__)

RouterInstaller = Callable[[FastAPI, EngineContext], None]


def create_app(ctx: EngineContext, *, installers: Iterable[RouterInstaller] = ()) -> FastAPI:
    """Build the app for one process.

    Args:
        ctx: the process's shared context (settings, database, metrics, readiness).
        installers: functions that mount further routers (connectors, CDS Hooks, ...).
    """
    app = FastAPI(
        title="cdsfusion",
        version=_version(),
        description="Clinical decision-support integration engine",
        docs_url="/docs",
        openapi_url="/openapi.json",
    )
    app.state.ctx = ctx
    _install_metrics(app, ctx)
    _install_error_handlers(app)
    _install_health(app, ctx)
    for install in installers:
        install(app, ctx)
    return app


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cdsfusion")
    except PackageNotFoundError:
        return "0+unknown"


def _route_template(scope: Scope) -> str:
    """The matched route's path template, so metrics and logs never carry raw ids.

    The router records the route it matched in the ASGI scope (``scope["route"]``), also for
    routes of included routers; a request no route matched is ``unmatched``.
    """
    route = scope.get("route")
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    return str(path) if path else "unmatched"


class _ObserveMiddleware:
    """Counts and times every HTTP request by method, route template and status.

    A plain ASGI middleware (not ``@app.middleware``, whose per-request task and body
    streaming cost more than many endpoints): it sees the status in ``http.response.start``
    and, after the app returns, the route the router matched in the shared scope.
    """

    def __init__(self, app: ASGIApp, *, requests: Counter, latency: Histogram) -> None:
        self._app = app
        self._requests = requests
        self._latency = latency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self._app(scope, receive, observed_send)
        finally:
            elapsed = time.perf_counter() - started
            method, route = str(scope.get("method", "")), _route_template(scope)
            self._requests.labels(method, route, str(status)).inc()
            self._latency.labels(method, route).observe(elapsed)
            logger.info("%s %s -> %d in %.1f ms", method, route, status, elapsed * 1e3)


def _install_metrics(app: FastAPI, ctx: EngineContext) -> None:
    requests = Counter(
        "cdsfusion_http_requests_total",
        "HTTP requests by route template and status",
        ["method", "route", "status"],
        registry=ctx.metrics,
    )
    latency = Histogram(
        "cdsfusion_http_request_duration_seconds",
        "HTTP request latency by route template",
        ["method", "route"],
        registry=ctx.metrics,
        buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    )

    app.add_middleware(_ObserveMiddleware, requests=requests, latency=latency)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        """Prometheus text exposition format."""
        return Response(generate_latest(ctx.metrics), media_type=CONTENT_TYPE_LATEST)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return outcome_response(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        # Locations and messages only: the offending input values are not echoed back.
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', 'invalid')}"
            for err in exc.errors()
        )
        return outcome_response(400, f"invalid request: {problems}")

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        logger.error("unhandled %s in request", type(exc).__name__)
        return outcome_response(500, "internal error", code="exception")


def _install_health(app: FastAPI, ctx: EngineContext) -> None:
    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process serves HTTP."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    def readyz() -> JSONResponse:
        """Readiness: every registered check (database and schema, listeners, model)."""
        results = {name: check() for name, check in sorted(ctx.readiness.items())}
        ready = all(ok for ok, _ in results.values())
        body = {
            "status": "ready" if ready else "not-ready",
            "checks": {
                name: {"ok": ok, "detail": detail} for name, (ok, detail) in results.items()
            },
        }
        return JSONResponse(body, status_code=200 if ready else 503)
