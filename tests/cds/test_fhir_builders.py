"""RiskAssessment, Provenance and Device builders: golden JSON, FHIR validation, the rules."""

from __future__ import annotations

import importlib
import json

import pytest

from cds.core.db.models import PredictionStatus
from cds.core.errors import ConfigurationError
from cds.fhir import codes
from cds.fhir.levels import RiskLevel, RiskLevels
from cds.fhir.provenance import build_device, build_provenance
from cds.fhir.references import ReferenceStyle
from cds.fhir.riskassessment import NotEnoughDataError, build_risk_assessment, device_id
from cds.fhir.validation import InvalidResourceError, validate
from tests.cds.assessments import NEWER, PREDICTION, final_assessment, insufficient_assessment
from tests.cds.golden import FIXTURES, assert_golden, fixture_names
from tests.cds.support import EHR_BASE, MODEL_NAME, MODEL_SHA, MODEL_VERSION

LOCAL = ReferenceStyle("https://cds.example.org/fhir")
UPSTREAM = ReferenceStyle("https://cds.example.org/fhir", EHR_BASE)
LEVELS = RiskLevels(0.2, 0.5)


def test_final_risk_assessment_matches_golden_and_validates() -> None:
    resource = build_risk_assessment(final_assessment(), style=LOCAL, levels=LEVELS)
    validate(resource)
    assert_golden("fhir_out/riskassessment-final.json", resource)
    assert resource["status"] == "final"
    assert resource["meta"]["security"] == [codes.AIAST]
    (prediction,) = resource["prediction"]
    assert prediction["probabilityDecimal"] == 0.6234
    interval = prediction["extension"][0]["extension"][0]["valueRange"]
    assert (interval["low"]["value"], interval["high"]["value"]) == (0.4101, 0.8322)
    assert prediction["qualitativeRisk"]["coding"][0]["code"] == "high"
    assert prediction["whenPeriod"] == {
        "start": "2026-03-02T09:30:00Z",
        "end": "2026-03-04T09:30:00Z",
    }
    assert "Lactate 4.8 mmol/L" in prediction["rationale"]
    assert any("synthetic data" in n["text"] for n in resource["note"])
    assert resource["method"]["coding"][0]["version"] == MODEL_VERSION
    assert resource["performer"] == {
        "reference": f"Device/{device_id(MODEL_NAME, MODEL_VERSION, MODEL_SHA)}"
    }


def test_upstream_references_point_back_to_the_engine_and_to_the_ehr() -> None:
    resource = build_risk_assessment(final_assessment(), style=UPSTREAM, levels=LEVELS)
    validate(resource)
    assert_golden("fhir_out/riskassessment-upstream.json", resource)
    basis = [b["reference"] for b in resource["basis"]]
    assert "Observation/hr-7" in basis  # the EHR's own resource: relative
    assert any(b.startswith("https://cds.example.org/fhir/ImagingStudy/") for b in basis)
    assert resource["subject"] == {"reference": "Patient/pat-42"}
    assert resource["encounter"] == {"reference": "Encounter/enc-7"}


def test_patient_unknown_upstream_is_a_logical_reference_by_identifier() -> None:
    other = ReferenceStyle("https://cds.example.org/fhir", "https://elsewhere.example/fhir")
    resource = build_risk_assessment(final_assessment(), style=other, levels=LEVELS)
    assert resource["subject"]["type"] == "Patient"
    assert resource["subject"]["identifier"]["value"] == "MRN0042"
    assert resource["basis"][2]["reference"] == f"{EHR_BASE}/Observation/hr-7"


def test_superseded_is_amended_and_linked_to_the_newer_assessment() -> None:
    amended = final_assessment(status=PredictionStatus.SUPERSEDED, superseded_by=NEWER)
    resource = validate(build_risk_assessment(amended, style=LOCAL, levels=LEVELS))
    assert_golden("fhir_out/riskassessment-amended.json", resource)
    assert resource["status"] == "amended"
    assert any(f"RiskAssessment/{NEWER}" in n["text"] for n in resource["note"])
    newer = final_assessment(prediction_id=NEWER, supersedes=(PREDICTION,))
    provenance = validate(build_provenance(newer, style=LOCAL))
    assert {"role": "revision", "what": {"reference": f"RiskAssessment/{PREDICTION}"}} in (
        provenance["entity"]
    )


