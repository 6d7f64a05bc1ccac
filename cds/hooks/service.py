"""The CDS Hooks service: authenticate, find the patient, pick the stored result, make cards.

Nothing is scored during a call: cards come from predictions already in the database, so
the web process never loads the model (or torch).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client import Counter
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from cds.core.aligner.task import TaskDefinition
from cds.core.db.models import Bundle, BundleStatus, Patient, Prediction, PredictionStatus
from cds.core.db.session import transaction
from cds.core.db.types import utcnow
from cds.core.errors import ConfigurationError, InputError
from cds.core.pipeline.triggers import CDS_HOOKS_PERIOD, record_trigger
from cds.core.repository.audit import append_audit
from cds.core.runtime import EngineContext
from cds.fhir.outputs import FhirOutputs
from cds.fhir.urls import model_card_url, public_base, review_url
from cds.hooks.auth import AuthenticationError, HookTokenVerifier, Principal, ReplayGuard
from cds.hooks.cards import (
    CardSettings,
    pending_card,
    prediction_card,
    waiting_card,
)
from cds.hooks.models import (
    Card,
    CdsServiceRequest,
    CdsServiceResponse,
    Discovery,
    Feedback,
    Suggestion,
)
from cds.hooks.prefetch import (
    find_by_identifiers,
    known_by_fhir_id,
    patient_id_of,
    patient_resource,
)
from cds.hooks.services import HookService, discovery, hook_services

logger = logging.getLogger(__name__)

SERVICES_PATH = "/cds-services"
_SHOWN = (PredictionStatus.FINAL, PredictionStatus.INSUFFICIENT_DATA)
_SCORING = (BundleStatus.READY, BundleStatus.QUEUED)


class UnknownServiceError(InputError):
    """No CDS service has this id (404)."""


def load_suggestions(path: Path | None) -> dict[str, list[Suggestion]]:
    """The configured suggestions per card indicator (``CDSFUSION_CDS_SUGGESTIONS_FILE``).

    The file is JSON: ``{"critical": [Suggestion, ...], "warning": [...]}`` with CDS Hooks
    Suggestion objects. Without a file, cards carry no suggestions.

    Raises:
        ConfigurationError: unreadable or invalid file.
    """
    if path is None:
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return {
            indicator: [Suggestion.model_validate(s) for s in items]
            for indicator, items in dict(raw).items()
            if indicator in {"info", "warning", "critical"}
        }
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigurationError(f"CDSFUSION_CDS_SUGGESTIONS_FILE invalid: {exc}") from exc


def waiting_for(task: TaskDefinition) -> str:
    """What the task's anchor is, in words (``a CR/DX study of the chest``)."""
    anchor = task.anchor
    if anchor.kind == "imaging-study":
        kinds = "/".join(anchor.modalities) or "imaging"
        where = f" of the {'/'.join(anchor.body_parts).lower()}" if anchor.body_parts else ""
        return f"a {kinds} study{where}"
    return {
        "encounter": "an encounter",
        "cds-hooks": "a CDS Hooks request",
        "schedule": "the next scheduled assessment",
    }.get(anchor.kind, "its anchor event")


