"""Provenance of a RiskAssessment and the Device that describes its model (pure).

Following HL7 AI Transparency on FHIR (ballot): the AI output carries the ``AIAST``
security tag, its Provenance names the model Device as the performing agent and every input
as a ``source`` entity; a RiskAssessment that replaces an older one names it as a
``revision`` entity (R4 Provenance.entity.role).
"""

from __future__ import annotations

from typing import Any

from cds.fhir import codes
from cds.fhir.assessment import Assessment
from cds.fhir.fhirtime import instant
from cds.fhir.references import ReferenceStyle
from cds.fhir.riskassessment import SYNTHETIC_NOTE, device_id
from cds.modelcard import ModelCard


def build_device(
    *,
    model_name: str,
    model_version: str,
    model_sha256: str | None,
    model_card_url: str,
    model_card: ModelCard | None = None,
) -> dict[str, Any]:
    """The Device describing a model: name, version, weights digest, link to its card.

    The card's URL is a ``contact`` of system ``url`` (R4 Device has no documentation
    element) and is repeated in a note.
    """
    device: dict[str, Any] = {
        "resourceType": "Device",
        "id": device_id(model_name, model_version, model_sha256),
    }
    if model_sha256:
        device["identifier"] = [{"system": codes.MODEL_SHA256_IDENTIFIER, "value": model_sha256}]
    notes = [{"text": f"Model card: {model_card_url}"}]
    if model_card is not None and model_card.synthetic_training_data:
        notes.append({"text": SYNTHETIC_NOTE})
    device.update(
        {
            "status": "active",
            "manufacturer": "cdsfusion",
            "deviceName": [{"name": model_name, "type": codes.DEVICE_NAME_TYPE_MODEL}],
            "type": {"text": "Machine-learning risk model (software)"},
            "version": [{"value": model_version}],
            "contact": [{"system": "url", "value": model_card_url}],
            "note": notes,
        }
    )
    return device


def build_provenance(assessment: Assessment, *, style: ReferenceStyle) -> dict[str, Any]:
    """The Provenance of the assessment's RiskAssessment (same id as the RiskAssessment)."""
    pid = str(assessment.prediction_id)
    device = device_id(assessment.model_name, assessment.model_version, assessment.model_sha256)
    entities: list[dict[str, Any]] = [
        {"role": "source", "what": ref}
        for ref in (style.input(i) for i in assessment.inputs)
        if ref is not None
    ]
    entities += [
        {"role": "revision", "what": style.output(f"RiskAssessment/{older}")}
        for older in assessment.supersedes
    ]
    provenance: dict[str, Any] = {
        "resourceType": "Provenance",
        "id": pid,
        "meta": {"security": [dict(codes.AIAST)]},
        "target": [style.output(f"RiskAssessment/{pid}")],
        "recorded": instant(assessment.created_at),
        "activity": {
            "coding": [{"system": codes.DATA_OPERATION, "code": "CREATE", "display": "create"}]
        },
        "agent": [
            {
                "type": {
                    "coding": [
                        {
                            "system": codes.PROVENANCE_PARTICIPANT,
                            "code": "performer",
                            "display": "Performer",
                        }
                    ]
                },
                "who": style.output(f"Device/{device}"),
            }
        ],
    }
    if entities:
        provenance["entity"] = entities
    return provenance
