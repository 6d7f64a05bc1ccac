"""Placing one HL7v2 message on the timeline in one transaction (I/O edge of the listener).

ADT^A40 (HL7 v2.5.1 §3.3.40, merge patient - patient identifier list): the patient named by
PID-3 survives; the patient owning any MRG-1 identifier is merged into it with
:func:`~cds.core.repository.patients.merge_patients` (its timeline moves, the merge is
recorded). When no patient owns the prior identifiers yet, they are added to the survivor
so that later items carrying them land on the right timeline, and items held under them
are attached.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cds.core.db.models import Protocol, SourceItem
from cds.core.db.session import transaction
from cds.core.repository.ingest import IngestResult, ingest_item, patient_ref_key
from cds.core.repository.patients import (
    attach_held_items,
    find_patient,
    merge_patients,
    resolve_patient,
)
from connectors.hl7.normalize import Hl7Item
from connectors.hl7.parse import decode, without_timestamp


@dataclass(frozen=True, slots=True)
class Stored:
    """Outcome of :func:`store_message`."""

    result: IngestResult
    merged: bool = False


def store_message(
    *,
    session_factory: sessionmaker[Session],
    hl7: Hl7Item,
    issuer_map: Mapping[str, str] | None,
) -> Stored:
    """Ingest the message (and apply its merge) in one transaction; committed on return.

    Raises:
        ConflictError: MSH-10 was already used by this sender for different content.
        sqlalchemy.exc.SQLAlchemyError: the database refused or is unreachable.
    """
    with transaction(session_factory) as session:
        result = ingest_item(session=session, item=hl7.item, issuer_map=issuer_map)
        merged = False
        if hl7.prior_identifiers and not result.duplicate and result.patient_id is not None:
            merged = _merge(session=session, hl7=hl7, result=result, issuer_map=issuer_map)
    return Stored(result=result, merged=merged)


def _merge(
    *,
    session: Session,
    hl7: Hl7Item,
    result: IngestResult,
    issuer_map: Mapping[str, str] | None,
) -> bool:
    assert result.patient_id is not None
    prior_id = find_patient(
        session=session, identifiers=hl7.prior_identifiers, issuer_map=issuer_map
    )
    if prior_id is not None and prior_id != result.patient_id:
        merge_patients(
            session=session,
            surviving_id=result.patient_id,
            merged_id=prior_id,
            merged_at=hl7.item.source.received_at,
            source_item_id=result.source_item_id,
        )
        return True
    if prior_id is None:
        resolve_patient(
            session=session,
            identifiers=(*hl7.item.identifiers, *hl7.prior_identifiers),
            issuer_map=issuer_map,
        )
        for ident in hl7.prior_identifiers:
            attach_held_items(
                session=session,
                patient_id=result.patient_id,
                patient_ref=patient_ref_key(ident, issuer_map),
            )
    return False


def is_retransmission(
    *, session_factory: sessionmaker[Session], namespace: str, control_id: str, raw: bytes
) -> bool:
    """True when the stored message with this MSH-10 differs from ``raw`` only in MSH-7.

    Senders that retransmit after a lost ACK often restamp the send time; that is the same
    message, not a conflicting reuse of the control id.
    """
    with session_factory() as session:
        stored = session.scalar(
            select(SourceItem.payload).where(
                SourceItem.protocol == Protocol.HL7V2,
                SourceItem.namespace == namespace,
                SourceItem.item_id == control_id,
                SourceItem.item_version == "",
            )
        )
    if stored is None:
        return False
    return without_timestamp(decode(stored)) == without_timestamp(decode(raw))


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
