"""Ingest one inbound item: provenance, patient, events, exactly once.

The caller commits; only after the commit may the connector acknowledge (DICOM success,
HL7 AA, HTTP 2xx). Dedup is the database's unique constraint on the source item's
identity, never a check in code that a concurrent writer could race.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cds.core.clinical import EventIn, IdentifierIn, ItemIn
from cds.core.db.models import EventStatus, SourceItem, TimelineEvent
from cds.core.errors import ConflictError
from cds.core.repository.outbox import announce_events
from cds.core.repository.patients import (
    attach_held_items,
    canonical_system,
    find_patient,
    resolve_patient,
    surviving_patient_id,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What ingest did with one item.

    Attributes:
        source_item_id: the stored item (new, or the existing one for a duplicate).
        patient_id: the patient it was placed on; ``None`` while held.
        duplicate: the same item with the same bytes was already stored; nothing changed.
        event_ids: events created (empty for a duplicate).
    """

    source_item_id: uuid.UUID
    patient_id: uuid.UUID | None
    duplicate: bool
    event_ids: tuple[uuid.UUID, ...] = field(default_factory=tuple)

    @property
    def held(self) -> bool:
        return self.patient_id is None and not self.duplicate


def patient_ref_key(identifier: IdentifierIn, issuer_map: Mapping[str, str] | None = None) -> str:
    """The key under which items naming this identifier wait for their patient."""
    return f"{canonical_system(identifier.system, issuer_map)}|{identifier.value}"


def ingest_item(
    *,
    session: Session,
    item: ItemIn,
    issuer_map: Mapping[str, str] | None = None,
) -> IngestResult:
    """Store ``item`` with its provenance and events, once.

    Raises:
        ConflictError: an item with the same identity but different bytes is stored
            already; the caller applies its protocol's policy (e.g. DICOM keep-newest).
    """
    src = item.source
    row = SourceItem(
        protocol=src.protocol,
        namespace=src.namespace,
        item_id=src.item_id,
        item_version=src.item_version,
        sender=src.sender,
        content_type=src.content_type,
        content_sha256=src.content_sha256,
        size_bytes=src.size_bytes,
        storage_key=src.storage_key,
        payload=src.payload,
        received_at=src.received_at,
        patient_ref=item.patient_ref,
    )
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        return _existing(session=session, item=item)

    patient_id = _place_on_patient(session=session, item=item, issuer_map=issuer_map)
    row.patient_id = patient_id
    event_ids = tuple(
        _add_event(session=session, event=event, source_item_id=row.id, patient_id=patient_id)
        for event in item.events
    )
    session.flush()
    if patient_id is not None:
        announce_events(
            session=session,
            patient_id=patient_id,
            event_ids=event_ids,
            dedup_key=f"timeline|{row.id}",
        )
    logger.info(
        "ingested %s item %s: %d events%s",
        src.protocol.value,
        row.id,
        len(event_ids),
        " (held: patient not known yet)" if patient_id is None else "",
    )
    return IngestResult(
        source_item_id=row.id, patient_id=patient_id, duplicate=False, event_ids=event_ids
    )


def _existing(*, session: Session, item: ItemIn) -> IngestResult:
    src = item.source
    existing = session.execute(
        select(SourceItem.id, SourceItem.content_sha256, SourceItem.patient_id).where(
            SourceItem.protocol == src.protocol,
            SourceItem.namespace == src.namespace,
            SourceItem.item_id == src.item_id,
            SourceItem.item_version == src.item_version,
        )
    ).one()
    if existing.content_sha256 != src.content_sha256:
        raise ConflictError(
            f"{src.protocol.value} item already stored as {existing.id} with different content"
        )
    logger.info("duplicate %s item %s ignored", src.protocol.value, existing.id)
    return IngestResult(source_item_id=existing.id, patient_id=existing.patient_id, duplicate=True)


def _place_on_patient(
    *, session: Session, item: ItemIn, issuer_map: Mapping[str, str] | None
) -> uuid.UUID | None:
    if item.patient_id is not None:
        return surviving_patient_id(session=session, patient_id=item.patient_id)
    if item.identifiers:
        patient_id = resolve_patient(
            session=session, identifiers=item.identifiers, issuer_map=issuer_map
        )
        for ident in item.identifiers:
            attach_held_items(
                session=session,
                patient_id=patient_id,
                patient_ref=patient_ref_key(ident, issuer_map),
            )
        return patient_id
    if item.patient_ref:
        system, _, value = item.patient_ref.partition("|")
        return find_patient(session=session, identifiers=[IdentifierIn(system=system, value=value)])
    return None


def _add_event(
    *,
    session: Session,
    event: EventIn,
    source_item_id: uuid.UUID,
    patient_id: uuid.UUID | None,
) -> uuid.UUID:
    current = select(TimelineEvent.id).where(
        TimelineEvent.lineage_key == event.lineage_key,
        TimelineEvent.status == EventStatus.CURRENT,
    )
    previous_ids = list(session.scalars(current))
    row = TimelineEvent(
        id=uuid.uuid4(),
        patient_id=patient_id,
        source_item_id=source_item_id,
        event_key=event.event_key,
        lineage_key=event.lineage_key,
        kind=event.kind,
        status=EventStatus.RETRACTED if event.retracts else EventStatus.CURRENT,
        effective_at=event.effective_at,
        effective_end=event.effective_end,
        category=event.category,
        code_system=event.code_system,
        code=event.code,
        display=event.display,
        value_num=event.value_num,
        value_text=event.value_text,
        unit=event.unit,
        details=event.details,
    )
    session.add(row)
    session.flush()
    if previous_ids:
        session.execute(
            update(TimelineEvent)
            .where(TimelineEvent.id.in_(previous_ids))
            .values(
                status=EventStatus.RETRACTED if event.retracts else EventStatus.SUPERSEDED,
                superseded_by_id=row.id,
            )
        )
    return row.id
