"""FHIR R4 RiskAssessment for a prediction (pure; validated with ``fhir.resources``).

Elements (R4 §RiskAssessment):

* ``status``: see :mod:`cds.fhir` for the mapping; a prediction with insufficient data
  has no RiskAssessment (:class:`NotEnoughDataError`).
* ``subject``, ``encounter`` (when the anchor fell inside a known FHIR Encounter),
  ``occurrenceDateTime`` (when the prediction was made).
* ``method``: the model, ``coding.version`` its version; ``performer`` the model's Device
  (:func:`cds.fhir.provenance.build_device`), which links the model card.
* ``basis``: the inputs, at their FHIR origin or as the engine's views.
* ``prediction``: the task's outcome, ``probabilityDecimal``, the conformal interval in
  :data:`~cds.fhir.codes.INTERVAL_EXTENSION`, ``qualitativeRisk`` from the thresholds,
  ``whenPeriod`` (anchor .. anchor + horizon) and a ``rationale`` naming the top factors.
* ``note``: synthetic training data, missing modalities, supersession.
* ``meta.security``: ``AIAST`` (HL7 AI Transparency on FHIR).
"""

from __future__ import annotations

import uuid
from typing import Any

from cds.core.db.models import PredictionStatus
from cds.core.errors import CdsFusionError
from cds.fhir import codes
from cds.fhir.assessment import Assessment
from cds.fhir.factors import has_image_heatmap, top_factors
from cds.fhir.fhirtime import instant
from cds.fhir.levels import RiskLevels
from cds.fhir.references import ReferenceStyle

_STATUS = {
    PredictionStatus.FINAL: "final",
    PredictionStatus.SUPERSEDED: "amended",
    PredictionStatus.CANCELLED: "cancelled",
}

SYNTHETIC_NOTE = (
    "The model that made this assessment was trained on synthetic data only; "
    "it must not be used for patient care."
)

_DEVICE_NAMESPACE = uuid.UUID("6f1c7d1e-4a53-4d1f-9a55-2f0d3c7a8b11")


class NotEnoughDataError(CdsFusionError):
    """The prediction carries no number (not enough data): no RiskAssessment is made."""

    def __init__(self, missing: list[str]) -> None:
        super().__init__("not enough data: missing " + (", ".join(missing) or "required data"))
        self.missing = missing


def device_id(model_name: str, model_version: str, model_sha256: str | None) -> str:
    """The stable FHIR id of a model's Device (the same on every engine and upstream)."""
    return str(uuid.uuid5(_DEVICE_NAMESPACE, f"{model_name}|{model_version}|{model_sha256 or ''}"))


def rounded(value: float) -> float:
    """Probabilities are reported to 4 decimals (no false precision)."""
    return round(float(value), 4)


def _outcome(assessment: Assessment) -> dict[str, Any]:
    task = assessment.task
    if task is None:
        return {"text": assessment.task_id}
    coding = {
        key: value
        for key, value in (
            ("system", task.outcome.system),
            ("code", task.outcome.code),
            ("display", task.outcome.display),
        )
        if value
    }
    return {"coding": [coding], "text": task.outcome.display}


def rationale(assessment: Assessment) -> str:
    """A plain-text explanation: top factors, image attention, missing modalities."""
    attributions = assessment.outputs.get("attributions")
    factors = top_factors(
        attributions if isinstance(attributions, dict) else None, displays=assessment.displays
    )
    parts: list[str] = []
    if factors:
        parts.append("Top contributing factors: " + "; ".join(f.describe() for f in factors) + ".")
    if has_image_heatmap(attributions if isinstance(attributions, dict) else None):
        parts.append("An image attribution heatmap is available on the review page.")
    if assessment.missing:
        parts.append("Assessed without: " + ", ".join(assessment.missing) + ".")
    return " ".join(parts) or "No attributions were recorded for this prediction."


