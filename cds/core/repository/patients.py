"""One patient across sources: identifier resolution, held items, merges."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping, Sequence

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cds.core.clinical import IdentifierIn
from cds.core.db.models import (
    ImagingStudy,
    Patient,
    PatientIdentifier,
    PatientMerge,
    SourceItem,
    TimelineEvent,
)
from cds.core.repository.outbox import announce_events

#: Identifier system used when a source names no issuer (DICOM without IssuerOfPatientID,
#: PID-3 without assigning authority). Configure an issuer mapping to avoid it in production.
UNQUALIFIED_SYSTEM = "urn:cdsfusion:unqualified"


def canonical_system(system: str, issuer_map: Mapping[str, str] | None = None) -> str:
    """Map a source's issuer or system to the canonical namespace.

    Args:
        system: FHIR system URI, HL7 assigning authority or DICOM IssuerOfPatientID.
        issuer_map: configured equivalences (e.g. ``{"HOSP": "urn:oid:1.2.3"}``).
    """
    stripped = system.strip()
    if not stripped:
        return UNQUALIFIED_SYSTEM
    if issuer_map:
        return issuer_map.get(stripped, stripped)
    return stripped


def surviving_patient_id(*, session: Session, patient_id: uuid.UUID) -> uuid.UUID:
    """Follow ``merged_into_id`` to the patient that survived all merges."""
    seen: set[uuid.UUID] = set()
    current = patient_id
    while current not in seen:
        seen.add(current)
        merged_into = session.scalar(select(Patient.merged_into_id).where(Patient.id == current))
        if merged_into is None:
            return current
        current = merged_into
    raise RuntimeError("cycle in patient merges")


def find_patient(
    *,
    session: Session,
    identifiers: Sequence[IdentifierIn],
    issuer_map: Mapping[str, str] | None = None,
) -> uuid.UUID | None:
    """The surviving patient that owns any of ``identifiers``, or ``None``."""
    for ident in identifiers:
        found = session.scalar(
            select(PatientIdentifier.patient_id).where(
                PatientIdentifier.system == canonical_system(ident.system, issuer_map),
                PatientIdentifier.value == ident.value,
            )
        )
        if found is not None:
            return surviving_patient_id(session=session, patient_id=found)
    return None


def resolve_patient(
    *,
    session: Session,
    identifiers: Sequence[IdentifierIn],
    issuer_map: Mapping[str, str] | None = None,
) -> uuid.UUID:
    """Find the patient owning any of ``identifiers`` or create one; record new identifiers.

    Uniqueness of (system, value) is the database's: two connectors creating the same
    patient at once both end up on the one row (the loser retries the lookup).

    Raises:
        ValueError: when ``identifiers`` is empty.
    """
    if not identifiers:
        raise ValueError("a patient needs at least one identifier")
    for _attempt in range(3):
        patient_id = find_patient(session=session, identifiers=identifiers, issuer_map=issuer_map)
        try:
            with session.begin_nested():
                if patient_id is None:
                    patient = Patient()
                    session.add(patient)
                    session.flush()
                    patient_id = patient.id
                _add_missing_identifiers(
                    session=session,
                    patient_id=patient_id,
                    identifiers=identifiers,
                    issuer_map=issuer_map,
                )
            return patient_id
        except IntegrityError:
            continue  # a concurrent writer created it first: look it up again
    raise RuntimeError("could not resolve patient identity after concurrent updates")


def _add_missing_identifiers(
    *,
    session: Session,
    patient_id: uuid.UUID,
    identifiers: Sequence[IdentifierIn],
    issuer_map: Mapping[str, str] | None,
) -> None:
    for ident in identifiers:
        system = canonical_system(ident.system, issuer_map)
        exists = session.scalar(
            select(PatientIdentifier.id).where(
                PatientIdentifier.system == system, PatientIdentifier.value == ident.value
            )
        )
        if exists is None:
            session.add(
                PatientIdentifier(
                    patient_id=patient_id,
                    system=system,
                    value=ident.value,
                    type_code=ident.type_code,
                )
            )
    session.flush()


def attach_held_items(*, session: Session, patient_id: uuid.UUID, patient_ref: str) -> int:
    """Attach items held under ``patient_ref`` (and their events) to ``patient_id``.

    The attached events are announced on the outbox like freshly ingested ones.

    Returns:
        the number of source items attached.
    """
    held_ids = list(
        session.scalars(
            select(SourceItem.id).where(
                SourceItem.patient_ref == patient_ref, SourceItem.patient_id.is_(None)
            )
        )
    )
    if not held_ids:
        return 0
    session.execute(
        update(SourceItem).where(SourceItem.id.in_(held_ids)).values(patient_id=patient_id)
    )
    session.execute(
        update(TimelineEvent)
        .where(TimelineEvent.source_item_id.in_(held_ids))
        .values(patient_id=patient_id)
    )
    for item_id in held_ids:
        event_ids = list(
            session.scalars(select(TimelineEvent.id).where(TimelineEvent.source_item_id == item_id))
        )
        announce_events(
            session=session,
            patient_id=patient_id,
            event_ids=event_ids,
            dedup_key=f"timeline-attach|{item_id}",
        )
    return len(held_ids)


def merge_patients(
    *,
    session: Session,
    surviving_id: uuid.UUID,
    merged_id: uuid.UUID,
    merged_at: dt.datetime,
    source_item_id: uuid.UUID | None = None,
) -> None:
    """Merge ``merged_id``'s timeline into ``surviving_id`` (HL7 ADT^A40).

    Identifiers, source items, events and imaging studies move to the survivor; the merged
    patient keeps its row with ``merged_into_id`` set, and the merge is recorded.
    """
    surviving_id = surviving_patient_id(session=session, patient_id=surviving_id)
    merged_id = surviving_patient_id(session=session, patient_id=merged_id)
    if surviving_id == merged_id:
        return
    for model in (PatientIdentifier, SourceItem, TimelineEvent, ImagingStudy):
        session.execute(
            update(model).where(model.patient_id == merged_id).values(patient_id=surviving_id)
        )
    session.execute(
        update(Patient).where(Patient.id == merged_id).values(merged_into_id=surviving_id)
    )
    session.add(
        PatientMerge(
            surviving_patient_id=surviving_id,
            merged_patient_id=merged_id,
            source_item_id=source_item_id,
            merged_at=merged_at,
        )
    )
    session.flush()