def test_cancelled_maps_to_cancelled() -> None:
    resource = build_risk_assessment(
        final_assessment(status=PredictionStatus.CANCELLED), style=LOCAL, levels=LEVELS
    )
    assert validate(resource)["status"] == "cancelled"


def test_not_enough_data_is_never_a_risk_assessment() -> None:
    with pytest.raises(NotEnoughDataError) as raised:
        build_risk_assessment(insufficient_assessment(), style=LOCAL, levels=LEVELS)
    assert raised.value.missing == ["image"]
    with pytest.raises(NotEnoughDataError):  # a final row without a number: still nothing
        build_risk_assessment(final_assessment(probability=None), style=LOCAL, levels=LEVELS)


def test_no_synthetic_note_without_a_card_that_says_so() -> None:
    resource = build_risk_assessment(final_assessment(model_card=None), style=LOCAL, levels=LEVELS)
    assert "note" not in resource


def test_provenance_and_device_match_golden_and_validate() -> None:
    provenance = validate(build_provenance(final_assessment(), style=LOCAL))
    assert_golden("fhir_out/provenance.json", provenance)
    assert provenance["target"] == [{"reference": f"RiskAssessment/{PREDICTION}"}]
    assert provenance["meta"]["security"] == [codes.AIAST]
    assert provenance["agent"][0]["who"]["reference"].startswith("Device/")
    assert len([e for e in provenance["entity"] if e["role"] == "source"]) == 4
    url = f"https://cds.example.org/models/{MODEL_NAME}/{MODEL_VERSION}"
    device = validate(
        build_device(
            model_name=MODEL_NAME,
            model_version=MODEL_VERSION,
            model_sha256=MODEL_SHA,
            model_card_url=url,
            model_card=final_assessment().model_card,
        )
    )
    assert_golden("fhir_out/device.json", device)
    assert device["contact"] == [{"system": "url", "value": url}]


@pytest.mark.parametrize(
    ("probability", "level"),
    [
        (0.0, RiskLevel.LOW),
        (0.1999, RiskLevel.LOW),
        (0.2, RiskLevel.MODERATE),
        (0.4999, RiskLevel.MODERATE),
        (0.5, RiskLevel.HIGH),
        (1.0, RiskLevel.HIGH),
    ],
)
def test_qualitative_risk_from_thresholds(probability: float, level: RiskLevel) -> None:
    assert LEVELS.level(probability) is level


def test_thresholds_must_be_ordered() -> None:
    with pytest.raises(ConfigurationError):
        RiskLevels(0.5, 0.2)


def test_an_invalid_resource_is_reported_without_its_content() -> None:
    resource = build_risk_assessment(final_assessment(), style=LOCAL, levels=LEVELS)
    resource["prediction"][0]["probabilityRange"] = {"low": {"value": 0.1}}  # a second [x]
    with pytest.raises(InvalidResourceError) as raised:
        validate(resource)
    assert "MRN" not in str(raised.value) and "prediction" in str(raised.value)


@pytest.mark.parametrize("name", fixture_names("fhir_out"))
def test_every_fhir_fixture_round_trips_through_fhir_resources(name: str) -> None:
    data = json.loads((FIXTURES / "fhir_out" / name).read_text(encoding="utf-8"))
    module = importlib.import_module(f"fhir.resources.R4B.{data['resourceType'].lower()}")
    model = getattr(module, data["resourceType"]).model_validate(data)
    again = json.loads(model.model_dump_json(exclude_none=True))
    assert _canonical(again) == _canonical(data)


def _canonical(value: object) -> object:
    """JSON with dict keys sorted (fhir.resources emits its own element order)."""
    return json.loads(json.dumps(value, sort_keys=True))
