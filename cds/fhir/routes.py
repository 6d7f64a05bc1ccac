"""HTTP: RiskAssessments, their Provenance and Device, and the timeline views, as FHIR R4 JSON.

* ``GET /fhir/RiskAssessment/{id}``; ``GET /fhir/RiskAssessment?patient=...&date=...``
  (searchset Bundle; ``patient`` or ``subject`` required: ``Patient/{uuid}``, a bare
  uuid, or the patient's id on ``CDSFUSION_FHIR_SERVER_URL``; ``date`` repeatable with
  R4 prefixes, on ``occurrenceDateTime``; ``_count`` (default 50, at most 200) and
  ``_offset`` page).
* ``GET /fhir/Provenance/{id}``, ``GET /fhir/Device/{id}``.
* ``GET /fhir/{Patient,Observation,ImagingStudy,DocumentReference}/{id}``: the views.

Errors are OperationOutcomes (``cds.api.outcome``). A prediction without a number answers
404 with diagnostics saying what data was missing (there is no RiskAssessment for it).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from cds.api.outcome import FHIR_JSON, outcome_response
from cds.core.clinical import IdentifierIn
from cds.core.db.models import Patient, PatientIdentifier, Prediction, PredictionStatus
from cds.core.errors import MalformedInputError
from cds.core.repository.patients import find_patient
from cds.core.runtime import EngineContext
from cds.fhir.assessment import FHIR_PATIENT_SYSTEM_PREFIX
from cds.fhir.outputs import FhirOutputs, prediction_by_fhir_id, shared_outputs
from cds.fhir.riskassessment import NotEnoughDataError
from cds.fhir.search import DateParam, parse_date
from cds.fhir.urls import FHIR_PREFIX, fhir_base
from cds.fhir.validation import validate
from cds.fhir.views import (
    document_reference_view,
    imaging_study_view,
    observation_view,
    patient_view,
)

logger = logging.getLogger(__name__)

DEFAULT_COUNT = 50
MAX_COUNT = 200
#: Statuses that have a RiskAssessment (insufficient data has none).
ASSESSED = (PredictionStatus.FINAL, PredictionStatus.SUPERSEDED, PredictionStatus.CANCELLED)

View = Callable[[Session, uuid.UUID], dict[str, Any] | None]
VIEWS: dict[str, View] = {
    "Patient": lambda s, i: patient_view(session=s, patient_id=i),
    "Observation": lambda s, i: observation_view(session=s, event_id=i),
    "ImagingStudy": lambda s, i: imaging_study_view(session=s, study_id=i),
    "DocumentReference": lambda s, i: document_reference_view(session=s, event_id=i),
}


def fhir_response(resource: dict[str, Any]) -> JSONResponse:
    return JSONResponse(resource, media_type=FHIR_JSON)


def not_enough_data(title: str, missing: list[str]) -> str:
    """The one wording of "not enough data" (OperationOutcomes and cards)."""
    return f"Not enough data for {title}: missing {', '.join(missing) or 'required data'}"


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def resolve_patient_param(
    session: Session, value: str, upstream_base: str | None
) -> list[uuid.UUID]:
    """The engine patients a ``patient`` search value names (with patients merged into it).

    Accepted: ``Patient/{engine uuid}``, ``{engine uuid}``, ``{base}/Patient/{id}`` and
    ``Patient/{id}`` or ``{id}`` on ``upstream_base``.
    """
    text = value.strip()
    local = _uuid(text.removeprefix("Patient/"))
    found: uuid.UUID | None = None
    if local is not None and session.get(Patient, local) is not None:
        found = local
    else:
        head, found_separator, tail = text.rpartition("/Patient/")
        if found_separator and "://" in head:
            server, fhir_id = head, tail
        else:
            server, fhir_id = upstream_base or "", text.removeprefix("Patient/")
        if server:
            found = session.scalar(
                select(PatientIdentifier.patient_id).where(
                    PatientIdentifier.system == FHIR_PATIENT_SYSTEM_PREFIX + server.rstrip("/"),
                    PatientIdentifier.value == f"Patient/{fhir_id}",
                )
            )
    if found is None:
        return []
    merged = list(session.scalars(select(Patient.id).where(Patient.merged_into_id == found)))
    return [found, *merged]


@dataclass(frozen=True)
class _Search:
    patient: str
    dates: list[DateParam]
    count: int
    offset: int


class FhirReader:
    """The read side behind the routes: one short read transaction per request."""

    def __init__(self, ctx: EngineContext, outputs: FhirOutputs) -> None:
        self._ctx = ctx
        self._outputs = outputs
        self._base = fhir_base(ctx.settings)

    def risk_assessment(self, resource_id: str) -> JSONResponse:
        with self._ctx.session_factory() as session:
            prediction = prediction_by_fhir_id(session, resource_id)
            if prediction is None:
                return outcome_response(404, f"RiskAssessment/{resource_id} not found")
            assessment = self._outputs.assessment(session, prediction)
        try:
            return fhir_response(self._outputs.risk_assessment(assessment, self._outputs.local))
        except NotEnoughDataError as exc:
            return outcome_response(
                404, not_enough_data(assessment.title, exc.missing), code="incomplete"
            )

    def provenance(self, resource_id: str) -> JSONResponse:
        with self._ctx.session_factory() as session:
            prediction = prediction_by_fhir_id(session, resource_id)
            if prediction is None or prediction.status not in ASSESSED:
                return outcome_response(404, f"Provenance/{resource_id} not found")
            assessment = self._outputs.assessment(session, prediction)
        return fhir_response(self._outputs.provenance(assessment, self._outputs.local))

    def device(self, resource_id: str) -> JSONResponse:
        with self._ctx.session_factory() as session:
            device = self._outputs.find_device(session, resource_id)
        if device is None:
            return outcome_response(404, f"Device/{resource_id} not found")
        return fhir_response(device)

    def view(self, resource_type: str, resource_id: str) -> JSONResponse:
        key = _uuid(resource_id)
        resource = None
        if key is not None:
            with self._ctx.session_factory() as session:
                resource = VIEWS[resource_type](session, key)
        if resource is None:
            return outcome_response(404, f"{resource_type}/{resource_id} not found")
        return fhir_response(validate(resource))

    def patients_by_identifier(self, token: str, request: Request) -> JSONResponse:
        """Patient search by ``identifier`` (FHIR token ``system|value``), issuer-mapped."""
        system, separator, value = token.partition("|")
        if not separator or not value:
            return outcome_response(400, "identifier must be a token: system|value")
        entries = []
        with self._ctx.session_factory() as session:
            found = find_patient(
                session=session,
                identifiers=[IdentifierIn(system=system, value=value)],
                issuer_map=self._ctx.settings.issuer_map,
            )
            view = patient_view(session=session, patient_id=found) if found else None
        base = fhir_base(self._ctx.settings)
        if view is not None:
            entries.append(
                {
                    "fullUrl": f"{base}/Patient/{view['id']}",
                    "resource": view,
                    "search": {"mode": "match"},
                }
            )
        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(entries),
            "link": [{"relation": "self", "url": f"{base}/Patient"}],
            "entry": entries,
        }
        return fhir_response(bundle)

    def search(self, query: _Search, request: Request) -> JSONResponse:
        outputs = self._outputs
        with self._ctx.session_factory() as session:
            ids = resolve_patient_param(session, query.patient, self._ctx.settings.fhir_server_url)
            where: list[ColumnElement[bool]] = [Prediction.patient_id.in_(ids)]
            where += [d.condition(Prediction.created_at) for d in query.dates]
            assessed = select(Prediction).where(*where, Prediction.status.in_(ASSESSED))
            total = session.scalar(select(func.count()).select_from(assessed.subquery())) or 0
            page = session.scalars(
                assessed.order_by(Prediction.created_at.desc(), Prediction.id)
                .offset(query.offset)
                .limit(query.count)
            )
            assessments = [outputs.assessment(session, p) for p in page]
            thin = []
            if query.offset == 0:
                thin = list(
                    session.scalars(
                        select(Prediction)
                        .where(*where, Prediction.status == PredictionStatus.INSUFFICIENT_DATA)
                        .order_by(Prediction.created_at.desc())
                        .limit(20)
                    )
                )
        entries: list[dict[str, Any]] = [
            {
                "fullUrl": f"{self._base}/RiskAssessment/{a.prediction_id}",
                "resource": outputs.risk_assessment(a, outputs.local),
                "search": {"mode": "match"},
            }
            for a in assessments
        ]
        if thin:
            entries.append({"resource": self._not_made(thin), "search": {"mode": "outcome"}})
        links = [{"relation": "self", "url": self._url(request, None)}]
        if query.offset + query.count < total:
            links.append(
                {"relation": "next", "url": self._url(request, query.offset + query.count)}
            )
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": total,
            "link": links,
        }
        if entries:
            bundle["entry"] = entries
        return fhir_response(validate(bundle))

    def _not_made(self, predictions: list[Prediction]) -> dict[str, Any]:
        issues = []
        for p in predictions:
            task = self._outputs.tasks.get(p.task_id)
            missing = (p.outputs or {}).get("missing")
            reason = not_enough_data(
                task.title if task else p.task_id,
                [str(m) for m in missing] if isinstance(missing, list) else [],
            )
            issues.append(
                {
                    "severity": "information",
                    "code": "incomplete",
                    "diagnostics": f"No RiskAssessment for prediction {p.id}. {reason}",
                }
            )
        return {"resourceType": "OperationOutcome", "issue": issues}

    def _url(self, request: Request, offset: int | None) -> str:
        params = list(request.query_params.multi_items())
        if offset is not None:
            params = [(k, v) for k, v in params if k != "_offset"] + [("_offset", str(offset))]
        query = urlencode(params)
        return f"{self._base}/RiskAssessment" + (f"?{query}" if query else "")


def _guarded(build: Callable[[], JSONResponse]) -> JSONResponse:
    """Translate errors at the boundary: bad parameters 400, database trouble 503."""
    try:
        return build()
    except MalformedInputError as exc:
        return outcome_response(400, str(exc))
    except SQLAlchemyError as exc:
        logger.error("FHIR read failed: %s", type(exc).__name__)
        return outcome_response(503, "database unavailable, retry later")


def build_router(ctx: EngineContext, outputs: FhirOutputs) -> APIRouter:
    """The routes under ``/fhir`` (separate from :func:`install` for tests)."""
    router = APIRouter(prefix=FHIR_PREFIX, tags=["fhir"])
    reader = FhirReader(ctx, outputs)

    @router.get("/RiskAssessment/{resource_id}", summary="Read a RiskAssessment")
    def read_risk_assessment(resource_id: str) -> JSONResponse:
        return _guarded(lambda: reader.risk_assessment(resource_id))

    @router.get("/RiskAssessment", summary="Search RiskAssessments by patient and date")
    def search_risk_assessments(  # noqa: PLR0917 - one argument per FHIR search parameter
        request: Request,
        patient: str | None = None,
        subject: str | None = None,
        date: list[str] = Query(default=[]),  # noqa: B008 - FastAPI's declaration style
        count: int = Query(default=DEFAULT_COUNT, alias="_count", ge=0, le=MAX_COUNT),
        offset: int = Query(default=0, alias="_offset", ge=0),
    ) -> JSONResponse:
        wanted = patient or subject
        if not wanted:
            return outcome_response(400, "search needs patient (or subject)")

        def run() -> JSONResponse:
            query = _Search(wanted, [parse_date(d) for d in date], count, offset)
            return reader.search(query, request)

        return _guarded(run)

    @router.get("/Provenance/{resource_id}", summary="Read the Provenance of a RiskAssessment")
    def read_provenance(resource_id: str) -> JSONResponse:
        return _guarded(lambda: reader.provenance(resource_id))

    @router.get("/Device/{resource_id}", summary="Read the Device describing a model")
    def read_device(resource_id: str) -> JSONResponse:
        return _guarded(lambda: reader.device(resource_id))

    @router.post("/Patient/_search", summary="Search patients by identifier (form body)")
    async def search_patients_by_post(request: Request) -> JSONResponse:
        """FHIR search with POST: the identifier (an MRN) stays out of the URL."""
        form = parse_qs((await request.body()).decode("utf-8", errors="replace"))
        token = (form.get("identifier") or [""])[0]
        return _guarded(lambda: reader.patients_by_identifier(token, request))

    @router.get("/Patient", summary="Search patients by identifier")
    def search_patients(request: Request, identifier: str = "") -> JSONResponse:
        return _guarded(lambda: reader.patients_by_identifier(identifier, request))

    for resource_type in VIEWS:
        router.add_api_route(
            f"/{resource_type}/{{resource_id}}",
            _view_endpoint(reader, resource_type),
            methods=["GET"],
            summary=f"Read the {resource_type} view of the timeline",
            name=f"read_{resource_type.lower()}_view",
        )
    return router


def _view_endpoint(reader: FhirReader, resource_type: str) -> Callable[[str], JSONResponse]:
    def read_view(resource_id: str) -> JSONResponse:
        return _guarded(lambda: reader.view(resource_type, resource_id))

    return read_view


def install(app: FastAPI, ctx: EngineContext) -> None:
    """Mount ``/fhir`` RiskAssessment, Provenance, Device and view routes."""
    app.include_router(build_router(ctx, shared_outputs(app, ctx)))
