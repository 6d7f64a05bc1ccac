"""Code systems, identifier systems and extension URLs used in the outbound resources."""

from __future__ import annotations

from typing import Any

#: HL7 AI Transparency on FHIR (ballot): ``meta.security`` tag for AI-asserted content.
AIAST: dict[str, Any] = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "AIAST",
    "display": "Artificial Intelligence asserted",
}

#: RiskAssessment.prediction.qualitativeRisk (R4 value set risk-probability).
RISK_PROBABILITY = "http://terminology.hl7.org/CodeSystem/risk-probability"
RISK_DISPLAY = {
    "low": "Low likelihood",
    "moderate": "Moderate likelihood",
    "high": "High likelihood",
}

#: Identifier system of the engine's predictions (value: the prediction's UUID).
PREDICTION_IDENTIFIER = "urn:cdsfusion:prediction"
#: Code system of the engine's prediction tasks (``RiskAssessment.code``).
TASK_SYSTEM = "urn:cdsfusion:task"
#: Code system of the engine's models (``RiskAssessment.method``, coding.version = version).
MODEL_SYSTEM = "urn:cdsfusion:model"
#: Identifier system of a model's weights digest (``Device.identifier``).
MODEL_SHA256_IDENTIFIER = "urn:cdsfusion:model-sha256"

#: ``prediction.extension``: the conformal interval (``interval``: valueRange) and its
#: nominal coverage (``coverage``: valueDecimal).
INTERVAL_EXTENSION = "urn:cdsfusion:fhir:StructureDefinition:probability-interval"

PROVENANCE_PARTICIPANT = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
DICOM_UID = "urn:dicom:uid"
DICOM_DCM = "http://dicom.nema.org/resources/ontology/DCM"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
DEVICE_NAME_TYPE_MODEL = "model-name"
