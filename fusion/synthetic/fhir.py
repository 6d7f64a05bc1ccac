"""FHIR R4 JSON resources for a synthetic patient (plain dicts, validated in the tests).

Observation categories use the ``observation-category`` code system (FHIR R4 §11.20.4);
quantities use UCUM; notes are DocumentReferences with a base64 ``text/plain`` attachment.
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

from fusion.inputs import LOINC_SYSTEM, UCUM_SYSTEM
from fusion.synthetic.codes import SPEC_BY_LOINC
from fusion.synthetic.dicom import accession_number, study_uids

if TYPE_CHECKING:
    from fusion.synthetic.cohort import SyntheticPatient

CATEGORY_SYSTEM = "http://terminology.hl7.org/CodeSystem/observation-category"
MRN_SYSTEM = "urn:oid:2.16.840.1.113883.3.9999.1"
"""Identifier system of synthetic medical record numbers (an example OID arc)."""


def _instant(patient: SyntheticPatient, relative_seconds: float) -> str:
    return patient.absolute_time(relative_seconds).isoformat()


def patient_to_fhir(patient: SyntheticPatient) -> list[dict[str, Any]]:
    """FHIR R4 resources: Patient, Observations, DocumentReferences and an ImagingStudy.

    Args:
        patient: A synthetic patient.

    Returns:
        JSON-ready dicts; references use ``Patient/<id>``.
    """
    pid = patient.patient_id
    subject = {"reference": f"Patient/{pid}"}
    resources: list[dict[str, Any]] = [
        {
            "resourceType": "Patient",
            "id": pid,
            "identifier": [{"system": MRN_SYSTEM, "value": pid}],
            "name": [{"family": patient.family_name, "given": [patient.given_name]}],
            "gender": patient.sex,
            "birthDate": patient.birth_date.isoformat(),
        }
    ]
    for n, obs in enumerate(patient.observations):
        spec = SPEC_BY_LOINC[obs.code]
        resources.append(
            {
                "resourceType": "Observation",
                "id": f"{pid}-obs-{n}",
                "status": "final",
                "category": [{"coding": [{"system": CATEGORY_SYSTEM, "code": obs.category}]}],
                "code": {
                    "coding": [{"system": LOINC_SYSTEM, "code": obs.code, "display": spec.display}]
                },
                "subject": subject,
                "effectiveDateTime": _instant(patient, obs.relative_seconds),
                "valueQuantity": {
                    "value": obs.value,
                    "unit": obs.unit,
                    "system": UCUM_SYSTEM,
                    "code": obs.unit,
                },
            }
        )
    for n, note in enumerate(patient.notes):
        resources.append(
            {
                "resourceType": "DocumentReference",
                "id": f"{pid}-note-{n}",
                "status": "current",
                "type": {
                    "coding": [
                        {"system": LOINC_SYSTEM, "code": "11506-3", "display": "Progress note"}
                    ]
                },
                "subject": subject,
                "date": _instant(patient, note.relative_seconds),
                "content": [
                    {
                        "attachment": {
                            "contentType": "text/plain; charset=utf-8",
                            "data": base64.b64encode(note.text.encode("utf-8")).decode("ascii"),
                            "creation": _instant(patient, note.relative_seconds),
                        }
                    }
                ],
            }
        )
    if patient.image is not None:
        study_uid, series_uid, sop_uid = study_uids(patient)
        resources.append(
            {
                "resourceType": "ImagingStudy",
                "id": f"{pid}-study",
                "identifier": [
                    {"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"},
                    {
                        "type": {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                    "code": "ACSN",
                                }
                            ]
                        },
                        "value": accession_number(patient),
                    },
                ],
                "status": "available",
                "modality": [
                    {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "DX"}
                ],
                "subject": subject,
                "started": _instant(patient, patient.image_relative_seconds),
                "numberOfSeries": 1,
                "numberOfInstances": 1,
                "series": [
                    {
                        "uid": series_uid,
                        "number": 1,
                        "modality": {
                            "system": "http://dicom.nema.org/resources/ontology/DCM",
                            "code": "DX",
                        },
                        "bodySite": {
                            "system": "http://snomed.info/sct",
                            "code": "51185008",
                            "display": "Thoracic structure",
                        },
                        "numberOfInstances": 1,
                        "instance": [
                            {
                                "uid": sop_uid,
                                "sopClass": {
                                    "system": "urn:ietf:rfc:3986",
                                    "code": "urn:oid:1.2.840.10008.5.1.4.1.1.1.1",
                                },
                                "number": 1,
                            }
                        ],
                    }
                ],
            }
        )
    return resources