class CdsHooksService:
    """Discovery, service calls and feedback for one process.

    Args:
        ctx: the process context.
        outputs: the shared outbound builders (tasks, model card, thresholds).
        verifier: the JWT verifier; ``None`` turns verification off (embedded demos only).
    """

    def __init__(
        self, ctx: EngineContext, outputs: FhirOutputs, verifier: HookTokenVerifier | None
    ) -> None:
        settings = ctx.settings
        self._ctx = ctx
        self._outputs = outputs
        self._verifier = verifier
        self._guard = ReplayGuard()
        self.services: dict[str, HookService] = hook_services(outputs.tasks)
        self._base = public_base(settings)
        self._cards = CardSettings(
            levels=outputs.levels,
            review_url=lambda pid: review_url(settings, pid),
            model_card_url=lambda name, version: model_card_url(settings, name, version),
            icon_url=f"{self._base}/models/icon.png",
            smart_app_url=settings.cds_smart_app_url,
            suggestions=load_suggestions(settings.cds_suggestions_file),
        )
        self._rejected = Counter(
            "cdsfusion_cds_hooks_auth_failures_total",
            "CDS Hooks calls refused with 401, by reason",
            ["reason"],
            registry=ctx.metrics,
        )

    def discovery(self) -> Discovery:
        return discovery(self.services)

    def endpoint(self, service_id: str) -> str:
        """The service's absolute URL: the ``aud`` its callers must use."""
        return f"{self._base}{SERVICES_PATH}/{service_id}"

    def service(self, service_id: str) -> HookService:
        found = self.services.get(service_id)
        if found is None:
            raise UnknownServiceError(f"no CDS service {service_id!r}")
        return found

    def authenticate(self, authorization: str | None, audiences: Sequence[str]) -> Principal:
        """Verify the bearer JWT and record its ``jti``.

        Raises:
            AuthenticationError: missing, invalid, untrusted or replayed token.
        """
        if self._verifier is None:
            return Principal(issuer="embedded", subject=None, jti=None, expires_at=None)
        try:
            scheme, _, token = (authorization or "").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise AuthenticationError("no bearer token")
            principal = self._verifier.verify(token.strip(), audiences)
            with transaction(self._ctx.session_factory) as session:
                self._guard.consume(session=session, principal=principal)
        except AuthenticationError as exc:
            self._rejected.labels(str(exc).split(" (")[0]).inc()
            logger.info("CDS Hooks call refused: %s", exc)
            raise
        return principal

    def call(
        self, service: HookService, principal: Principal, request: CdsServiceRequest
    ) -> CdsServiceResponse:
        """Cards for one hook call (CDS Hooks 2.0 §Calling a CDS Service).

        Raises:
            InputError: a malformed context.
            PrefetchUnavailableError: the patient cannot be identified (412).
        """
        patient_id = patient_id_of(request)
        with self._ctx.session_factory() as session:
            found = known_by_fhir_id(
                session=session, fhir_server=request.fhirServer, patient_id=patient_id
            )
        if found is not None:
            self._anchor(service, found)
            with self._ctx.session_factory() as session:
                return CdsServiceResponse(cards=self._cards_for(session, service, found))
        resource = patient_resource(
            request,
            patient_id,
            principal,
            timeout_s=self._ctx.settings.cds_hooks_fhir_timeout_s,
        )
        with self._ctx.session_factory() as session:
            found = find_by_identifiers(
                session=session, resource=resource, issuer_map=self._ctx.settings.issuer_map
            )
        if found is None:
            return CdsServiceResponse(cards=[])
        self._anchor(service, found)
        with self._ctx.session_factory() as session:
            return CdsServiceResponse(cards=self._cards_for(session, service, found))

    def _anchor(self, service: HookService, patient: uuid.UUID) -> None:
        """A task anchored on CDS Hooks calls starts an assessment (once per period)."""
        if service.task.anchor.kind != "cds-hooks":
            return
        with transaction(self._ctx.session_factory) as session:
            record_trigger(
                session=session,
                task=service.task,
                patient_id=patient,
                reason="cds-hooks",
                at=utcnow(),
                period=CDS_HOOKS_PERIOD,
            )

    def _cards_for(self, session: Session, service: HookService, patient: uuid.UUID) -> list[Card]:
        task = service.task
        merged = select(Patient.id).where(Patient.merged_into_id == patient).scalar_subquery()
        latest = session.execute(
            select(Prediction, Bundle.anchor_at)
            .join(Bundle, Bundle.id == Prediction.bundle_id)
            .where(
                or_(Prediction.patient_id == patient, Prediction.patient_id.in_(merged)),
                Prediction.task_id == task.id,
                Prediction.status.in_(_SHOWN),
            )
            .order_by(Bundle.anchor_at.desc(), Prediction.created_at.desc())
            .limit(1)
        ).first()
        bundle = session.scalar(
            select(Bundle)
            .where(
                or_(Bundle.patient_id == patient, Bundle.patient_id.in_(merged)),
                Bundle.task_id == task.id,
                Bundle.status != BundleStatus.SUPERSEDED,
            )
            .order_by(Bundle.anchor_at.desc(), Bundle.created_at.desc())
            .limit(1)
        )
        key = f"{service.id}|{patient}"
        if latest is not None and (bundle is None or latest[1] >= bundle.anchor_at):
            assessment = self._outputs.assessment(session, latest[0], brief=True)
            return [prediction_card(assessment, self._cards)]
        if bundle is not None and bundle.status in _SCORING:
            return [
                pending_card(
                    title=task.title,
                    key=f"{key}|{bundle.id}",
                    cfg=self._cards,
                    anchor_at=bundle.anchor_at,
                )
            ]
        if latest is not None:
            return [
                prediction_card(
                    self._outputs.assessment(session, latest[0], brief=True), self._cards
                )
            ]
        return [
            waiting_card(title=task.title, waiting_for=waiting_for(task), key=key, cfg=self._cards)
        ]

    def feedback(self, service: HookService, principal: Principal, body: Feedback) -> int:
        """Record each feedback item in the audit log (CDS Hooks 2.0 §Feedback).

        The user's free-text comment is not stored (it may carry patient data); the audit
        entry says whether there was one. Returns how many items were recorded.
        """
        actor = f"cds-client:{principal.issuer}"
        if principal.subject:
            actor += f"|{principal.subject}"
        with transaction(self._ctx.session_factory) as session:
            for item in body.feedback:
                details: dict[str, Any] = {
                    "service": service.id,
                    "hook": service.hook,
                    "outcome": item.outcome,
                    "outcome_timestamp": item.outcomeTimestamp,
                    "accepted_suggestions": [s.id for s in item.acceptedSuggestions or ()],
                }
                if item.overrideReason is not None:
                    reason = item.overrideReason.reason
                    if reason is not None:
                        details["override_reason"] = {"system": reason.system, "code": reason.code}
                    details["has_user_comment"] = bool(item.overrideReason.userComment)
                prediction = _prediction_named(session, item.card)
                if prediction is not None:
                    details["prediction_id"] = str(prediction)
                append_audit(
                    session=session,
                    actor=actor[:255],
                    action="cds.feedback",
                    occurred_at=utcnow(),
                    entity_type="card",
                    entity_id=item.card[:128],
                    details=details,
                )
        return len(body.feedback)


def _prediction_named(session: Session, card_uuid: str) -> uuid.UUID | None:
    try:
        candidate = uuid.UUID(card_uuid)
    except ValueError:
        return None
    return candidate if session.get(Prediction, candidate) is not None else None
