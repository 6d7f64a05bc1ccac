"""The outbound resources of one prediction, assembled for a destination.

:class:`FhirOutputs` is built once per process from settings and shared by the FHIR
routes, the upstream writer and the CDS Hooks service.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.orm import Session

from cds.core.aligner.task import TaskDefinition
from cds.core.db.models import Prediction
from cds.core.runtime import EngineContext
from cds.core.settings import Settings
from cds.fhir.assessment import Assessment, load_assessment
from cds.fhir.levels import RiskLevels
from cds.fhir.provenance import build_device, build_provenance
from cds.fhir.references import ReferenceStyle
from cds.fhir.riskassessment import build_risk_assessment, device_id
from cds.fhir.urls import fhir_base, model_card_url
from cds.fhir.validation import validate
from cds.modelcard import ModelCardSource


def load_task_definitions(settings: Settings) -> dict[str, TaskDefinition]:
    """The task definitions, as the pipeline loads them (no torch involved)."""
    from cds.core.pipeline.compose import tasks_for

    return tasks_for(settings)


class FhirOutputs:
    """Builds validated RiskAssessment, Provenance and Device resources.

    Args:
        settings: the process settings (public base, thresholds, model directory).
        tasks: task definitions by id. Defaults to those the pipeline loads.
        cards: where the serving model's card is read. Defaults to ``model_path``.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        tasks: Mapping[str, TaskDefinition] | None = None,
        cards: ModelCardSource | None = None,
    ) -> None:
        self.settings = settings
        self.tasks = dict(tasks) if tasks is not None else load_task_definitions(settings)
        self.cards = cards or ModelCardSource(settings.model_path)
        self.levels = RiskLevels.from_settings(settings)
        self.local = ReferenceStyle(fhir_base(settings))

    def upstream_style(self, target_base: str) -> ReferenceStyle:
        return ReferenceStyle(fhir_base(self.settings), target_base.rstrip("/"))

    def assessment(
        self, session: Session, prediction: Prediction, *, brief: bool = False
    ) -> Assessment:
        """See :func:`~cds.fhir.assessment.load_assessment` (``brief`` for cards)."""
        return load_assessment(
            session=session,
            prediction=prediction,
            tasks=self.tasks,
            model_card=self.cards.current(),
            brief=brief,
        )

    def risk_assessment(self, assessment: Assessment, style: ReferenceStyle) -> dict[str, Any]:
        """Raises :class:`~cds.fhir.riskassessment.NotEnoughDataError` for insufficient data."""
        return validate(build_risk_assessment(assessment, style=style, levels=self.levels))

    def provenance(self, assessment: Assessment, style: ReferenceStyle) -> dict[str, Any]:
        return validate(build_provenance(assessment, style=style))

    def device_for(self, assessment: Assessment) -> dict[str, Any]:
        return self.device(assessment.model_name, assessment.model_version, assessment.model_sha256)

    def device(self, name: str, version: str, sha256: str | None) -> dict[str, Any]:
        card = self.cards.find(name, version)
        return validate(
            build_device(
                model_name=name,
                model_version=version,
                model_sha256=sha256,
                model_card_url=model_card_url(self.settings, name, version),
                model_card=card,
            )
        )

    def find_device(self, session: Session, resource_id: str) -> dict[str, Any] | None:
        """The Device with FHIR id ``resource_id`` among the models that made predictions."""
        models = session.execute(
            select(
                Prediction.model_name, Prediction.model_version, Prediction.model_sha256
            ).distinct()
        ).all()
        for name, version, sha256 in models:
            if device_id(name, version, sha256) == resource_id:
                return self.device(name, version, sha256)
        return None


def prediction_by_fhir_id(session: Session, resource_id: str) -> Prediction | None:
    """The prediction whose RiskAssessment/Provenance id is ``resource_id`` (its UUID)."""
    try:
        prediction_id = uuid.UUID(resource_id)
    except ValueError:
        return None
    return session.get(Prediction, prediction_id)


def shared_outputs(app: FastAPI, ctx: EngineContext) -> FhirOutputs:
    """The one :class:`FhirOutputs` of an app, made by whichever installer runs first."""
    outputs = getattr(app.state, "fhir_outputs", None)
    if not isinstance(outputs, FhirOutputs):
        outputs = FhirOutputs(ctx.settings)
        app.state.fhir_outputs = outputs
    return outputs
