"""Writing results to the EHR's FHIR server (``CDSFUSION_FHIR_SERVER_URL``) via the outbox.

The worker announces each new or superseded prediction on the outbox topic
``prediction.changed``; :func:`upstream_handler` is that topic's handler in the relay. For a
prediction with a RiskAssessment it PUTs, in order, the model's ``Device``, the
``RiskAssessment`` and its ``Provenance``, each at a stable id (the prediction's UUID; the
Device's id derives from the model's name, version and digest). PUT with a client-chosen id
is an update-or-create (R4 §3.1.0.4.3), so a redelivery writes the same resources again and
changes nothing: delivery is idempotent. A superseded prediction is written again with
status ``amended``. Predictions with insufficient data have no RiskAssessment; nothing is
written for them.

Failures raise, so the relay keeps the message ``pending`` and retries with backoff; after
``CDSFUSION_JOB_MAX_ATTEMPTS`` failures the message is ``dead``. Delivery state is visible
per prediction in the ``outbox`` table (``state``, ``attempts``, ``last_error`` is
:class:`UpstreamUnavailableError` or :class:`UpstreamRejectedError`, ``delivered_at``;
:func:`delivery_state`) and in the metrics ``cdsfusion_fhir_upstream_writes_total`` and
``cdsfusion_outbox_*{topic="prediction.changed"}``. Dead messages can be put back with
:func:`requeue_dead`.

Authorization: SMART Backend Services when ``CDSFUSION_FHIR_CLIENT_ID`` and
``CDSFUSION_FHIR_PRIVATE_KEY_FILE`` are set, else ``CDSFUSION_FHIR_BEARER_TOKEN``
(the classes of ``connectors.fhir.auth``). With no server URL the handler writes nothing:
results are kept and served locally.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from prometheus_client import Counter
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cds.core.db.models import OutboxMessage, OutboxState, Prediction, PredictionStatus
from cds.core.db.types import utcnow
from cds.core.errors import StorageError
from cds.core.pipeline.handlers import Handler
from cds.core.repository.outbox import TOPIC_PREDICTION
from cds.core.runtime import EngineContext
from cds.core.settings import Settings
from cds.fhir.outputs import FhirOutputs

logger = logging.getLogger(__name__)

#: The outbox topic of new and superseded predictions (written by ``worker.scoring``).
FHIR_JSON = "application/fhir+json"


class UpstreamUnavailableError(StorageError):
    """The FHIR server could not be reached, timed out, or answered 408, 429 or 5xx."""


class UpstreamRejectedError(StorageError):
    """The FHIR server refused a write with another 4xx (authorization, validation)."""


def _authorization(settings: Settings, http: httpx.Client) -> Any:
    from connectors.fhir.auth import authorization_from_settings

    return authorization_from_settings(settings, http, server=settings.fhir_server_url or "")


class UpstreamWriter:
    """PUTs resources to one FHIR server.

    Args:
        base: the server's base URL.
        http: the HTTP client (timeouts and TLS settings are its own).
        authorization: gives the ``Authorization`` header (``header()``), or ``None``.
        writes: counter of writes by resource type and outcome, or ``None``.
    """

    def __init__(
        self,
        base: str,
        *,
        http: httpx.Client,
        authorization: Any = None,
        writes: Counter | None = None,
    ) -> None:
        self.base = base.rstrip("/")
        self._http = http
        self._auth = authorization
        self._writes = writes

    @classmethod
    def from_settings(cls, settings: Settings, *, writes: Counter | None = None) -> UpstreamWriter:
        verify: bool | str = str(settings.fhir_ca_bundle) if settings.fhir_ca_bundle else True
        http = httpx.Client(timeout=settings.fhir_write_timeout_s, verify=verify)
        return cls(
            settings.fhir_server_url or "",
            http=http,
            authorization=_authorization(settings, http),
            writes=writes,
        )

    def _count(self, resource_type: str, outcome: str) -> None:
        if self._writes is not None:
            self._writes.labels(resource_type, outcome).inc()

    def put(self, resource: dict[str, Any]) -> None:
        """``PUT {base}/{type}/{id}``; raises on anything but 200/201.

        Raises:
            UpstreamUnavailableError: no answer, 408, 429 or 5xx (retry later).
            UpstreamRejectedError: another 4xx.
        """
        resource_type, resource_id = resource["resourceType"], resource["id"]
        headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}
        if self._auth is not None:
            value = self._auth.header()
            if value:
                headers["Authorization"] = value
        try:
            response = self._http.put(
                f"{self.base}/{resource_type}/{resource_id}", json=resource, headers=headers
            )
        except httpx.HTTPError as exc:
            self._count(resource_type, "unreachable")
            raise UpstreamUnavailableError(
                f"FHIR server unreachable ({type(exc).__name__})"
            ) from None
        status = response.status_code
        if status in (200, 201):
            self._count(resource_type, "written")
            return
        self._count(resource_type, f"http-{status}")
        if status in (408, 429) or status >= 500:
            raise UpstreamUnavailableError(f"FHIR server answered HTTP {status}")
        raise UpstreamRejectedError(f"FHIR server refused {resource_type} with HTTP {status}")

    def put_all(self, resources: Sequence[dict[str, Any]]) -> None:
        for resource in resources:
            self.put(resource)

    def close(self) -> None:
        self._http.close()


def upstream_resources(
    session: Session, outputs: FhirOutputs, prediction: Prediction, target_base: str
) -> list[dict[str, Any]]:
    """Device, RiskAssessment and Provenance of ``prediction`` for ``target_base``.

    Empty for a prediction with insufficient data (there is no RiskAssessment to write).
    """
    if prediction.status is PredictionStatus.INSUFFICIENT_DATA:
        return []
    assessment = outputs.assessment(session, prediction)
    style = outputs.upstream_style(target_base)
    return [
        outputs.device_for(assessment),
        outputs.risk_assessment(assessment, style),
        outputs.provenance(assessment, style),
    ]


def upstream_handler(
    ctx: EngineContext,
    *,
    outputs: FhirOutputs | None = None,
    writer: UpstreamWriter | None = None,
) -> Handler:
    """The relay's handler for ``prediction.changed``.

    Args:
        ctx: the process context (settings, metrics registry).
        outputs: the resource builders. Defaults to one built from settings.
        writer: the HTTP writer. Defaults to one for ``CDSFUSION_FHIR_SERVER_URL``.
    """
    settings = ctx.settings
    if not settings.fhir_server_url and writer is None:

        def keep_local(_session: Session, message: OutboxMessage) -> None:
            logger.debug("prediction message %s: no upstream FHIR server, kept local", message.id)

        return keep_local
    writes = Counter(
        "cdsfusion_fhir_upstream_writes_total",
        "Resources PUT to the upstream FHIR server, by resource type and outcome",
        ["resource_type", "outcome"],
        registry=ctx.metrics,
    )
    builders = outputs or FhirOutputs(settings)
    target = writer or UpstreamWriter.from_settings(settings, writes=writes)

    def handle(session: Session, message: OutboxMessage) -> None:
        prediction_id = uuid.UUID(str(message.payload["prediction_id"]))
        prediction = session.get(Prediction, prediction_id)
        if prediction is None:
            raise LookupError(f"prediction {prediction_id} not found")
        resources = upstream_resources(session, builders, prediction, target.base)
        target.put_all(resources)
        logger.info(
            "prediction %s (%s): %d resources written upstream",
            prediction_id,
            message.payload.get("reason", "?"),
            len(resources),
        )

    return handle


@dataclass(frozen=True)
class Delivery:
    """One upstream delivery of a prediction, as the outbox records it."""

    reason: str
    state: OutboxState
    attempts: int
    last_error: str | None
    delivered_at: Any


def delivery_state(*, session: Session, prediction_id: uuid.UUID) -> list[Delivery]:
    """The upstream deliveries of one prediction, oldest first (for review pages and tests)."""
    rows = session.scalars(
        select(OutboxMessage)
        .where(OutboxMessage.topic == TOPIC_PREDICTION, OutboxMessage.aggregate_id == prediction_id)
        .order_by(OutboxMessage.created_at)
    )
    return [
        Delivery(
            str(m.payload.get("reason", "")), m.state, m.attempts, m.last_error, m.delivered_at
        )
        for m in rows
    ]


def requeue_dead(*, session: Session) -> int:
    """Put dead ``prediction.changed`` messages back to pending (after an outage).

    Returns:
        How many messages were requeued.
    """
    result = session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.topic == TOPIC_PREDICTION, OutboxMessage.state == OutboxState.DEAD)
        .values(state=OutboxState.PENDING, attempts=0, next_attempt_at=utcnow())
    )
    return int(getattr(result, "rowcount", 0) or 0)
