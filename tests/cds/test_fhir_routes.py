"""``/fhir`` reads: RiskAssessment by id and by search, Provenance, Device and the views."""

from __future__ import annotations

import datetime as dt
import importlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from cds.core.db.models import BundleStatus, PredictionStatus
from cds.fhir.riskassessment import device_id
from tests.cds.support import (
    ANCHOR,
    EHR_BASE,
    MODEL_NAME,
    MODEL_SHA,
    MODEL_VERSION,
    engine_context,
    output_app,
    seed_committed,
    settings_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def client(db_engine: Engine, tmp_path: Path) -> Iterator[TestClient]:
    settings = settings_for(db_engine, tmp_path, fhir_server_url=EHR_BASE)
    with TestClient(output_app(engine_context(db_engine, settings))) as test_client:
        yield test_client


def valid(resource: dict[str, Any]) -> dict[str, Any]:
    kind = resource["resourceType"]
    module = importlib.import_module(f"fhir.resources.R4B.{kind.lower()}")
    getattr(module, kind).model_validate(resource)
    return resource


def test_read_risk_assessment(client: TestClient, db_engine: Engine) -> None:
    seeded = seed_committed(db_engine)
    response = client.get(f"/fhir/RiskAssessment/{seeded.prediction_id}")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/fhir+json")
    resource = valid(response.json())
    assert resource["status"] == "final"
    assert resource["subject"] == {"reference": f"Patient/{seeded.patient_id}"}
    basis = {b["reference"] for b in resource["basis"]}
    assert f"ImagingStudy/{seeded.study_id}" in basis
    assert f"Observation/{seeded.lab_event_id}" in basis
    assert f"DocumentReference/{seeded.note_event_id}" in basis
    assert any(b.startswith(f"{EHR_BASE}/Observation/hr-") for b in basis)
    assert resource["encounter"]["reference"].startswith(f"{EHR_BASE}/Encounter/enc-")


def test_every_basis_reference_of_the_engine_resolves(
    client: TestClient, db_engine: Engine
) -> None:
    seeded = seed_committed(db_engine)
    resource = client.get(f"/fhir/RiskAssessment/{seeded.prediction_id}").json()
    local = [b["reference"] for b in resource["basis"] if not b["reference"].startswith("http")]
    assert len(local) == 4
    for reference in local:
        response = client.get(f"/fhir/{reference}")
        assert response.status_code == 200, reference
        assert valid(response.json())["id"] == reference.split("/")[1]
    study = client.get(f"/fhir/ImagingStudy/{seeded.study_id}").json()
    assert study["identifier"][0]["value"].startswith("urn:oid:1.2.826.")
    assert study["numberOfInstances"] == 1 and study["series"][0]["modality"]["code"] == "DX"
    patient = client.get(f"/fhir/Patient/{seeded.patient_id}").json()
    assert patient["gender"] == "female" and "name" not in patient
    assert {
        "other": {"reference": f"{EHR_BASE}/Patient/{seeded.fhir_patient_id}"},
        "type": "seealso",
    } in (patient["link"])


def test_provenance_and_device(client: TestClient, db_engine: Engine) -> None:
    seeded = seed_committed(db_engine)
    provenance = valid(client.get(f"/fhir/Provenance/{seeded.prediction_id}").json())
    assert provenance["target"] == [{"reference": f"RiskAssessment/{seeded.prediction_id}"}]
    device_ref = provenance["agent"][0]["who"]["reference"]
    assert device_ref == f"Device/{device_id(MODEL_NAME, MODEL_VERSION, MODEL_SHA)}"
    device = valid(client.get(f"/fhir/{device_ref}").json())
    assert device["contact"][0]["value"].endswith(f"/models/{MODEL_NAME}/{MODEL_VERSION}")
    assert client.get(f"/fhir/Device/{uuid.uuid4()}").status_code == 404


def test_not_enough_data_has_no_risk_assessment(client: TestClient, db_engine: Engine) -> None:
    seeded = seed_committed(
        db_engine,
        status=PredictionStatus.INSUFFICIENT_DATA,
        bundle_status=BundleStatus.INSUFFICIENT,
    )
    response = client.get(f"/fhir/RiskAssessment/{seeded.prediction_id}")
    assert response.status_code == 404
    issue = response.json()["issue"][0]
    assert issue["code"] == "incomplete" and "Not enough data" in issue["diagnostics"]
    assert "missing image" in issue["diagnostics"]
    search = client.get("/fhir/RiskAssessment", params={"patient": str(seeded.patient_id)}).json()
    valid(search)
    assert search["total"] == 0
    (outcome,) = search["entry"]
    assert outcome["search"]["mode"] == "outcome"
    assert "missing image" in outcome["resource"]["issue"][0]["diagnostics"]
    assert client.get(f"/fhir/Provenance/{seeded.prediction_id}").status_code == 404


def test_search_by_patient_and_date(client: TestClient, db_engine: Engine) -> None:
    first = seed_committed(db_engine)
    later = ANCHOR + dt.timedelta(days=40)
    other = seed_committed(db_engine, anchor=later)

    def search(patient: str, *dates: str, **extra: str) -> dict[str, Any]:
        params: list[tuple[str, str]] = [("patient", patient), *(("date", d) for d in dates)]
        params += list(extra.items())
        response = client.get("/fhir/RiskAssessment", params=params)
        assert response.status_code == 200, response.text
        return valid(response.json())

    found = search(f"Patient/{first.patient_id}")
    assert found["type"] == "searchset" and found["total"] == 1
    assert found["entry"][0]["fullUrl"] == (
        f"https://cds.example.org/fhir/RiskAssessment/{first.prediction_id}"
    )
    assert search(first.fhir_patient_id)["total"] == 1  # the EHR's id on the upstream server
    assert search(f"{EHR_BASE}/Patient/{other.fhir_patient_id}")["total"] == 1
    assert search(str(first.patient_id), "2026-03-02")["total"] == 1
    assert search(str(first.patient_id), "2026-03")["total"] == 1
    assert search(str(first.patient_id), "ge2026-03-03")["total"] == 0
    assert search(str(first.patient_id), "lt2026-03-02T09:32:00Z")["total"] == 0
    assert search(str(first.patient_id), "le2026-03-02T09:32:00Z")["total"] == 1
    assert search(str(first.patient_id), "gt2026-01-01", "lt2027")["total"] == 1
    assert search(str(other.patient_id), "2026-03")["total"] == 0
    assert search(str(uuid.uuid4()))["total"] == 0
    paged = search(str(first.patient_id), _count="0")
    assert paged["total"] == 1 and "entry" not in paged
    assert [link["relation"] for link in paged["link"]] == ["self", "next"]


def test_bad_search_parameters(client: TestClient) -> None:
    assert client.get("/fhir/RiskAssessment").status_code == 400
    bad = client.get("/fhir/RiskAssessment", params={"patient": "x", "date": "yesterday"})
    assert bad.status_code == 400 and bad.json()["resourceType"] == "OperationOutcome"
    assert client.get("/fhir/RiskAssessment/not-a-uuid").status_code == 404
    assert client.get("/fhir/Observation/not-a-uuid").status_code == 404
    assert client.get(f"/fhir/ImagingStudy/{uuid.uuid4()}").status_code == 404
