"""Read-only FHIR R4 views of the timeline: what ``RiskAssessment.basis`` points to.

Each view is built from stored rows on request; nothing is written. Where the underlying
item came from a FHIR server, ``meta.source`` names the original resource.

* ``Patient/{patient uuid}``: business identifiers, gender and birth date from the latest
  demographics, ``link`` to the patient on FHIR servers (``seealso``) and to the survivor
  of a merge (``replaced-by``). Never a name.
* ``Observation/{event uuid}``: category, code, value, effective time.
* ``ImagingStudy/{study uuid}``: the DICOM hierarchy (R4 ImagingStudy, identifiers in
  ``urn:dicom:uid`` form).
* ``DocumentReference/{event uuid}``: a note, its text as a ``text/plain`` attachment.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cds.core.db.models import (
    EventKind,
    EventStatus,
    ImagingInstance,
    ImagingSeries,
    ImagingStudy,
    Patient,
    Protocol,
    SourceItem,
    StudyState,
    TimelineEvent,
)
from cds.fhir import codes
from cds.fhir.assessment import load_patient_ref
from cds.fhir.fhirtime import instant

_GENDER = {"f": "female", "female": "female", "m": "male", "male": "male", "o": "other"}
_V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"


def _gender(value: Any) -> str:
    return _GENDER.get(str(value or "").strip().lower(), "unknown")


def _meta_source(session: Session, source_item_id: uuid.UUID) -> dict[str, Any]:
    source = session.get(SourceItem, source_item_id)
    if source is not None and source.protocol is Protocol.FHIR:
        return {"meta": {"source": f"{source.namespace.rstrip('/')}/{source.item_id}"}}
    return {}


def patient_view(*, session: Session, patient_id: uuid.UUID) -> dict[str, Any] | None:
    """The Patient view, or ``None`` when there is no such patient."""
    patient = session.get(Patient, patient_id)
    if patient is None:
        return None
    ref = load_patient_ref(session=session, patient_id=patient_id)
    resource: dict[str, Any] = {"resourceType": "Patient", "id": str(patient_id)}
    identifiers = []
    for system, value, type_code in ref.identifiers:
        identifier: dict[str, Any] = {"system": system, "value": value}
        if type_code:
            identifier["type"] = {"coding": [{"system": _V2_0203, "code": type_code}]}
        identifiers.append(identifier)
    if identifiers:
        resource["identifier"] = identifiers
    resource["active"] = patient.merged_into_id is None
    demographics = session.scalar(
        select(TimelineEvent)
        .where(
            TimelineEvent.patient_id == patient_id,
            TimelineEvent.kind == EventKind.DEMOGRAPHICS,
            TimelineEvent.status == EventStatus.CURRENT,
        )
        .order_by(TimelineEvent.effective_at.desc())
        .limit(1)
    )
    details = (demographics.details or {}) if demographics is not None else {}
    if details.get("gender"):
        resource["gender"] = _gender(details["gender"])
    if isinstance(details.get("birthDate"), str):
        resource["birthDate"] = details["birthDate"]
    links = [
        {"other": {"reference": f"{base}/{fhir_id}"}, "type": "seealso"}
        for base, fhir_id in sorted(ref.fhir_ids.items())
    ]
    if patient.merged_into_id is not None:
        links.insert(
            0, {"other": {"reference": f"Patient/{patient.merged_into_id}"}, "type": "replaced-by"}
        )
    if links:
        resource["link"] = links
    return resource


def _event(session: Session, event_id: uuid.UUID, kind: EventKind) -> TimelineEvent | None:
    event = session.get(TimelineEvent, event_id)
    if event is None or event.kind is not kind or event.patient_id is None:
        return None
    return event


def observation_view(*, session: Session, event_id: uuid.UUID) -> dict[str, Any] | None:
    """The Observation view of an observation event, or ``None``."""
    event = _event(session, event_id, EventKind.OBSERVATION)
    if event is None:
        return None
    resource: dict[str, Any] = {"resourceType": "Observation", "id": str(event.id)}
    resource.update(_meta_source(session, event.source_item_id))
    resource["status"] = "entered-in-error" if event.status is EventStatus.RETRACTED else "final"
    if event.category:
        resource["category"] = [
            {"coding": [{"system": codes.OBSERVATION_CATEGORY, "code": event.category}]}
        ]
    coding = {
        k: v
        for k, v in (
            ("system", event.code_system),
            ("code", event.code),
            ("display", event.display),
        )
        if v
    }
    resource["code"] = {"coding": [coding]} if coding else {"text": "unknown"}
    resource["subject"] = {"reference": f"Patient/{event.patient_id}"}
    if event.effective_end is not None:
        resource["effectivePeriod"] = {
            "start": instant(event.effective_at),
            "end": instant(event.effective_end),
        }
    else:
        resource["effectiveDateTime"] = instant(event.effective_at)
    if event.value_num is not None:
        quantity: dict[str, Any] = {"value": event.value_num}
        if event.unit:
            quantity.update(unit=event.unit, system=codes.UCUM, code=event.unit)
        resource["valueQuantity"] = quantity
    elif event.value_text:
        resource["valueString"] = event.value_text
    return resource


def document_reference_view(*, session: Session, event_id: uuid.UUID) -> dict[str, Any] | None:
    """The DocumentReference view of a note event, or ``None``."""
    event = _event(session, event_id, EventKind.NOTE)
    if event is None:
        return None
    status = {
        EventStatus.CURRENT: "current",
        EventStatus.SUPERSEDED: "superseded",
        EventStatus.RETRACTED: "entered-in-error",
    }[event.status]
    resource: dict[str, Any] = {"resourceType": "DocumentReference", "id": str(event.id)}
    resource.update(_meta_source(session, event.source_item_id))
    resource["status"] = status
    if event.code:
        coding = {"system": event.code_system or codes.LOINC, "code": event.code}
        if event.display:
            coding["display"] = event.display
        resource["type"] = {"coding": [coding]}
    resource["subject"] = {"reference": f"Patient/{event.patient_id}"}
    resource["date"] = instant(event.effective_at)
    text = (event.value_text or "").encode("utf-8")
    resource["content"] = [
        {
            "attachment": {
                "contentType": "text/plain; charset=utf-8",
                "data": base64.b64encode(text).decode("ascii"),
            }
        }
    ]
    return resource


def imaging_study_view(*, session: Session, study_id: uuid.UUID) -> dict[str, Any] | None:
    """The ImagingStudy view of a received DICOM study, or ``None``."""
    study = session.get(ImagingStudy, study_id)
    if study is None or study.patient_id is None:
        return None
    series_rows = list(
        session.scalars(
            select(ImagingSeries)
            .where(ImagingSeries.study_id == study.id)
            .order_by(ImagingSeries.SeriesNumber, ImagingSeries.SeriesInstanceUID)
        )
    )
    instances: dict[uuid.UUID, list[ImagingInstance]] = {s.id: [] for s in series_rows}
    for instance in session.scalars(
        select(ImagingInstance)
        .where(ImagingInstance.series_id.in_(list(instances)))
        .order_by(ImagingInstance.InstanceNumber, ImagingInstance.SOPInstanceUID)
    ):
        instances[instance.series_id].append(instance)
    identifiers: list[dict[str, Any]] = [
        {"system": codes.DICOM_UID, "value": f"urn:oid:{study.StudyInstanceUID}"}
    ]
    if study.AccessionNumber:
        identifiers.append(
            {
                "type": {"coding": [{"system": _V2_0203, "code": "ACSN"}]},
                "value": study.AccessionNumber,
            }
        )
    resource: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "id": str(study.id),
        "identifier": identifiers,
        "status": "available" if study.state is StudyState.COMPLETE else "registered",
    }
    modalities = sorted({s.Modality for s in series_rows if s.Modality})
    if modalities:
        resource["modality"] = [{"system": codes.DICOM_DCM, "code": m} for m in modalities]
    resource["subject"] = {"reference": f"Patient/{study.patient_id}"}
    resource["started"] = instant(study.study_datetime or study.first_received_at)
    resource["numberOfSeries"] = len(series_rows)
    resource["numberOfInstances"] = sum(len(v) for v in instances.values())
    if study.StudyDescription:
        resource["description"] = study.StudyDescription
    series_out = []
    for series in series_rows:
        entry: dict[str, Any] = {"uid": series.SeriesInstanceUID}
        if series.SeriesNumber is not None:
            entry["number"] = series.SeriesNumber
        entry["modality"] = {"system": codes.DICOM_DCM, "code": series.Modality or "OT"}
        if series.SeriesDescription:
            entry["description"] = series.SeriesDescription
        entry["numberOfInstances"] = len(instances[series.id])
        if series.BodyPartExamined:
            entry["bodySite"] = {"display": series.BodyPartExamined}
        entry["instance"] = [
            {
                "uid": inst.SOPInstanceUID,
                "sopClass": {"system": "urn:ietf:rfc:3986", "code": f"urn:oid:{inst.SOPClassUID}"},
                **({"number": inst.InstanceNumber} if inst.InstanceNumber is not None else {}),
            }
            for inst in instances[series.id]
        ]
        if not entry["instance"]:
            del entry["instance"]
        series_out.append(entry)
    if series_out:
        resource["series"] = series_out
    return resource
