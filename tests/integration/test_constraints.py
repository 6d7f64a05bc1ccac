"""Dedup and integrity are the database's job: unique constraints and triggers, both engines."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from cds.core.clinical import EventIn, IdentifierIn, ItemIn, SourceItemIn
from cds.core.db.models import (
    AuditEntry,
    EventKind,
    EventStatus,
    Patient,
    PatientIdentifier,
    Protocol,
    SourceItem,
    TimelineEvent,
)
from cds.core.errors import ConflictError
from cds.core.repository.audit import append_audit, verify_chain
from cds.core.repository.ingest import ingest_item
from cds.core.repository.patients import merge_patients

pytestmark = pytest.mark.integration

T0 = dt.datetime(2026, 3, 1, 8, 30, tzinfo=dt.UTC)


def _source(item_id: str, body: bytes, *, version: str = "") -> SourceItemIn:
    return SourceItemIn(
        protocol=Protocol.HL7V2,
        namespace="LAB^HOSP",
        item_id=item_id,
        item_version=version,
        sender="127.0.0.1",
        content_sha256=SourceItemIn.sha256(body),
        size_bytes=len(body),
        payload=body,
        received_at=T0,
    )


def _lab(lineage: str, value: float) -> EventIn:
    return EventIn(
        kind=EventKind.OBSERVATION,
        lineage_key=lineage,
        event_key="1",
        effective_at=T0,
        category="laboratory",
        code_system="http://loinc.org",
        code="2160-0",
        value_num=value,
        unit="mg/dL",
    )


def test_duplicate_source_item_rejected_by_unique_constraint(session: Session) -> None:
    def row() -> SourceItem:
        return SourceItem(
            protocol=Protocol.DICOM,
            namespace="",
            item_id="1.2.826.0.1.3680043.8.498.1",
            item_version="",
            content_sha256="a" * 64,
            received_at=T0,
        )

    session.add(row())
    session.flush()
    session.add(row())
    with pytest.raises(IntegrityError):
        session.flush()


def test_duplicate_event_in_one_item_rejected(session: Session) -> None:
    item = SourceItem(
        protocol=Protocol.FHIR, item_id="Observation/1", content_sha256="b" * 64, received_at=T0
    )
    session.add(item)
    session.flush()
    for _ in range(2):
        session.add(
            TimelineEvent(
                source_item_id=item.id,
                event_key="0",
                lineage_key="fhir|Observation/1",
                kind=EventKind.OBSERVATION,
                effective_at=T0,
            )
        )
    with pytest.raises(IntegrityError):
        session.flush()


def test_identifier_belongs_to_one_patient(session: Session) -> None:
    first, second = Patient(), Patient()
    session.add_all([first, second])
    session.flush()
    session.add(PatientIdentifier(patient_id=first.id, system="urn:oid:1.2.3", value="42"))
    session.flush()
    session.add(PatientIdentifier(patient_id=second.id, system="urn:oid:1.2.3", value="42"))
    with pytest.raises(IntegrityError):
        session.flush()


def _unique(prefix: str) -> str:
    """Item ids no other test uses: the PostgreSQL database is shared by the whole run."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _count(session: Session, model: type, *where: object) -> int:
    return session.scalar(select(func.count()).select_from(model).where(*where)) or 0


def test_ingest_same_item_twice_stores_once(session: Session) -> None:
    control_id = _unique("MSG")
    body = f"MSH|^~\\&|LAB|HOSP|||20260301083000||ORU^R01|{control_id}|P|2.5\r".encode()
    item = ItemIn(
        source=_source(control_id, body),
        identifiers=(IdentifierIn("HOSP", _unique("MRN")),),
        events=(_lab("hl7|LAB^HOSP|ORD1|OBX1", 1.1),),
    )
    first = ingest_item(session=session, item=item)
    again = ingest_item(session=session, item=item)
    assert not first.duplicate and again.duplicate
    assert again.source_item_id == first.source_item_id
    assert _count(session, SourceItem, SourceItem.item_id == control_id) == 1
    assert _count(session, TimelineEvent, TimelineEvent.source_item_id == first.source_item_id) == 1


def test_same_id_other_bytes_is_a_conflict_and_changes_nothing(session: Session) -> None:
    control_id = _unique("MSG")
    ident = (IdentifierIn("H", _unique("MRN")),)
    first = ingest_item(
        session=session, item=ItemIn(source=_source(control_id, b"one"), identifiers=ident)
    )
    with pytest.raises(ConflictError):
        ingest_item(
            session=session, item=ItemIn(source=_source(control_id, b"two"), identifiers=ident)
        )
    assert _count(session, SourceItem, SourceItem.item_id == control_id) == 1
    stored = session.get(SourceItem, first.source_item_id)
    assert stored is not None and stored.content_sha256 == SourceItemIn.sha256(b"one")


