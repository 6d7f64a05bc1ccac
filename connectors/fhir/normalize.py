"""FHIR R4 resources to timeline items (pure: a resource dict in, an ``ItemIn`` out).

* Patient: DEMOGRAPHICS (``birthDate``, ``gender``; never the name). Its identifiers are the
  patient's, plus the pseudo-identifier ``urn:cdsfusion:fhir:{base}|Patient/{id}`` so that
  items that arrived earlier with only a ``Patient/{id}`` reference attach to it.
* Observation: OBSERVATION per resource and per component (``#component-N``): category
  (``laboratory``, ``vital-signs``, ...), LOINC code, value (Quantity, string,
  CodeableConcept, boolean, integer), UCUM unit, effective time. A panel without value
  (blood pressure) is only its components.
* Encounter: ENCOUNTER from ``period`` (start, end), class and status.
* DiagnosticReport: DIAGNOSTIC_REPORT with conclusion or presented text.
* DocumentReference: NOTE with the text decoded from ``content.attachment.data`` (text/*).
* ImagingStudy: IMAGING_STUDY with ``StudyInstanceUID`` (from ``identifier`` system
  ``urn:dicom:uid``), the link to the DICOM study of the same UID.

``status = entered-in-error`` retracts (R4 §3.2.0.13.2). Lineage keys are
``fhir|{base}|{Type}/{id}`` (``#component-N`` appended for components): stable across
versions, so a new ``meta.versionId`` supersedes the old event and keeps it as history.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo

from cds.core.clinical import EventIn, IdentifierIn, ItemIn, SourceItemIn
from cds.core.db.models import EventKind, Protocol
from cds.core.errors import MalformedInputError
from connectors.fhir.dates import parse_datetime
from connectors.fhir.resources import TIMELINE_TYPES, canonical_json, content_hash, split_reference

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
DICOM_UID_SYSTEM = "urn:dicom:uid"
PSEUDO_SYSTEM_PREFIX = "urn:cdsfusion:fhir:"
FHIR_JSON = "application/fhir+json"


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a resource came from and when.

    Attributes:
        base: the server's base URL without trailing slash (the provenance namespace).
        tz: the site's zone for dateTimes without offset.
        received_at: when the notification arrived (aware).
        sender: the notifying peer's address.
    """

    base: str
    tz: ZoneInfo
    received_at: dt.datetime
    sender: str = ""


def normalize_base(url: str) -> str:
    return url.strip().rstrip("/")


def lineage_key(base: str, resource_type: str, resource_id: str) -> str:
    return f"fhir|{base}|{resource_type}/{resource_id}"


def pseudo_identifier(base: str, patient_id: str) -> IdentifierIn:
    """The identifier that ties ``Patient/{id}`` references on ``base`` to one patient."""
    return IdentifierIn(system=f"{PSEUDO_SYSTEM_PREFIX}{base}", value=f"Patient/{patient_id}")


def pseudo_patient_ref(base: str, patient_id: str) -> str:
    ident = pseudo_identifier(base, patient_id)
    return f"{ident.system}|{ident.value}"


def source_item(resource: dict[str, Any], origin: Origin) -> SourceItemIn:
    """Provenance of one resource version: ``Type/id`` at ``meta.versionId`` (or content hash)."""
    payload = canonical_json(resource)
    version = (resource.get("meta") or {}).get("versionId")
    return SourceItemIn(
        protocol=Protocol.FHIR,
        namespace=origin.base,
        item_id=f"{resource['resourceType']}/{resource['id']}",
        item_version=str(version) if version else content_hash(resource),
        content_sha256=SourceItemIn.sha256(payload),
        received_at=origin.received_at,
        sender=origin.sender,
        content_type=FHIR_JSON,
        size_bytes=len(payload),
        payload=payload,
    )


def normalize_resource(resource: dict[str, Any], origin: Origin) -> ItemIn | None:
    """The timeline item for a checked resource, or ``None`` when it is not taken.

    Not taken: resource types outside :data:`TIMELINE_TYPES` and resources whose subject
    is not a Patient (a Group, a Device, a Location).

    Raises:
        MalformedInputError: a value needed for the timeline is missing or invalid.
    """
    resource_type = resource["resourceType"]
    if resource_type not in TIMELINE_TYPES:
        return None
    try:
        if resource_type == "Patient":
            return _patient(resource, origin)
        subject = _subject(resource, origin)
        if subject is None:
            return None
        identifiers, patient_ref = subject
        events = _EVENTS[resource_type](resource, origin)
    except ValueError as exc:
        raise MalformedInputError(f"{resource_type} has an invalid date or value") from exc
    return ItemIn(
        source=source_item(resource, origin),
        identifiers=identifiers,
        patient_ref=patient_ref,
        events=events,
    )


