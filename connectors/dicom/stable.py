"""Stable-study detection, kept in the database.

A study is complete when no instance has arrived for its quiet period
(``CDSFUSION_DICOM_QUIET_PERIOD_S``, or the matching routing rule's) or when its version
reaches the hard cap (``CDSFUSION_DICOM_STUDY_HARD_CAP_S``), whichever comes first; the
receiver keeps that moment in ``imaging_studies.completes_at`` with every instance. Unlike
a timer in memory this survives restarts (a quiet period that ended while the engine was
down completes on start-up) and is shared by every receiver process.

Completing a study, in one transaction per study:

1. lock it (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so several engine processes can run
   the detector; SQLite has one writer) and re-check that it is still due;
2. mark it ``complete`` and record the version's completion;
3. ingest one internal source item (protocol ``internal``, namespace ``dicom-study``, item
   id the StudyInstanceUID, version the study version) carrying one ``imaging-study``
   timeline event, the anchor the aligner consumes; its unique source item makes the
   completion exactly-once even if two detectors race;
4. point the event at the study (``timeline_events.imaging_study_id``).

An instance that arrives after completion reopens the study as the next version
(:mod:`.index`), which completes again, with a new event that supersedes the previous one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from cds.core.clinical import EventIn, IdentifierIn, ItemIn, SourceItemIn
from cds.core.db.models import (
    DicomStudyVersion,
    EventKind,
    ImagingInstance,
    ImagingSeries,
    ImagingStudy,
    PatientIdentifier,
    Protocol,
    StudyState,
    TimelineEvent,
)
from cds.core.db.session import read_only, transaction
from cds.core.repository.ingest import ingest_item
from connectors.dicom.routing import RoutingRules

logger = logging.getLogger(__name__)

#: Code system of DICOM modality codes (PS3.16 CID 29).
DCM_CODE_SYSTEM = "http://dicom.nema.org/resources/ontology/DCM"
NAMESPACE = "dicom-study"


@dataclass(frozen=True, slots=True)
class CompletedStudy:
    """One completion, as reported to metrics and tests (internal ids only)."""

    study_id: uuid.UUID
    version: int
    event_id: uuid.UUID | None
    routing_rule: str | None
    anchor: bool


def due_study_ids(*, session: Session, now: dt.datetime, limit: int = 100) -> list[uuid.UUID]:
    """Studies still receiving whose quiet period or hard cap has passed, oldest first."""
    return list(
        session.scalars(
            select(ImagingStudy.id)
            .where(ImagingStudy.state == StudyState.RECEIVING, ImagingStudy.completes_at <= now)
            .order_by(ImagingStudy.completes_at)
            .limit(limit)
        )
    )


def next_due_at(*, session: Session) -> dt.datetime | None:
    """When the next receiving study becomes due, if any."""
    return session.scalar(
        select(func.min(ImagingStudy.completes_at)).where(
            ImagingStudy.state == StudyState.RECEIVING
        )
    )


def complete_study(
    *,
    session: Session,
    study_id: uuid.UUID,
    now: dt.datetime,
    rules: RoutingRules,
    issuer_map: Mapping[str, str] | None = None,
) -> CompletedStudy | None:
    """Complete one due study in the caller's transaction; ``None`` if no longer due.

    Returns ``None`` also when another process holds the study's lock (PostgreSQL).
    """
    query = select(ImagingStudy).where(
        ImagingStudy.id == study_id,
        ImagingStudy.state == StudyState.RECEIVING,
        ImagingStudy.completes_at <= now,
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    study = session.scalars(query.execution_options(populate_existing=True)).one_or_none()
    if study is None:
        return None

    series = session.execute(
        select(
            ImagingSeries.Modality,
            ImagingSeries.BodyPartExamined,
            func.count(ImagingInstance.id),
        )
        .join(ImagingInstance, ImagingInstance.series_id == ImagingSeries.id, isouter=True)
        .where(ImagingSeries.study_id == study.id)
        .group_by(ImagingSeries.id, ImagingSeries.Modality, ImagingSeries.BodyPartExamined)
    ).all()
    by_modality: Counter[str] = Counter()
    body_parts: list[str] = []
    for modality, body_part, count in series:
        if modality:
            by_modality[modality] += count
        if body_part and body_part not in body_parts:
            body_parts.append(body_part)
    modalities = [m for m, _ in by_modality.most_common()]
    instances = sum(count for _, _, count in series)
    rule = rules.match(modalities, body_parts)
    details: dict[str, Any] = {
        "StudyInstanceUID": study.StudyInstanceUID,
        "version": study.version,
        "modalities": modalities,
        "body_parts": sorted(body_parts),
        "series": len(series),
        "instances": instances,
        "AccessionNumber": study.AccessionNumber,
        "routing_rule": rule.name if rule else None,
        "anchor": bool(rule and rule.anchor),
    }
    payload = json.dumps(details, sort_keys=True).encode()
    event = EventIn(
        kind=EventKind.IMAGING_STUDY,
        lineage_key=f"{NAMESPACE}|{study.StudyInstanceUID}",
        event_key="study",
        effective_at=study.study_datetime or study.first_received_at,
        code_system=DCM_CODE_SYSTEM,
        code=modalities[0] if modalities else None,
        display=study.StudyDescription,
        details=details,
    )
    item = ItemIn(
        source=SourceItemIn(
            protocol=Protocol.INTERNAL,
            namespace=NAMESPACE,
            item_id=study.StudyInstanceUID,
            item_version=str(study.version),
            content_sha256=hashlib.sha256(payload).hexdigest(),
            received_at=now,
            sender="dicom-stable-study",
            content_type="application/json",
            size_bytes=len(payload),
        ),
        identifiers=_patient_identifiers(session=session, patient_id=study.patient_id),
        events=(event,),
    )
    result = ingest_item(session=session, item=item, issuer_map=issuer_map)
    event_id = result.event_ids[0] if result.event_ids else None
    if event_id is not None:
        session.execute(
            update(TimelineEvent)
            .where(TimelineEvent.id == event_id)
            .values(imaging_study_id=study.id)
        )
    study.state = StudyState.COMPLETE
    study.completed_at = now
    study.completes_at = None
    session.execute(
        update(DicomStudyVersion)
        .where(DicomStudyVersion.study_id == study.id, DicomStudyVersion.version == study.version)
        .values(completed_at=now, routing_rule=details["routing_rule"], event_id=event_id)
    )
    session.flush()
    logger.info(
        "study %s version %d complete: %d instances, rule %s",
        study.id,
        study.version,
        instances,
        details["routing_rule"],
    )
    return CompletedStudy(
        study_id=study.id,
        version=study.version,
        event_id=event_id,
        routing_rule=details["routing_rule"],
        anchor=details["anchor"],
    )


def _patient_identifiers(
    *, session: Session, patient_id: uuid.UUID | None
) -> tuple[IdentifierIn, ...]:
    """The study's patient's identifiers (those its instances were resolved by)."""
    if patient_id is None:
        return ()
    rows = session.execute(
        select(PatientIdentifier.system, PatientIdentifier.value, PatientIdentifier.type_code)
        .where(PatientIdentifier.patient_id == patient_id)
        .order_by(PatientIdentifier.created_at)
    ).all()
    return tuple(IdentifierIn(system=s, value=v, type_code=t) for s, v, t in rows)


def complete_due_studies(
    *,
    session_factory: sessionmaker[Session],
    now: dt.datetime,
    rules: RoutingRules,
    issuer_map: Mapping[str, str] | None = None,
    limit: int = 100,
) -> list[CompletedStudy]:
    """One detector pass: complete every due study, one transaction each."""
    with read_only(session_factory) as session:
        ids = due_study_ids(session=session, now=now, limit=limit)
    done: list[CompletedStudy] = []
    for study_id in ids:
        with transaction(session_factory) as session:
            completed = complete_study(
                session=session, study_id=study_id, now=now, rules=rules, issuer_map=issuer_map
            )
        if completed is not None:
            done.append(completed)
    return done