def test_newer_version_supersedes_and_keeps_history(session: Session) -> None:
    ident = (IdentifierIn("http://hosp.example/mrn", _unique("MRN")),)
    resource = _unique("Observation/")
    lineage = f"fhir|https://ehr.example/fhir|{resource}"
    old = ingest_item(
        session=session,
        item=ItemIn(_source(resource, b"v1", version="1"), ident, None, (_lab(lineage, 1),)),
    )
    new = ingest_item(
        session=session,
        item=ItemIn(_source(resource, b"v2", version="2"), ident, None, (_lab(lineage, 2),)),
    )
    old_event = session.get(TimelineEvent, old.event_ids[0])
    new_event = session.get(TimelineEvent, new.event_ids[0])
    assert old_event is not None and new_event is not None
    session.refresh(old_event)
    assert old_event.status is EventStatus.SUPERSEDED
    assert old_event.superseded_by_id == new_event.id
    assert new_event.status is EventStatus.CURRENT
    assert old.patient_id == new.patient_id


def test_item_for_unknown_patient_is_held_then_attached(session: Session) -> None:
    patient_ref = _unique("Patient/")
    ref = f"urn:cdsfusion:fhir:https://ehr.example/fhir|{patient_ref}"
    held = ingest_item(
        session=session,
        item=ItemIn(_source(_unique("Obs/"), b"h1"), (), ref, (_lab(_unique("fhir|Obs"), 3),)),
    )
    assert held.held
    system, _, value = ref.partition("|")
    patient = ingest_item(
        session=session,
        item=ItemIn(_source(patient_ref, b"p"), (IdentifierIn(system, value),)),
    )
    event = session.get(TimelineEvent, held.event_ids[0])
    assert event is not None
    session.refresh(event)
    assert event.patient_id == patient.patient_id is not None


def test_merge_moves_the_timeline(session: Session) -> None:
    mrn_a, mrn_b = _unique("A"), _unique("B")
    lineages = [_unique("l"), _unique("l")]
    a = ingest_item(
        session=session,
        item=ItemIn(
            _source(_unique("M"), b"1"), (IdentifierIn("H", mrn_a),), None, (_lab(lineages[0], 1),)
        ),
    )
    b = ingest_item(
        session=session,
        item=ItemIn(
            _source(_unique("M"), b"2"), (IdentifierIn("H", mrn_b),), None, (_lab(lineages[1], 2),)
        ),
    )
    assert a.patient_id and b.patient_id and a.patient_id != b.patient_id
    merge_patients(session=session, surviving_id=a.patient_id, merged_id=b.patient_id, merged_at=T0)
    session.expire_all()
    owners = set(
        session.scalars(
            select(TimelineEvent.patient_id).where(TimelineEvent.lineage_key.in_(lineages))
        )
    )
    assert owners == {a.patient_id}
    again = ingest_item(
        session=session, item=ItemIn(_source(_unique("M"), b"3"), (IdentifierIn("H", mrn_b),))
    )
    assert again.patient_id == a.patient_id


def test_audit_log_is_append_only(session: Session) -> None:
    entry = append_audit(session=session, actor="system:test", action="test.append", occurred_at=T0)
    with pytest.raises(DBAPIError), session.begin_nested():
        session.execute(
            text("UPDATE audit_log SET actor = 'mallory' WHERE id = :i"), {"i": entry.id}
        )
    with pytest.raises(DBAPIError), session.begin_nested():
        session.execute(text("DELETE FROM audit_log WHERE id = :i"), {"i": entry.id})


def test_audit_chain_detects_a_tampered_row(session: Session) -> None:
    for n in range(5):
        append_audit(
            session=session,
            actor=f"user:{n}",
            action="prediction.view",
            entity_type="prediction",
            entity_id=str(uuid.uuid4()),
            occurred_at=T0 + dt.timedelta(minutes=n),
        )
    assert verify_chain(session=session).ok
    target = session.scalars(select(AuditEntry.id).order_by(AuditEntry.id).offset(2)).first()
    # Tamper the way an attacker with database rights would: around the trigger.
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("ALTER TABLE audit_log DISABLE TRIGGER USER"))
        session.execute(text("UPDATE audit_log SET actor = 'user:x' WHERE id = :i"), {"i": target})
        session.execute(text("ALTER TABLE audit_log ENABLE TRIGGER USER"))
    else:
        session.execute(text("DROP TRIGGER audit_log_no_update"))
        session.execute(text("UPDATE audit_log SET actor = 'user:x' WHERE id = :i"), {"i": target})
    session.expire_all()
    report = verify_chain(session=session)
    assert not report.ok
    assert report.first_bad_id == target


def test_ingest_announces_events_on_the_outbox_once(session: Session) -> None:
    from cds.core.db.models import OutboxMessage
    from cds.core.repository.outbox import TOPIC_TIMELINE

    item = ItemIn(
        source=_source(_unique("MSG"), b"ob"),
        identifiers=(IdentifierIn("HOSP", _unique("MRN")),),
        events=(_lab(_unique("hl7|LAB^HOSP|ORD9|OBX1"), 4.2),),
    )
    result = ingest_item(session=session, item=item)
    ingest_item(session=session, item=item)  # duplicate: no second announcement
    messages = list(
        session.scalars(
            select(OutboxMessage).where(OutboxMessage.aggregate_id == result.patient_id)
        )
    )
    assert len(messages) == 1
    assert messages[0].topic == TOPIC_TIMELINE
    assert messages[0].payload["event_ids"] == [str(result.event_ids[0])]
    assert messages[0].aggregate_id == result.patient_id
