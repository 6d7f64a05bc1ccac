"""HL7v2 messages to timeline items (pure: text in, :class:`~cds.core.clinical.ItemIn` out).

Supported (HL7 v2.5.1 chapters 3, 7 and 9):

* ``ORU^R01``: one OBSERVATION event per OBX (value types NM, SN, ST, TX, FT, CWE/CE; other
  types kept as text); LOINC ``LN`` codes become ``http://loinc.org``; OBX-6 is the unit
  (UCUM when the sender uses it); time from OBX-14, else OBR-7, else MSH-7. Vital signs
  are recognised by LOINC code (the FHIR vital-signs profile set), everything else is
  ``laboratory``. OBX-11 ``D``/``W`` retract, ``X`` (cannot be obtained) is skipped.
* ``ADT^A01/A04/A08/A03``: DEMOGRAPHICS (birth date and administrative sex, never the name)
  and, with PV1, an ENCOUNTER (PV1-44 admit, PV1-45 discharge).
* ``ADT^A40``: the patient of PID absorbs the patient of MRG-1 (see
  :mod:`connectors.hl7.store`).
* ``MDM^T02``: one NOTE from TXA and its OBX text lines (TX/ST/FT, or ED Base64 text).

Lineage keys (stable across corrections and re-sends, documented in README):

* observation: ``hl7|{MSH-3^MSH-4}|{filler or placer order}|{OBX-3 code}|{OBX-4 sub-id}``;
* encounter: ``hl7|{ns}|encounter|{PV1-19 visit number}``;
* demographics: ``hl7|{ns}|demographics|{sha256 of first PID-3 identifier}[:16]``;
* note: ``hl7|{ns}|document|{TXA-12 unique document number}``.

Missing order or visit numbers fall back to MSH-10 (the fact then has no later versions).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from cds.core.clinical import EventIn, IdentifierIn, ItemIn, SourceItemIn
from cds.core.db.models import EventKind, Protocol
from cds.core.errors import MalformedInputError
from connectors.hl7.er7 import Segment
from connectors.hl7.parse import MessageHeader, UnsupportedMessageError
from connectors.hl7.ts import parse_ts

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
PATIENT_CLASS_SYSTEM = "http://terminology.hl7.org/CodeSystem/v2-0004"

#: LOINC codes of the FHIR R4 vital-signs profile (§ Observation vital signs).
VITAL_SIGNS_LOINC = frozenset(
    {
        "85353-1", "9279-1", "8867-4", "2708-6", "59408-5", "8310-5", "8302-2", "9843-4",
        "29463-7", "39156-5", "85354-9", "8480-6", "8462-4", "8478-0",
    }
)  # fmt: skip

SUPPORTED = {
    "ORU": frozenset({"R01"}),
    "ADT": frozenset({"A01", "A03", "A04", "A08", "A40"}),
    "MDM": frozenset({"T02"}),
}

_GENDER = {"M": "male", "F": "female", "O": "other", "U": "unknown", "A": "other", "N": "other"}


class MessageContentError(MalformedInputError):
    """The message is readable but a required value is missing or wrong (AE).

    Attributes:
        code: HL7 table 0357 (``101`` required field missing, ``102`` data type error).
    """

    def __init__(self, message: str, code: str = "101") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Hl7Item:
    """A normalized message: the item for ingest, plus the merge it asks for (ADT^A40)."""

    item: ItemIn
    prior_identifiers: tuple[IdentifierIn, ...] = ()


@dataclass(frozen=True, slots=True)
class _Context:
    header: MessageHeader
    tz: ZoneInfo
    fallback_time: dt.datetime

    def lineage(self, *parts: str) -> str:
        return "|".join(("hl7", self.header.namespace, *parts))

    def ts(self, value: str, what: str) -> dt.datetime | None:
        try:
            return parse_ts(value, self.tz)
        except ValueError as exc:
            raise MessageContentError(f"{what} is not a valid TS", code="102") from exc


def check_supported(header: MessageHeader) -> None:
    """Raises :class:`UnsupportedMessageError` (AR) for message types not taken."""
    triggers = SUPPORTED.get(header.message_code)
    if triggers is None:
        raise UnsupportedMessageError("unsupported message type", code="200")
    if header.trigger_event not in triggers:
        raise UnsupportedMessageError("unsupported trigger event", code="201")


def normalize(
    *,
    header: MessageHeader,
    segments: Sequence[Segment],
    raw: bytes,
    sender: str,
    received_at: dt.datetime,
    tz: ZoneInfo,
) -> Hl7Item:
    """Turn a validated message into an :class:`Hl7Item`.

    Args:
        header: from :func:`connectors.hl7.parse.read_header`.
        segments: from :func:`connectors.hl7.parse.parse_segments`.
        raw: the message bytes as received (stored as provenance).
        sender: the peer's IP address.
        received_at: when the frame was complete (aware).
        tz: the site's zone for times without offset.

    Raises:
        UnsupportedMessageError: a type or trigger this engine does not take (AR).
        MessageContentError: a required segment or value is missing or invalid (AE).
    """
    check_supported(header)
    msh_time = parse_ts_or_none(header.timestamp, tz)
    ctx = _Context(header=header, tz=tz, fallback_time=msh_time or received_at)
    pid = _first(segments, "PID")
    if pid is None:
        raise MessageContentError("PID segment missing", code="100")
    identifiers = _identifiers(pid, 3)
    if not identifiers:
        raise MessageContentError("PID-3 patient identifier missing", code="101")
    events: tuple[EventIn, ...]
    prior: tuple[IdentifierIn, ...] = ()
    code, trigger = header.message_code, header.trigger_event
    if code == "ORU":
        events = _observations(ctx, segments)
    elif code == "MDM":
        events = (_note(ctx, segments),)
    elif trigger == "A40":
        mrg = _first(segments, "MRG")
        prior = _identifiers(mrg, 1) if mrg is not None else ()
        if not prior:
            raise MessageContentError("MRG-1 prior patient identifier missing", code="101")
        events = ()
    else:
        events = _adt_events(ctx, segments, pid, identifiers[0])
    source = SourceItemIn(
        protocol=Protocol.HL7V2,
        namespace=header.namespace,
        item_id=header.control_id,
        content_sha256=SourceItemIn.sha256(raw),
        received_at=received_at,
        sender=sender,
        content_type="x-application/hl7-v2+er7",
        size_bytes=len(raw),
        payload=raw,
    )
    return Hl7Item(
        item=ItemIn(source=source, identifiers=identifiers, events=events),
        prior_identifiers=prior,
    )


def parse_ts_or_none(value: str, tz: ZoneInfo) -> dt.datetime | None:
    try:
        return parse_ts(value, tz)
    except ValueError:
        return None


def _first(segments: Sequence[Segment], name: str) -> Segment | None:
    return next((s for s in segments if s.name == name), None)


def _identifiers(segment: Segment, field: int) -> tuple[IdentifierIn, ...]:
    """CX repetitions: id (CX.1), assigning authority (CX.4 HD namespace or universal id)."""
    found: list[IdentifierIn] = []
    for rep in range(len(segment.repetitions(field))):
        value = segment.component(field, 1, rep)
        if not value:
            continue
        authority = segment.components(field, rep)[3:4]
        system = ""
        if authority:
            parts = authority[0].split(segment.enc.subcomponent)
            system = (parts[0] or (parts[1] if len(parts) > 1 else "")).strip()
        type_code = segment.component(field, 5, rep) or None
        found.append(IdentifierIn(system=system, value=value, type_code=type_code))
    return tuple(found)


def _coding(segment: Segment, field: int) -> tuple[str, str, str]:
    """(code, text, system URI) of a CE/CWE field; ``LN`` becomes the LOINC URI."""
    code = segment.component(field, 1)
    text = segment.component(field, 2)
    system = segment.component(field, 3)
    if system in ("LN", "LOINC"):
        system = LOINC
    return code, text, system


def _observations(ctx: _Context, segments: Sequence[Segment]) -> tuple[EventIn, ...]:
    events: list[EventIn] = []
    order = ""
    obr_time: dt.datetime | None = None
    for index, segment in enumerate(segments):
        if segment.name == "ORC":
            order = segment.component(3) or segment.component(2) or order
        elif segment.name == "OBR":
            order = segment.component(3) or segment.component(2) or order
            obr_time = ctx.ts(segment.component(7), "OBR-7")
        elif segment.name == "OBX":
            event = _observation(ctx, segment, index, order, obr_time)
            if event is not None:
                events.append(event)
    if not events:
        raise MessageContentError("ORU^R01 without any usable OBX", code="101")
    return tuple(events)


def _observation(
    ctx: _Context, obx: Segment, index: int, order: str, obr_time: dt.datetime | None
) -> EventIn | None:
    status = obx.component(11)
    if status == "X":
        return None
    code, text, system = _coding(obx, 3)
    if not code:
        raise MessageContentError("OBX-3 observation identifier missing", code="101")
    value_type = obx.component(2)
    value_num, value_text, details = _value(obx, value_type)
    unit_code, unit_text, unit_system = _coding(obx, 6)
    effective = ctx.ts(obx.component(14), "OBX-14") or obr_time or ctx.fallback_time
    extra: dict[str, object] = {"valueType": value_type, "resultStatus": status or None}
    if obx.value(7):
        extra["referenceRange"] = obx.value(7)
    if obx.component(8):
        extra["interpretation"] = obx.component(8)
    if unit_system and unit_system.upper() not in ("UCUM", UCUM):
        extra["unitSystem"] = unit_system
    details.update({k: v for k, v in extra.items() if v is not None})
    sub_id = obx.component(4)
    return EventIn(
        kind=EventKind.OBSERVATION,
        lineage_key=ctx.lineage(order or ctx.header.control_id, code, sub_id),
        event_key=f"obx-{index}",
        effective_at=effective,
        category="vital-signs" if code in VITAL_SIGNS_LOINC else "laboratory",
        code_system=system or None,
        code=code,
        display=text or None,
        value_num=value_num,
        value_text=value_text,
        unit=unit_code or unit_text or None,
        details=details,
        retracts=status in ("D", "W"),
    )


def _value(obx: Segment, value_type: str) -> tuple[float | None, str | None, dict[str, object]]:
    reps = obx.repetitions(5)
    if value_type == "NM":
        raw = obx.value(5).strip()
        if not raw:
            return None, None, {}
        try:
            return float(raw), None, {}
        except ValueError as exc:
            raise MessageContentError("OBX-5 is not numeric for NM", code="102") from exc
    if value_type == "SN":
        comparator, number = obx.component(5, 1), obx.component(5, 2)
        try:
            num = float(number) if number else None
        except ValueError as exc:
            raise MessageContentError("OBX-5 structured numeric invalid", code="102") from exc
        return num, None, {"comparator": comparator} if comparator else {}
    if value_type in ("CWE", "CE", "CNE"):
        code, text, system = obx.component(5, 1), obx.component(5, 2), obx.component(5, 3)
        details: dict[str, object] = {"valueCode": code} if code else {}
        if system:
            details["valueSystem"] = LOINC if system == "LN" else system
        return None, (text or code or None), details
    if value_type == "ED":
        return None, _encapsulated_text(obx), {"mimeType": "text/plain"}
    text = "\n".join(obx.value(5).split(obx.enc.repetition)) if len(reps) > 1 else obx.value(5)
    return None, (text if text.strip() else None), {}


def _encapsulated_text(obx: Segment) -> str | None:
    """ED (source^type^subtype^encoding^data) with Base64 text, decoded."""
    encoding, data = obx.component(5, 4), obx.component(5, 5)
    if encoding.upper() == "BASE64" and data:
        try:
            return base64.b64decode(data, validate=False).decode("utf-8", "replace")
        except (binascii.Error, ValueError) as exc:
            raise MessageContentError("OBX-5 Base64 data invalid", code="102") from exc
    return data or None


def _note(ctx: _Context, segments: Sequence[Segment]) -> EventIn:
    txa = _first(segments, "TXA")
    if txa is None:
        raise MessageContentError("TXA segment missing", code="100")
    doc_code, doc_text, doc_system = _coding(txa, 2)
    lines = []
    for segment in segments:
        if segment.name == "OBX":
            _, value_text, _ = _value(segment, segment.component(2))
            if value_text is not None:
                lines.append(value_text)
    if not lines:
        raise MessageContentError("MDM^T02 without note text in OBX", code="101")
    effective = (
        ctx.ts(txa.component(4), "TXA-4") or ctx.ts(txa.component(6), "TXA-6") or ctx.fallback_time
    )
    document_number = txa.component(12) or ctx.header.control_id
    details: dict[str, object] = {"mimeType": "text/plain"}
    if txa.component(17):
        details["completionStatus"] = txa.component(17)
    return EventIn(
        kind=EventKind.NOTE,
        lineage_key=ctx.lineage("document", document_number),
        event_key="note",
        effective_at=effective,
        code_system=(LOINC if doc_system == LOINC else doc_system) or None,
        code=doc_code or None,
        display=doc_text or doc_code or None,
        value_text="\n".join(lines),
        details=details,
    )


def _adt_events(
    ctx: _Context, segments: Sequence[Segment], pid: Segment, primary: IdentifierIn
) -> tuple[EventIn, ...]:
    evn = _first(segments, "EVN")
    event_time = (ctx.ts(evn.component(2), "EVN-2") if evn else None) or ctx.fallback_time
    digest = hashlib.sha256(f"{primary.system}|{primary.value}".encode()).hexdigest()[:16]
    demographics: dict[str, object] = {}
    birth = pid.component(7)
    if birth:
        born = ctx.ts(birth, "PID-7")
        if born is not None:
            demographics["birthDate"] = born.date().isoformat()[: _date_precision(birth)]
    sex = pid.component(8)
    if sex:
        demographics["gender"] = _GENDER.get(sex.upper(), "unknown")
    events = [
        EventIn(
            kind=EventKind.DEMOGRAPHICS,
            lineage_key=ctx.lineage("demographics", digest),
            event_key="demographics",
            effective_at=event_time,
            details=demographics,
        )
    ]
    pv1 = _first(segments, "PV1")
    if pv1 is not None:
        events.append(_encounter(ctx, pv1, event_time))
    return tuple(events)


def _date_precision(value: str) -> int:
    digits = len(re.split(r"[+\-.]", value, maxsplit=1)[0])
    return {4: 4, 6: 7}.get(digits, 10)


def _encounter(ctx: _Context, pv1: Segment, event_time: dt.datetime) -> EventIn:
    trigger = ctx.header.trigger_event
    admitted = ctx.ts(pv1.component(44), "PV1-44")
    discharged = ctx.ts(pv1.component(45), "PV1-45")
    if trigger == "A03" and discharged is None:
        discharged = event_time
    patient_class = pv1.component(2)
    visit = pv1.component(19) or ctx.header.control_id
    status = {"A01": "in-progress", "A04": "arrived", "A03": "finished"}.get(trigger)
    details: dict[str, object] = {"trigger": trigger}
    if status:
        details["status"] = status
    if pv1.component(3):
        details["pointOfCare"] = pv1.component(3)
    return EventIn(
        kind=EventKind.ENCOUNTER,
        lineage_key=ctx.lineage("encounter", visit),
        event_key="encounter",
        effective_at=admitted or event_time,
        effective_end=discharged,
        code_system=PATIENT_CLASS_SYSTEM if patient_class else None,
        code=patient_class or None,
        details=details,
    )
