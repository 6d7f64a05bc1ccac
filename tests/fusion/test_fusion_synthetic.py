"""The synthetic cohort: determinism, a known true risk, and valid DICOM, FHIR and HL7."""

from __future__ import annotations

import base64
import importlib
import io
from typing import Any

import numpy as np
import pydicom
import pytest
from hl7apy.parser import parse_message
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian

from fusion.inputs import MODALITIES, BundleInput
from fusion.synthetic import SyntheticPatient, generate_cohort
from fusion.synthetic.cohort import true_risk


def test_same_seed_same_cohort() -> None:
    first = generate_cohort(12, seed=3)
    second = generate_cohort(12, seed=3)
    for a, b in zip(first, second, strict=True):
        assert a.notes == b.notes
        assert a.observations == b.observations
        assert a.true_risk == b.true_risk
        assert (a.image is None) == (b.image is None)
        if a.image is not None and b.image is not None:
            assert np.array_equal(a.image, b.image)
        assert a.to_hl7_messages() == b.to_hl7_messages()
        assert a.to_fhir_resources() == b.to_fhir_resources()


def test_patient_does_not_depend_on_cohort_size() -> None:
    assert generate_cohort(3, seed=5)[2].to_fhir_resources() == (
        generate_cohort(6, seed=5)[2].to_fhir_resources()
    )


def test_different_seed_different_cohort() -> None:
    assert generate_cohort(4, seed=1)[0].true_risk != generate_cohort(4, seed=2)[0].true_risk


def test_true_risk_is_a_probability_and_grows_with_the_interaction() -> None:
    assert 0.0 < true_risk(0.0, 0.0, 60.0) < 1.0
    both = true_risk(1.5, 1.5, 60.0)
    additive = true_risk(1.5, 0.0, 60.0) + true_risk(0.0, 1.5, 60.0) - true_risk(0, 0, 60.0)
    assert both > additive


def test_missing_rates_are_respected() -> None:
    cohort = generate_cohort(200, seed=4, missing_rates={"image": 1.0, "labs": 0.0})
    assert all(p.image is None for p in cohort)
    assert all("labs" in p.present_modalities() for p in cohort)
    assert all(set(p.present_modalities()) <= set(MODALITIES) for p in cohort)


def test_dicom_is_a_valid_dx_chest_file(cohort: list[SyntheticPatient]) -> None:
    with_image = [p for p in cohort if p.image is not None]
    assert with_image
    patient = with_image[0]
    (dataset,) = patient.to_dicom_datasets()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    buffer.seek(0)
    read = pydicom.dcmread(buffer)
    assert read.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert read.SOPClassUID == DigitalXRayImageStorageForPresentation
    assert read.Modality == "DX"
    assert read.BodyPartExamined == "CHEST"
    assert read.PatientID == patient.patient_id
    assert read.StudyInstanceUID.is_valid
    assert read.SOPInstanceUID == read.file_meta.MediaStorageSOPInstanceUID
    assert read.pixel_array.dtype == np.uint16
    assert np.array_equal(read.pixel_array, patient.image)


def test_no_image_no_dicom(cohort: list[SyntheticPatient]) -> None:
    without = [p for p in cohort if p.image is None]
    assert without
    assert without[0].to_dicom_datasets() == []


def _validate(resource: dict[str, Any]) -> Any:
    kind = resource["resourceType"]
    module = importlib.import_module(f"fhir.resources.R4B.{kind.lower()}")
    return getattr(module, kind).model_validate(resource)


def test_fhir_resources_validate(cohort: list[SyntheticPatient]) -> None:
    kinds = set()
    for patient in cohort[:10]:
        for resource in patient.to_fhir_resources():
            _validate(resource)
            kinds.add(resource["resourceType"])
    assert kinds == {"Patient", "Observation", "DocumentReference", "ImagingStudy"}


def test_fhir_observations_carry_loinc_ucum_and_category(cohort: list[SyntheticPatient]) -> None:
    patient = next(p for p in cohort if p.observations and p.notes)
    resources = patient.to_fhir_resources()
    observations = [r for r in resources if r["resourceType"] == "Observation"]
    assert len(observations) == len(patient.observations)
    for resource in observations:
        assert resource["code"]["coding"][0]["system"] == "http://loinc.org"
        assert resource["valueQuantity"]["system"] == "http://unitsofmeasure.org"
        category = resource["category"][0]["coding"][0]["code"]
        assert category in ("laboratory", "vital-signs")
    document = next(r for r in resources if r["resourceType"] == "DocumentReference")
    text = base64.b64decode(document["content"][0]["attachment"]["data"]).decode("utf-8")
    assert text in [n.text for n in patient.notes]


def test_hl7_messages_parse(cohort: list[SyntheticPatient]) -> None:
    patient = next(p for p in cohort if p.observations and p.notes)
    messages = patient.to_hl7_messages()
    types = []
    n_obx = 0
    for text in messages:
        assert "\r" in text and "\n" not in text
        message = parse_message(text, find_groups=True)
        types.append(message.msh.msh_9.value)
        if text.split("\r")[0].split("|")[8].startswith("ORU"):
            n_obx += sum(1 for seg in text.split("\r") if seg.startswith("OBX|"))
            assert all(
                seg.split("|")[2] == "NM" for seg in text.split("\r") if seg.startswith("OBX|")
            )
    assert types[0].startswith("ADT^A01")
    assert any(t.startswith("ORU^R01") for t in types)
    assert any(t.startswith("MDM^T02") for t in types)
    assert n_obx == len(patient.observations)


def test_bundle_input_round_trips_json(inputs: list[BundleInput]) -> None:
    for item in inputs[:5]:
        again = BundleInput.from_dict(item.to_dict())
        assert again.notes == item.notes
        assert again.observations == item.observations
        assert again.demographics == item.demographics
        if item.image is None:
            assert again.image is None
        else:
            assert again.image is not None
            assert np.array_equal(again.image, item.image)


@pytest.mark.parametrize("modality", MODALITIES)
def test_missing_modalities_reported(modality: str) -> None:
    patient = generate_cohort(1, seed=2, missing_rates={modality: 1.0})[0]
    assert patient.to_bundle_input().missing_modalities() == [modality]
