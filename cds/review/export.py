"""Export of the audit trail for a date range: FHIR R4 AuditEvent Bundle, or CSV.

Each audit entry becomes one AuditEvent (FHIR R4 §AuditEvent, with the DICOM audit
vocabulary of PS3.15 Annex A.5 for ``type`` and ``subtype``): ``recorded`` its time, the
actor as ``agent.who.identifier``, the entity as ``entity.what.identifier`` and the
details, the chain's ``prev_hash`` and ``entry_hash`` as ``entity.detail`` values, so a
recipient can re-verify the chain. The CSV has the same columns as the table. Both are
streamed in batches, so a year of entries never sits in memory.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import uuid
from collections.abc import Iterator
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cds.core.db.models import AuditEntry

DCM = "http://dicom.nema.org/resources/ontology/DCM"
ACTION_SYSTEM = "urn:cdsfusion:audit-action"
ACTOR_SYSTEM = "urn:cdsfusion:actor"
_EXPORT_NAMESPACE = uuid.UUID("5d0b8f0e-2b7c-4d39-9a51-3f3f0c7d4e21")
_AUTHENTICATION = {
    "review.login": ("110122", "Login"),
    "review.logout": ("110123", "Logout"),
    "review.session-expired": ("110123", "Logout"),
    "review.login-failed": ("110122", "Login"),
}
_FAILED = frozenset({"review.login-failed", "review.forbidden"})
CSV_COLUMNS = (
    "id",
    "occurred_at",
    "actor",
    "action",
    "entity_type",
    "entity_id",
    "details",
    "prev_hash",
    "entry_hash",
)
_BATCH = 1000


def date_range(start: dt.date, end: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """``[start 00:00 UTC, end + 1 day 00:00 UTC)``: both dates included."""
    return (
        dt.datetime.combine(start, dt.time(), dt.UTC),
        dt.datetime.combine(end + dt.timedelta(days=1), dt.time(), dt.UTC),
    )


def _crud(action: str) -> str:
    """AuditEvent.action: C create, R read, U update, E execute."""
    if action in ("review.agree", "review.disagree", "review.user-create", "cds.feedback"):
        return "C"
    if action in ("review.user-disable", "review.user-enable", "review.user-role"):
        return "U"
    if action.startswith("review.") and action not in _AUTHENTICATION:
        return "R"
    return "E"


def audit_event(entry: AuditEntry) -> dict[str, Any]:
    """One audit entry as a FHIR R4 AuditEvent."""
    if entry.action in _AUTHENTICATION:
        code, display = _AUTHENTICATION[entry.action]
        kind = {"system": DCM, "code": "110114", "display": "User Authentication"}
        subtype = [{"system": DCM, "code": code, "display": display}]
    else:
        kind = {"system": DCM, "code": "110100", "display": "Application Activity"}
        subtype = []
    subtype.append({"system": ACTION_SYSTEM, "code": entry.action})
    details = [
        {"type": str(key), "valueString": json.dumps(value, sort_keys=True)}
        for key, value in sorted((entry.details or {}).items())
    ]
    details += [
        {"type": "prev_hash", "valueString": entry.prev_hash},
        {"type": "entry_hash", "valueString": entry.entry_hash},
    ]
    entity: dict[str, Any] = {"detail": details}
    if entry.entity_id:
        entity["what"] = {
            "identifier": {
                "system": f"urn:cdsfusion:{entry.entity_type or 'entity'}",
                "value": entry.entity_id,
            }
        }
    return {
        "resourceType": "AuditEvent",
        "id": f"audit-{entry.id}",
        "type": kind,
        "subtype": subtype,
        "action": _crud(entry.action),
        "recorded": entry.occurred_at.astimezone(dt.UTC).isoformat(),
        "outcome": "4" if entry.action in _FAILED else "0",
        "agent": [
            {
                "who": {"identifier": {"system": ACTOR_SYSTEM, "value": entry.actor}},
                "requestor": True,
            }
        ],
        "source": {
            "observer": {"display": "cdsfusion"},
            "type": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                    "code": "4",
                    "display": "Application Server",
                }
            ],
        },
        "entity": [entity],
    }


def _entries(
    factory: sessionmaker[Session], start: dt.datetime, end: dt.datetime
) -> Iterator[AuditEntry]:
    last_id = 0
    with factory() as session:
        while True:
            batch = list(
                session.scalars(
                    select(AuditEntry)
                    .where(
                        AuditEntry.occurred_at >= start,
                        AuditEntry.occurred_at < end,
                        AuditEntry.id > last_id,
                    )
                    .order_by(AuditEntry.id)
                    .limit(_BATCH)
                )
            )
            if not batch:
                return
            yield from batch
            last_id = batch[-1].id
            session.expunge_all()


def bundle_chunks(
    factory: sessionmaker[Session], start: dt.datetime, end: dt.datetime
) -> Iterator[bytes]:
    """A FHIR ``collection`` Bundle of AuditEvents, streamed as JSON text."""
    bundle_id = uuid.uuid5(_EXPORT_NAMESPACE, f"{start.isoformat()}|{end.isoformat()}")
    head = {
        "resourceType": "Bundle",
        "id": str(bundle_id),
        "type": "collection",
        "timestamp": dt.datetime.now(dt.UTC).isoformat(),
    }
    yield (json.dumps(head)[:-1] + ', "entry": [').encode()
    first = True
    for entry in _entries(factory, start, end):
        item = {
            "fullUrl": f"urn:uuid:{uuid.uuid5(_EXPORT_NAMESPACE, entry.entry_hash)}",
            "resource": audit_event(entry),
        }
        yield (("" if first else ",\n") + json.dumps(item)).encode()
        first = False
    yield b"]}\n"


def _cell(value: str) -> str:
    """Spreadsheet-safe: a leading ``= + - @`` would run as a formula (CSV injection)."""
    return "'" + value if value[:1] in ("=", "+", "-", "@") else value


def csv_chunks(
    factory: sessionmaker[Session], start: dt.datetime, end: dt.datetime
) -> Iterator[bytes]:
    """The entries as CSV (RFC 4180), header first."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for n, entry in enumerate(_entries(factory, start, end), start=1):
        writer.writerow(
            [
                entry.id,
                entry.occurred_at.astimezone(dt.UTC).isoformat(),
                _cell(entry.actor),
                _cell(entry.action),
                _cell(entry.entity_type),
                _cell(entry.entity_id),
                _cell(json.dumps(entry.details, sort_keys=True)),
                entry.prev_hash,
                entry.entry_hash,
            ]
        )
        if n % 200 == 0:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode()
