"""FHIR subscription notification endpoints on the HTTP port.

Each subscription created by ``cdsfusion fhir subscribe`` gets a random endpoint key; its
``channel.endpoint`` is ``{CDSFUSION_FHIR_NOTIFY_BASE_URL}/fhir/notify/{key}``. Paths:

==========================================  =====================================================
``PUT /fhir/notify/{key}/{Type}/{id}``      classic R4 rest-hook with payload (HAPI FHIR)
``DELETE /fhir/notify/{key}/{Type}/{id}``   deletion (HAPI FHIR): the resource's events retracted
``POST /fhir/notify/{key}``, empty body     rest-hook without payload (HAPI FHIR): the engine
                                            searches the server for what changed
``POST /fhir/notify/{key}``, a resource     Medplum rest-hook: the bare resource, ``X-Signature``
                                            HMAC-SHA256 of the body checked when
                                            ``CDSFUSION_FHIR_WEBHOOK_SECRET`` is set;
                                            ``X-Medplum-Deleted-Resource`` marks a deletion
``POST /fhir/notify/{key}``, a Bundle       Subscriptions R5 Backport IG (STU 1.1) handshake,
                                            heartbeat, event-notification; payload ``empty``,
                                            ``id-only`` or ``full-resource``
==========================================  =====================================================

Answers: ``200`` with an informational OperationOutcome only after the resources are
committed to the timeline. ``400`` invalid JSON, wrong or mismatched ``resourceType``,
invalid content; ``401`` bad signature; ``404`` unknown subscription; ``413`` body over
``CDSFUSION_FHIR_NOTIFY_MAX_BYTES``; ``503`` database or upstream FHIR server unavailable
(the server retries). A refused notification stores nothing.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool

from cds.api.outcome import FHIR_JSON, operation_outcome, outcome_response
from cds.core.errors import InputError, StorageError
from cds.core.runtime import EngineContext
from connectors.fhir.metrics import FhirMetrics
from connectors.fhir.monitor import HeartbeatMonitor
from connectors.fhir.receiver import (
    FhirReceiver,
    Outcome,
    SignatureError,
    UnknownSubscriptionError,
)

logger = logging.getLogger(__name__)

PREFIX = "/fhir/notify"


class BodyTooLargeError(InputError):
    """The body passed ``CDSFUSION_FHIR_NOTIFY_MAX_BYTES``."""


def install(app: FastAPI, ctx: EngineContext) -> None:
    """Mount the notification endpoints and start the heartbeat monitor with the app."""
    receiver = FhirReceiver(
        session_factory=ctx.session_factory,
        settings=ctx.settings,
        metrics=FhirMetrics.register(ctx.metrics),
    )
    app.include_router(build_router(receiver, max_bytes=ctx.settings.fhir_notify_max_bytes))
    monitor = HeartbeatMonitor(receiver, missed=ctx.settings.fhir_missed_heartbeats)
    previous = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(application: FastAPI) -> AsyncIterator[Any]:
        monitor.start()
        try:
            async with previous(application) as state:
                yield state
        finally:
            monitor.stop()
            receiver.close()

    app.router.lifespan_context = lifespan


def build_router(receiver: FhirReceiver, *, max_bytes: int) -> APIRouter:
    """The notification routes around ``receiver`` (separate from install for tests)."""
    router = APIRouter(prefix=PREFIX, tags=["fhir-notifications"])

    @router.put("/{key}/{resource_type}/{resource_id}")
    async def put_resource(
        key: str, resource_type: str, resource_id: str, request: Request
    ) -> JSONResponse:
        """Classic R4 rest-hook with payload (HAPI FHIR)."""
        return await _answer(
            receiver,
            request,
            max_bytes,
            lambda body, sender: receiver.put(key, resource_type, resource_id, body, sender),
        )

    @router.delete("/{key}/{resource_type}/{resource_id}")
    async def delete_resource(
        key: str, resource_type: str, resource_id: str, request: Request
    ) -> JSONResponse:
        """Deletion (HAPI FHIR): the resource's current events are retracted."""
        return await _answer(
            receiver,
            request,
            max_bytes,
            lambda _body, sender: receiver.delete(key, resource_type, resource_id, sender),
        )

    @router.post("/{key}")
    async def notify(key: str, request: Request) -> JSONResponse:
        """Empty POST (HAPI), bare resource (Medplum) or Backport IG notification Bundle."""
        headers = {k.lower(): v for k, v in request.headers.items()}
        return await _answer(
            receiver,
            request,
            max_bytes,
            lambda body, sender: receiver.post(key, body, headers, sender),
        )

    return router


async def _read_body(request: Request, max_bytes: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise BodyTooLargeError("body too large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise BodyTooLargeError("body too large")
        chunks.append(chunk)
    return b"".join(chunks)


async def _answer(
    receiver: FhirReceiver,
    request: Request,
    max_bytes: int,
    handle: Callable[[bytes, str], Outcome],
) -> JSONResponse:
    sender = request.client.host if request.client else ""
    try:
        body = await _read_body(request, max_bytes)
        outcome = await run_in_threadpool(handle, body, sender)
    except BodyTooLargeError as exc:
        return _refuse(receiver, 413, str(exc))
    except UnknownSubscriptionError as exc:
        return _refuse(receiver, 404, str(exc))
    except SignatureError as exc:
        return _refuse(receiver, 401, str(exc))
    except InputError as exc:
        return _refuse(receiver, 400, str(exc))
    except (StorageError, SQLAlchemyError) as exc:
        logger.warning("FHIR notification not stored: %s", type(exc).__name__)
        return _refuse(receiver, 503, "not stored: retry later", code="transient")
    if receiver.metrics is not None:
        receiver.metrics.notifications.labels("accepted").inc()
    return JSONResponse(
        operation_outcome(
            outcome.status, outcome.diagnostics, code="informational", severity="information"
        ),
        status_code=outcome.status,
        media_type=FHIR_JSON,
    )


def _refuse(
    receiver: FhirReceiver, status: int, diagnostics: str, code: str | None = None
) -> JSONResponse:
    if receiver.metrics is not None:
        receiver.metrics.notifications.labels(str(status)).inc()
    logger.info("FHIR notification refused with %d", status)
    return outcome_response(status, diagnostics, code=code)
