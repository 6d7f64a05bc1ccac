"""HTTP: ``GET /cds-services``, ``POST /cds-services/{id}``, ``POST /cds-services/{id}/feedback``.

* Discovery is open (it carries no patient data); service calls and feedback need the
  CDS Client's JWT (:mod:`cds.hooks.auth`), checked before the body is even parsed. Any
  authentication failure is a bare ``401`` (``WWW-Authenticate: Bearer``, no body).
* ``412`` (OperationOutcome) when the patient can be identified neither from prefetch nor
  from the FHIR server; ``400`` for a malformed body; ``404`` for an unknown service.
* CORS (CDS Hooks 2.0 §Cross-Origin Resource Sharing) on these paths only, for
  browser-based EHRs: origins from ``CDSFUSION_CDS_HOOKS_CORS_ORIGINS`` (default ``*``),
  methods GET/POST/OPTIONS, headers Authorization and Content-Type.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import httpx
from anyio import CapacityLimiter, to_thread
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from cds.api.outcome import outcome_response
from cds.core.errors import ConfigurationError, InputError
from cds.core.runtime import EngineContext
from cds.fhir.outputs import shared_outputs
from cds.hooks.auth import AuthenticationError, HookTokenVerifier, JwksCache, load_issuers
from cds.hooks.models import Feedback, dump
from cds.hooks.prefetch import PrefetchUnavailableError
from cds.hooks.service import SERVICES_PATH, CdsHooksService, UnknownServiceError

logger = logging.getLogger(__name__)


def unauthorized() -> Response:
    """The bare 401: no body, no reason."""
    return Response(status_code=401, headers={"WWW-Authenticate": "Bearer"})


class PathCorsMiddleware:
    """Starlette's CORS middleware, applied to one path prefix only."""

    def __init__(self, app: ASGIApp, /, *, prefix: str, **options: Any) -> None:
        self._app = app
        self._prefix = prefix
        self._cors = CORSMiddleware(app, **options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and str(scope.get("path", "")).startswith(self._prefix):
            await self._cors(scope, receive, send)
        else:
            await self._app(scope, receive, send)


def _input_status(exc: InputError) -> int:
    if isinstance(exc, UnknownServiceError):
        return 404
    if isinstance(exc, PrefetchUnavailableError):
        return 412
    return 400


def _answer(work: Callable[[], Response]) -> Response:
    """Translate errors at the boundary (CDS Hooks 2.0 §HTTP Response)."""
    try:
        return work()
    except AuthenticationError:
        return unauthorized()
    except InputError as exc:
        return outcome_response(_input_status(exc), str(exc))
    except ValidationError as exc:
        return outcome_response(400, f"invalid body: {exc.error_count()} problems")
    except SQLAlchemyError as exc:
        logger.error("CDS Hooks call failed on the database: %s", type(exc).__name__)
        return outcome_response(503, "database unavailable, retry later")


def build_router(service: CdsHooksService, *, concurrency: int) -> APIRouter:
    """The routes; at most ``concurrency`` calls are worked on at once, the rest queue.

    The work of a call (JWT verification, a transaction) runs in a worker thread. More
    threads than database connections would only wait for the pool while competing for the
    interpreter, which stretches every call: a bounded first-come-first-served queue keeps
    the latency of the unlucky calls close to that of the typical one.
    """
    router = APIRouter(prefix=SERVICES_PATH, tags=["cds-hooks"])
    limiter = CapacityLimiter(concurrency)

    async def in_thread(work: Callable[[], Response]) -> Response:
        return await to_thread.run_sync(_answer, work, limiter=limiter)

    @router.get("", summary="CDS Hooks discovery")
    def discover() -> JSONResponse:
        return JSONResponse(dump(service.discovery()))

    @router.post("/{service_id}", summary="Call a CDS service")
    async def call(service_id: str, request: Request) -> Response:
        body = await request.body()
        authorization = request.headers.get("authorization")

        def work() -> Response:
            return JSONResponse(service.answer(service.service(service_id), authorization, body))

        return await in_thread(work)

    @router.post("/{service_id}/feedback", summary="Feedback on cards of a CDS service")
    async def feedback(service_id: str, request: Request) -> Response:
        body = await request.body()
        authorization = request.headers.get("authorization")

        def work() -> Response:
            hook = service.service(service_id)
            endpoint = service.endpoint(service_id)
            principal = service.authenticate(authorization, [endpoint, f"{endpoint}/feedback"])
            service.feedback(hook, principal, Feedback.model_validate_json(body))
            return Response(status_code=200)

        return await in_thread(work)

    return router


def install(app: FastAPI, ctx: EngineContext) -> None:
    """Mount the CDS Hooks routes and their CORS policy.

    Raises:
        ConfigurationError: verification switched off outside embedded mode, or an invalid
            trusted-issuers or suggestions file.
    """
    settings = ctx.settings
    verifier: HookTokenVerifier | None = None
    if settings.cds_hooks_auth_disabled:
        if not settings.embedded:
            raise ConfigurationError(
                "CDSFUSION_CDS_HOOKS_AUTH_DISABLED is only allowed in embedded mode"
            )
        logger.warning(
            "!!! CDS Hooks JWT verification is OFF (CDSFUSION_CDS_HOOKS_AUTH_DISABLED): any "
            "caller can read cards. For local demos only. !!!"
        )
    else:
        issuers = load_issuers(settings.cds_hooks_issuers_file)
        if not issuers:
            logger.warning(
                "no trusted CDS Hooks issuers (CDSFUSION_CDS_HOOKS_ISSUERS_FILE): every "
                "CDS Hooks call will be refused with 401"
            )
        cache = JwksCache(
            httpx.Client(timeout=settings.cds_hooks_fhir_timeout_s),
            ttl_s=settings.cds_hooks_jwks_cache_s,
        )
        verifier = HookTokenVerifier(issuers, cache)
    service = CdsHooksService(ctx, shared_outputs(app, ctx), verifier)
    app.state.cds_hooks = service
    app.add_middleware(
        PathCorsMiddleware,
        prefix=SERVICES_PATH,
        allow_origins=list(settings.cds_hooks_cors_origins),
        allow_methods=["GET", "POST", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type"],
        max_age=600,
    )
    app.include_router(build_router(service, concurrency=settings.db_pool_size))