def _interval_extension(assessment: Assessment) -> list[dict[str, Any]]:
    if assessment.interval_low is None or assessment.interval_high is None:
        return []
    parts: list[dict[str, Any]] = [
        {
            "url": "interval",
            "valueRange": {
                "low": {"value": rounded(assessment.interval_low)},
                "high": {"value": rounded(assessment.interval_high)},
            },
        }
    ]
    coverage = assessment.outputs.get("coverage")
    if isinstance(coverage, int | float):
        parts.append({"url": "coverage", "valueDecimal": rounded(coverage)})
    return [{"url": codes.INTERVAL_EXTENSION, "extension": parts}]


def _prediction(assessment: Assessment, probability: float, levels: RiskLevels) -> dict[str, Any]:
    level = levels.level(probability)
    prediction: dict[str, Any] = {}
    extension = _interval_extension(assessment)
    if extension:
        prediction["extension"] = extension
    prediction["outcome"] = _outcome(assessment)
    prediction["probabilityDecimal"] = rounded(probability)
    prediction["qualitativeRisk"] = {
        "coding": [
            {
                "system": codes.RISK_PROBABILITY,
                "code": level.value,
                "display": codes.RISK_DISPLAY[level.value],
            }
        ]
    }
    if assessment.task is not None:
        prediction["whenPeriod"] = {
            "start": instant(assessment.anchor_at),
            "end": instant(assessment.anchor_at + assessment.task.horizon),
        }
    prediction["rationale"] = rationale(assessment)
    return prediction


def _notes(assessment: Assessment, style: ReferenceStyle) -> list[dict[str, Any]]:
    notes: list[dict[str, Any]] = []
    if assessment.model_card is not None and assessment.model_card.synthetic_training_data:
        notes.append({"text": SYNTHETIC_NOTE})
    if assessment.superseded_by is not None:
        newer = style.output(f"RiskAssessment/{assessment.superseded_by}")["reference"]
        notes.append({"text": f"Amended: superseded by {newer}, made with later data."})
    if assessment.status is PredictionStatus.CANCELLED:
        notes.append({"text": "Cancelled: this assessment no longer applies."})
    return notes


def build_risk_assessment(
    assessment: Assessment, *, style: ReferenceStyle, levels: RiskLevels
) -> dict[str, Any]:
    """The RiskAssessment for ``assessment`` as FHIR R4 JSON.

    Raises:
        NotEnoughDataError: the prediction has insufficient data (or, defensively, no number).
    """
    status = _STATUS.get(assessment.status)
    if status is None or assessment.probability is None:
        raise NotEnoughDataError(assessment.missing)
    pid = str(assessment.prediction_id)
    resource: dict[str, Any] = {
        "resourceType": "RiskAssessment",
        "id": pid,
        "meta": {"security": [dict(codes.AIAST)]},
        "identifier": [{"system": codes.PREDICTION_IDENTIFIER, "value": pid}],
        "status": status,
        "code": {
            "coding": [
                {
                    "system": codes.TASK_SYSTEM,
                    "code": assessment.task_id,
                    "display": assessment.title,
                }
            ],
            "text": assessment.title,
        },
        "subject": style.patient(assessment.patient),
    }
    if assessment.encounter is not None:
        encounter = style.input(assessment.encounter)
        if encounter is not None:
            resource["encounter"] = encounter
    resource["occurrenceDateTime"] = instant(assessment.created_at)
    resource["method"] = {
        "coding": [
            {
                "system": codes.MODEL_SYSTEM,
                "version": assessment.model_version,
                "code": assessment.model_name,
            }
        ],
        "text": f"{assessment.model_name} {assessment.model_version}",
    }
    device = device_id(assessment.model_name, assessment.model_version, assessment.model_sha256)
    resource["performer"] = style.output(f"Device/{device}")
    basis = [ref for ref in (style.input(i) for i in assessment.inputs) if ref is not None]
    if basis:
        resource["basis"] = basis
    resource["prediction"] = [_prediction(assessment, assessment.probability, levels)]
    notes = _notes(assessment, style)
    if notes:
        resource["note"] = notes
    return resource