def retraction_item(
    *,
    resource_type: str,
    resource_id: str,
    current: Sequence[tuple[str, EventKind]],
    patient_ref: str | None,
    origin: Origin,
) -> ItemIn:
    """A deletion (HAPI ``DELETE``, Medplum delete): retract the current events of a resource.

    Args:
        current: ``(lineage_key, kind)`` of the resource's current events.
        patient_ref: where the retracted events live (the stored item's reference).
    """
    marker = canonical_json(
        {"deleted": f"{resource_type}/{resource_id}", "lineages": sorted(k for k, _ in current)}
    )
    source = SourceItemIn(
        protocol=Protocol.FHIR,
        namespace=origin.base,
        item_id=f"{resource_type}/{resource_id}",
        item_version="deleted:" + SourceItemIn.sha256(marker)[:32],
        content_sha256=SourceItemIn.sha256(marker),
        received_at=origin.received_at,
        sender=origin.sender,
        content_type="application/json",
        size_bytes=len(marker),
        payload=marker,
    )
    events = tuple(
        EventIn(
            kind=kind,
            lineage_key=key,
            event_key=f"retract-{n}",
            effective_at=origin.received_at,
            retracts=True,
        )
        for n, (key, kind) in enumerate(sorted(current))
    )
    return ItemIn(source=source, patient_ref=patient_ref, events=events)


def _subject(
    resource: dict[str, Any], origin: Origin
) -> tuple[tuple[IdentifierIn, ...], str | None] | None:
    subject = resource.get("subject") or resource.get("patient")
    if not isinstance(subject, dict):
        raise MalformedInputError(f"{resource['resourceType']} has no subject")
    reference = subject.get("reference")
    if isinstance(reference, str) and reference:
        parts = split_reference(reference, origin.base)
        if parts is None:
            raise MalformedInputError(f"{resource['resourceType']}.subject is not resolvable")
        if parts[0] != "Patient":
            return None
        return (), pseudo_patient_ref(origin.base, parts[1])
    identifier = subject.get("identifier")
    if isinstance(identifier, dict) and identifier.get("value"):
        ident = IdentifierIn(system=str(identifier.get("system") or ""), value=identifier["value"])
        return (ident,), None
    raise MalformedInputError(f"{resource['resourceType']}.subject has no reference")


def _patient(resource: dict[str, Any], origin: Origin) -> ItemIn:
    identifiers = [pseudo_identifier(origin.base, resource["id"])]
    for ident in resource.get("identifier") or ():
        value = ident.get("value")
        if not value:
            continue
        type_codings = (ident.get("type") or {}).get("coding") or [{}]
        identifiers.append(
            IdentifierIn(
                system=str(ident.get("system") or ""),
                value=str(value),
                type_code=type_codings[0].get("code"),
            )
        )
    details: dict[str, Any] = {}
    if resource.get("birthDate"):
        details["birthDate"] = resource["birthDate"]
    if resource.get("gender"):
        details["gender"] = resource["gender"]
    event = EventIn(
        kind=EventKind.DEMOGRAPHICS,
        lineage_key=lineage_key(origin.base, "Patient", resource["id"]),
        event_key="demographics",
        effective_at=_last_updated(resource, origin),
        details=details,
    )
    return ItemIn(
        source=source_item(resource, origin), identifiers=tuple(identifiers), events=(event,)
    )


def _last_updated(resource: dict[str, Any], origin: Origin) -> dt.datetime:
    meta = resource.get("meta") or {}
    return parse_datetime(meta.get("lastUpdated"), origin.tz) or origin.received_at


def _coding(concept: Any, prefer: str | None = LOINC) -> tuple[str | None, str | None, str | None]:
    """(system, code, display) of a CodeableConcept, preferring ``prefer``'s coding."""
    if not isinstance(concept, dict):
        return None, None, None
    codings = [c for c in concept.get("coding") or () if isinstance(c, dict)]
    chosen = next((c for c in codings if c.get("system") == prefer), None)
    chosen = chosen or (codings[0] if codings else {})
    display = chosen.get("display") or concept.get("text")
    return chosen.get("system"), chosen.get("code"), display


def _effective(resource: dict[str, Any], origin: Origin, *fields: str) -> dt.datetime:
    for name in fields:
        value = resource.get(name)
        if isinstance(value, dict):
            value = value.get("start")
        when = parse_datetime(value, origin.tz)
        if when is not None:
            return when
    return _last_updated(resource, origin)


