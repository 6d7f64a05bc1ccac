"""The CDS Hooks service: authenticate, find the patient, pick the stored result, make cards.

Nothing is scored during a call: cards come from predictions already in the database, so
the web process never loads the model (or torch).
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client import Counter
from pydantic import ValidationError
from sqlalchemy.orm import Session

from cds.core.aligner.task import TaskDefinition
from cds.core.db.models import BundleStatus, Prediction, PredictionStatus
from cds.core.db.session import commit_waits_for_flush, transaction
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
from cds.hooks.models import CdsServiceRequest, Discovery, Feedback, Suggestion, dump
from cds.hooks.prefetch import (
    find_by_identifiers,
    known_by_fhir_id,
    patient_id_of,
    patient_resource,
)
from cds.hooks.services import HookService, discovery, hook_services
from cds.hooks.state import ShownState, shown_state
from cds.modelcard import ModelCard

logger = logging.getLogger(__name__)

#: A JSON-ready response body.
JsonBody = dict[str, Any]

SERVICES_PATH = "/cds-services"
#: Cards kept per process (a few kB each).
CARD_CACHE_SIZE = 4096
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
        self._card_lock = threading.Lock()
        self._card_cache: OrderedDict[
            tuple[uuid.UUID, PredictionStatus], tuple[ModelCard | None, JsonBody]
        ] = OrderedDict()
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
        """Verify the bearer JWT and record its ``jti`` (in a transaction of its own).

        Raises:
            AuthenticationError: missing, invalid, untrusted or replayed token.
        """
        principal = self._verify(authorization, audiences)
        with transaction(self._ctx.session_factory) as session:
            self._consume(session, principal)
        return principal

    def _verify(self, authorization: str | None, audiences: Sequence[str]) -> Principal:
        """The token's header, signature and claims (no database)."""
        if self._verifier is None:
            return Principal(issuer="embedded", subject=None, jti=None, expires_at=None)
        try:
            scheme, _, token = (authorization or "").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise AuthenticationError("no bearer token")
            return self._verifier.verify(token.strip(), audiences)
        except AuthenticationError as exc:
            self._refused(exc)
            raise

    def _consume(self, session: Session, principal: Principal) -> None:
        """Record the ``jti`` in the caller's transaction; a replay is refused."""
        try:
            self._guard.consume(session=session, principal=principal)
        except AuthenticationError as exc:
            self._refused(exc)
            raise

    def _refused(self, exc: AuthenticationError) -> None:
        self._rejected.labels(str(exc).split(" (")[0]).inc()
        logger.info("CDS Hooks call refused: %s", exc)

    def answer(self, service: HookService, authorization: str | None, body: bytes) -> JsonBody:
        """One CDS service call, from the raw request to the response body.

        The common case costs one transaction: the ``jti`` is recorded, the patient known by
        its FHIR id on ``fhirServer`` is found and the stored state that decides the card is
        read. A token is spent even when the body then proves malformed. Only a patient the
        engine knows by business identifiers alone (prefetch, or a read of the FHIR server,
        which no transaction is held open for) takes the longer path.

        Raises:
            AuthenticationError: the token is refused (401).
            InputError: a malformed request (400), or the patient cannot be identified (412).
            pydantic.ValidationError: a body that is not a CDS Hooks request (400).
        """
        principal = self._verify(authorization, [self.endpoint(service.id)])
        problem: InputError | ValidationError | None = None
        answered: JsonBody | None = None
        with transaction(self._ctx.session_factory) as session:
            # The token record alone does not need a durable commit (see ReplayGuard).
            commit_waits_for_flush(session, False)
            self._consume(session, principal)
            try:
                request = CdsServiceRequest.model_validate_json(body)
                if request.hook != service.hook:
                    raise InputError(
                        f"service {service.id} answers {service.hook}, not {request.hook}"
                    )
                patient_id = patient_id_of(request)
            except (InputError, ValidationError) as exc:
                problem = exc
            else:
                found = known_by_fhir_id(
                    session=session, fhir_server=request.fhirServer, patient_id=patient_id
                )
                if found is not None:
                    self._anchor(session, service, found)
                    answered = self._response(session, service, found)
        if problem is not None:
            raise problem
        if answered is not None:
            return answered
        resource = patient_resource(
            request,
            patient_id,
            principal,
            timeout_s=self._ctx.settings.cds_hooks_fhir_timeout_s,
        )
        with transaction(self._ctx.session_factory) as session:
            found = find_by_identifiers(
                session=session, resource=resource, issuer_map=self._ctx.settings.issuer_map
            )
            if found is None:
                return {"cards": []}
            self._anchor(session, service, found)
            return self._response(session, service, found)

    def _anchor(self, session: Session, service: HookService, patient: uuid.UUID) -> None:
        """A task anchored on CDS Hooks calls starts an assessment (once per period)."""
        if service.task.anchor.kind != "cds-hooks":
            return
        commit_waits_for_flush(session, True)  # the trigger starts an assessment: keep it
        record_trigger(
            session=session,
            task=service.task,
            patient_id=patient,
            reason="cds-hooks",
            at=utcnow(),
            period=CDS_HOOKS_PERIOD,
        )

    def _response(self, session: Session, service: HookService, patient: uuid.UUID) -> JsonBody:
        """The response body: the card the stored state calls for (CDS Hooks 2.0 §Card)."""
        task = service.task
        state = shown_state(session, task_id=task.id, patient=patient)
        key = f"{service.id}|{patient}"
        if state.shows_prediction:
            return {"cards": [self._prediction_card(session, state)]}
        if state.bundle_id is not None and state.bundle_status in _SCORING:
            card = pending_card(
                title=task.title,
                key=f"{key}|{state.bundle_id}",
                cfg=self._cards,
                anchor_at=state.bundle_anchor,
            )
        elif state.prediction_id is not None:
            return {"cards": [self._prediction_card(session, state)]}
        else:
            card = waiting_card(
                title=task.title, waiting_for=waiting_for(task), key=key, cfg=self._cards
            )
        return {"cards": [dump(card)]}

    def _prediction_card(self, session: Session, state: ShownState) -> JsonBody:
        """The (serialised) card of the stored prediction ``state`` names.

        A card is a pure function of the prediction, its bundle and inputs (which never
        change once written), its status, and the serving model's card: it is built once per
        (prediction, status, model card) and kept in a bounded cache; a new prediction, a
        status change or another model card gives a new key.
        """
        assert state.prediction_id is not None and state.prediction_status is not None
        model_card = self._outputs.cards.current()
        key = (state.prediction_id, state.prediction_status)
        with self._card_lock:
            cached = self._card_cache.get(key)
            if cached is not None and cached[0] is model_card:
                self._card_cache.move_to_end(key)
                return cached[1]
        prediction = session.get_one(Prediction, state.prediction_id)
        assessment = self._outputs.assessment(session, prediction, brief=True)
        card = dump(prediction_card(assessment, self._cards))
        with self._card_lock:
            self._card_cache[key] = (model_card, card)
            while len(self._card_cache) > CARD_CACHE_SIZE:
                self._card_cache.popitem(last=False)
        return card

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