def _retracted(resource: dict[str, Any]) -> bool:
    return resource.get("status") == "entered-in-error"


def _categories(resource: dict[str, Any]) -> list[str]:
    return [
        str(coding["code"])
        for concept in resource.get("category") or ()
        for coding in (concept.get("coding") or ())
        if coding.get("code")
    ]


def _value(element: dict[str, Any]) -> tuple[float | None, str | None, str | None, dict[str, Any]]:
    """(value_num, value_text, unit, details) of an Observation or component value[x]."""
    if "valueQuantity" in element:
        quantity = element["valueQuantity"]
        unit = quantity.get("code") if quantity.get("system") == UCUM else None
        details = (
            {} if quantity.get("system") in (UCUM, None) else {"unitText": quantity.get("unit")}
        )
        if quantity.get("comparator"):
            details["comparator"] = quantity["comparator"]
        value = quantity.get("value")
        return (
            (float(value) if value is not None else None),
            None,
            unit or quantity.get("unit"),
            details,
        )
    if "valueCodeableConcept" in element:
        system, code, display = _coding(element["valueCodeableConcept"], prefer=None)
        return None, display or code, None, {"valueCode": code, "valueSystem": system}
    if "valueString" in element:
        return None, str(element["valueString"]), None, {}
    if "valueBoolean" in element:
        return None, "true" if element["valueBoolean"] else "false", None, {}
    if "valueInteger" in element:
        return float(element["valueInteger"]), None, None, {}
    return None, None, None, {}


def _observation(resource: dict[str, Any], origin: Origin) -> tuple[EventIn, ...]:
    key = lineage_key(origin.base, "Observation", resource["id"])
    when = _effective(
        resource, origin, "effectiveDateTime", "effectivePeriod", "effectiveInstant", "issued"
    )
    categories = _categories(resource)
    category = next((c for c in categories if c in ("vital-signs", "laboratory")), None)
    category = category or (categories[0] if categories else None)
    system, code, display = _coding(resource.get("code"))
    retracts = _retracted(resource)
    components = [c for c in resource.get("component") or () if isinstance(c, dict)]
    num, text, unit, details = _value(resource)
    details = {k: v for k, v in details.items() if v is not None}
    details["status"] = resource.get("status")
    events: list[EventIn] = []
    if num is not None or text is not None or not components:
        events.append(
            EventIn(
                kind=EventKind.OBSERVATION, lineage_key=key, event_key="value", effective_at=when,
                category=category, code_system=system, code=code, display=display,
                value_num=num, value_text=text, unit=unit,
                details={**details, "components": len(components)} if components else details,
                retracts=retracts,
            )
        )  # fmt: skip
    for n, component in enumerate(components):
        c_system, c_code, c_display = _coding(component.get("code"))
        c_num, c_text, c_unit, c_details = _value(component)
        events.append(
            EventIn(
                kind=EventKind.OBSERVATION, lineage_key=f"{key}#component-{n}",
                event_key=f"component-{n}", effective_at=when, category=category,
                code_system=c_system, code=c_code, display=c_display, value_num=c_num,
                value_text=c_text, unit=c_unit,
                details={**{k: v for k, v in c_details.items() if v is not None}, "panel": code},
                retracts=retracts,
            )
        )  # fmt: skip
    return tuple(events)


def _encounter(resource: dict[str, Any], origin: Origin) -> tuple[EventIn, ...]:
    period = resource.get("period") or {}
    start = parse_datetime(period.get("start"), origin.tz) or _last_updated(resource, origin)
    encounter_class = resource.get("class") or {}
    types = resource.get("type") or [None]
    _, type_code, type_display = _coding(types[0], prefer=None)
    details = {"status": resource.get("status"), "type": type_code}
    return (
        EventIn(
            kind=EventKind.ENCOUNTER,
            lineage_key=lineage_key(origin.base, "Encounter", resource["id"]),
            event_key="encounter",
            effective_at=start,
            effective_end=parse_datetime(period.get("end"), origin.tz),
            code_system=encounter_class.get("system"),
            code=encounter_class.get("code"),
            display=type_display,
            details={k: v for k, v in details.items() if v is not None},
            retracts=_retracted(resource),
        ),
    )


def attachment_text(attachment: dict[str, Any]) -> str | None:
    """Text of an inline text/* attachment (R4 Attachment.data is base64), else ``None``."""
    data = attachment.get("data")
    content_type = str(attachment.get("contentType") or "text/plain")
    if not data or not content_type.lower().startswith("text/"):
        return None
    charset = "utf-8"
    for param in content_type.split(";")[1:]:
        name, _, value = param.strip().partition("=")
        if name.lower() == "charset" and value:
            charset = value.strip('"')
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedInputError("attachment data is not base64") from exc
    try:
        return raw.decode(charset, errors="replace")
    except LookupError:
        return raw.decode("utf-8", errors="replace")


def _diagnostic_report(resource: dict[str, Any], origin: Origin) -> tuple[EventIn, ...]:
    system, code, display = _coding(resource.get("code"))
    texts = [
        text
        for form in resource.get("presentedForm") or ()
        if (text := attachment_text(form)) is not None
    ]
    conclusion = resource.get("conclusion")
    value_text = conclusion or ("\n\n".join(texts) if texts else None)
    results = [r.get("reference") for r in resource.get("result") or () if r.get("reference")]
    details: dict[str, Any] = {
        "status": resource.get("status"),
        "categories": _categories(resource),
    }
    if results:
        details["results"] = results
    return (
        EventIn(
            kind=EventKind.DIAGNOSTIC_REPORT,
            lineage_key=lineage_key(origin.base, "DiagnosticReport", resource["id"]),
            event_key="report",
            effective_at=_effective(
                resource, origin, "effectiveDateTime", "effectivePeriod", "issued"
            ),
            category=next(iter(_categories(resource)), None),
            code_system=system,
            code=code,
            display=display,
            value_text=value_text,
            details=details,
            retracts=_retracted(resource),
        ),
    )


def _document_reference(resource: dict[str, Any], origin: Origin) -> tuple[EventIn, ...]:
    system, code, display = _coding(resource.get("type"))
    attachments = [c.get("attachment") or {} for c in resource.get("content") or ()]
    texts = [text for a in attachments if (text := attachment_text(a)) is not None]
    mime = next((a.get("contentType") for a in attachments if a.get("contentType")), None)
    context_period = (resource.get("context") or {}).get("period") or {}
    when = parse_datetime(resource.get("date"), origin.tz) or parse_datetime(
        context_period.get("start"), origin.tz
    )
    details: dict[str, Any] = {
        "mimeType": mime,
        "status": resource.get("status"),
        "docStatus": resource.get("docStatus"),
    }
    if not texts and any(a.get("url") for a in attachments):
        details["textAt"] = "attachment.url"
    return (
        EventIn(
            kind=EventKind.NOTE,
            lineage_key=lineage_key(origin.base, "DocumentReference", resource["id"]),
            event_key="note",
            effective_at=when or _last_updated(resource, origin),
            code_system=system,
            code=code,
            display=resource.get("description") or display,
            value_text="\n\n".join(texts) if texts else None,
            details={k: v for k, v in details.items() if v is not None},
            retracts=_retracted(resource),
        ),
    )


def study_instance_uid(resource: dict[str, Any]) -> str | None:
    """The StudyInstanceUID of an ImagingStudy (identifier system ``urn:dicom:uid``)."""
    for ident in resource.get("identifier") or ():
        if ident.get("system") == DICOM_UID_SYSTEM and ident.get("value"):
            value = str(ident["value"])
            return value.removeprefix("urn:oid:")
    return None


def _imaging_study(resource: dict[str, Any], origin: Origin) -> tuple[EventIn, ...]:
    modalities = sorted(
        {
            str(s["modality"]["code"])
            for s in resource.get("series") or ()
            if (s.get("modality") or {}).get("code")
        }
    )
    procedure = (resource.get("procedureCode") or [None])[0]
    _, _, procedure_display = _coding(procedure, prefer=None)
    details = {
        "StudyInstanceUID": study_instance_uid(resource),
        "modalities": modalities,
        "numberOfSeries": resource.get("numberOfSeries"),
        "numberOfInstances": resource.get("numberOfInstances"),
        "status": resource.get("status"),
    }
    return (
        EventIn(
            kind=EventKind.IMAGING_STUDY,
            lineage_key=lineage_key(origin.base, "ImagingStudy", resource["id"]),
            event_key="study",
            effective_at=_effective(resource, origin, "started"),
            display=resource.get("description") or procedure_display,
            details={k: v for k, v in details.items() if v is not None},
            retracts=_retracted(resource),
        ),
    )


_EVENTS = {
    "Observation": _observation,
    "Encounter": _encounter,
    "DiagnosticReport": _diagnostic_report,
    "DocumentReference": _document_reference,
    "ImagingStudy": _imaging_study,
}
