"""Place one stored instance on the timeline: source item, patient, study, series, instance.

Everything here runs in the caller's transaction; the SCP acknowledges only after it
commits. The source item goes through :func:`cds.core.repository.ingest.ingest_item`
(protocol ``dicom``, namespace ``""``, item id the SOPInstanceUID), whose unique
constraint is the dedup: the same bytes again are a duplicate and change nothing.

Different bytes under the same SOPInstanceUID (PS3.4 B.4.1.3 leaves the SCP's behaviour
open) follow ``CDSFUSION_DICOM_DUPLICATE_POLICY``:

* ``keep-newest`` (default): the new file replaces the old one in the index (source item,
  instance row, series); the old file stays in the store, unreferenced, and the SCP answers
  with a warning status.
* ``reject``: nothing changes and the SCP answers ``0111`` duplicate SOP instance.

Each instance also moves its study's stable-study clock (see :mod:`.stable`): the study
is locked (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite's single writer serialises),
``last_received_at`` and ``completes_at`` move forward, and an instance that arrives after
the study was complete reopens it as a new version.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from typing import Protocol as TypingProtocol
from zoneinfo import ZoneInfo

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cds.core.clinical import IdentifierIn, ItemIn, SourceItemIn
from cds.core.db.models import (
    DicomStudyVersion,
    ImagingInstance,
    ImagingSeries,
    ImagingStudy,
    Protocol,
    SourceItem,
    StudyState,
)
from cds.core.db.upsert import insert_ignoring_conflicts
from cds.core.errors import ConflictError
from cds.core.repository.ingest import ingest_item
from cds.core.repository.patients import resolve_patient
from cds.core.settings import DicomDuplicatePolicy
from connectors.dicom.header import InstanceHeader
from connectors.dicom.routing import RoutingRules
from connectors.dicom.store import StoredFile

CONTENT_TYPE = "application/dicom"


class IndexOutcome(enum.StrEnum):
    """What indexing did with one instance."""

    STORED = "stored"
    DUPLICATE = "duplicate"
    REPLACED = "replaced"


@dataclass(frozen=True, slots=True)
class StudyTiming:
    """Stable-study parameters.

    Attributes:
        quiet_period_s: default seconds without a new instance before a study is complete.
        hard_cap_s: seconds after a version started when it is complete regardless.
        rules: routing rules, which may set their own quiet period.
        site_zone: zone of DICOM dates and times that carry no offset.
    """

    quiet_period_s: float
    hard_cap_s: float
    rules: RoutingRules
    site_zone: ZoneInfo


def identifiers_of(header: InstanceHeader) -> tuple[IdentifierIn, ...]:
    """PatientID qualified by IssuerOfPatientID (PS3.3 C.7.1.1); none when PatientID is empty."""
    if not header.PatientID:
        return ()
    return (
        IdentifierIn(system=header.IssuerOfPatientID or "", value=header.PatientID, type_code="MR"),
    )


def index_instance(
    *,
    session: Session,
    header: InstanceHeader,
    stored: StoredFile,
    transfer_syntax: str,
    sender: str,
    received_at: dt.datetime,
    timing: StudyTiming,
    policy: DicomDuplicatePolicy,
    issuer_map: Mapping[str, str] | None = None,
) -> IndexOutcome:
    """Index ``header``/``stored`` in the caller's transaction.

    Raises:
        ConflictError: same SOPInstanceUID, different bytes, and the policy is ``reject``.
    """
    item = item_of(header=header, stored=stored, sender=sender, received_at=received_at)
    outcome = IndexOutcome.STORED
    try:
        result = ingest_item(session=session, item=item, issuer_map=issuer_map)
    except ConflictError:
        if policy is DicomDuplicatePolicy.REJECT:
            raise
        source_item_id, patient_id = replace_source_item(
            session=session, item=item, issuer_map=issuer_map
        )
        outcome = IndexOutcome.REPLACED
    else:
        if result.duplicate:
            return IndexOutcome.DUPLICATE
        source_item_id, patient_id = result.source_item_id, result.patient_id

    study = _touch_study(
        session=session,
        header=header,
        patient_id=patient_id,
        received_at=received_at,
        timing=timing,
    )
    series_id = _series_id(session=session, header=header, study_id=study.id)
    values = instance_values(
        header=header,
        stored=stored,
        transfer_syntax=transfer_syntax,
        received_at=received_at,
        series_id=series_id,
        source_item_id=source_item_id,
    )
    if outcome is IndexOutcome.REPLACED:
        replace_instance(session=session, values=values)
    else:
        session.add(ImagingInstance(**values))
    session.flush()
    return outcome


def item_of(
    *, header: InstanceHeader, stored: StoredFile, sender: str, received_at: dt.datetime
) -> ItemIn:
    """The source item of one instance: protocol ``dicom``, item id the SOPInstanceUID."""
    return ItemIn(
        source=SourceItemIn(
            protocol=Protocol.DICOM,
            namespace="",
            item_id=header.SOPInstanceUID,
            content_sha256=stored.sha256,
            received_at=received_at,
            sender=sender[:255],
            content_type=CONTENT_TYPE,
            size_bytes=stored.size_bytes,
            storage_key=stored.storage_key,
        ),
        identifiers=identifiers_of(header),
    )


def instance_values(
    *,
    header: InstanceHeader,
    stored: StoredFile,
    transfer_syntax: str,
    received_at: dt.datetime,
    series_id: uuid.UUID,
    source_item_id: uuid.UUID,
) -> dict[str, Any]:
    """The ``imaging_instances`` row of one instance (without its primary key)."""
    return {
        "SOPInstanceUID": header.SOPInstanceUID,
        "series_id": series_id,
        "source_item_id": source_item_id,
        "SOPClassUID": header.SOPClassUID,
        "TransferSyntaxUID": transfer_syntax,
        "InstanceNumber": header.InstanceNumber,
        "ViewPosition": header.ViewPosition,
        "storage_key": stored.storage_key,
        "size_bytes": stored.size_bytes,
        "received_at": received_at,
    }


def replace_instance(*, session: Session, values: dict[str, Any]) -> None:
    """Keep-newest: point the existing instance row at the new file."""
    session.execute(
        update(ImagingInstance)
        .where(ImagingInstance.SOPInstanceUID == values["SOPInstanceUID"])
        .values(**values)
    )


def replace_source_item(
    *, session: Session, item: ItemIn, issuer_map: Mapping[str, str] | None
) -> tuple[uuid.UUID, uuid.UUID | None]:
    """Keep-newest: point the existing source item at the new file (and patient)."""
    src = item.source
    row = session.scalars(
        select(SourceItem)
        .where(
            SourceItem.protocol == src.protocol,
            SourceItem.namespace == src.namespace,
            SourceItem.item_id == src.item_id,
            SourceItem.item_version == src.item_version,
        )
        .with_for_update()
    ).one()
    patient_id = row.patient_id
    if item.identifiers:
        patient_id = resolve_patient(
            session=session, identifiers=item.identifiers, issuer_map=issuer_map
        )
    row.content_sha256 = src.content_sha256
    row.storage_key = src.storage_key
    row.size_bytes = src.size_bytes
    row.received_at = src.received_at
    row.sender = src.sender
    row.patient_id = patient_id
    session.flush()
    return row.id, patient_id


def _touch_study(
    *,
    session: Session,
    header: InstanceHeader,
    patient_id: uuid.UUID | None,
    received_at: dt.datetime,
    timing: StudyTiming,
) -> ImagingStudy:
    """Create or lock the study and move its stable-study clock; reopen it if complete."""
    uid = header.StudyInstanceUID
    session.execute(insert_ignoring_conflicts(session, ImagingStudy), [new_study(uid, received_at)])
    study = session.scalars(
        select(ImagingStudy)
        .where(ImagingStudy.StudyInstanceUID == uid)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()
    version = session.scalars(
        select(DicomStudyVersion).where(
            DicomStudyVersion.study_id == study.id, DicomStudyVersion.version == study.version
        )
    ).one_or_none()
    moved = move_study_clock(
        study=study,
        version=version,
        header=header,
        patient_id=patient_id,
        received_at=received_at,
        timing=timing,
    )
    if moved is not version:
        session.add(moved)
    session.flush()
    return study


def new_study(uid: str, received_at: dt.datetime) -> dict[str, Any]:
    """The ``imaging_studies`` row of a study whose first instance arrived at ``received_at``."""
    return {
        "id": uuid.uuid4(),
        "StudyInstanceUID": uid,
        "state": StudyState.RECEIVING,
        "version": 1,
        "first_received_at": received_at,
        "last_received_at": received_at,
    }


class StudyClock(TypingProtocol):
    """The columns of a study row that :func:`move_study_clock` reads and moves: an
    ``ImagingStudy`` object, or the plain row the batch indexer loads."""

    id: uuid.UUID
    state: StudyState
    version: int
    last_received_at: dt.datetime
    completes_at: dt.datetime | None
    completed_at: dt.datetime | None
    patient_id: uuid.UUID | None
    AccessionNumber: str | None
    StudyDescription: str | None
    study_datetime: dt.datetime | None


def move_study_clock(
    *,
    study: StudyClock,
    version: DicomStudyVersion | None,
    header: InstanceHeader,
    patient_id: uuid.UUID | None,
    received_at: dt.datetime,
    timing: StudyTiming,
) -> DicomStudyVersion:
    """One more instance of the locked ``study``: move its clock, reopen it if complete.

    Args:
        version: the study's current version row, ``None`` when it has none yet.

    Returns:
        the current version row afterwards: ``version`` itself, or a new row (not yet
        added to any session) when the study had none or was complete and reopens.
    """
    if study.state is StudyState.COMPLETE or version is None:
        if study.state is StudyState.COMPLETE:
            study.version += 1
            study.state = StudyState.RECEIVING
            study.completed_at = None
        version = DicomStudyVersion(
            study_id=study.id, version=study.version, started_at=received_at
        )
    quiet = timing.rules.quiet_period_s(
        [header.Modality or ""], [header.BodyPartExamined or ""], timing.quiet_period_s
    )
    study.last_received_at = max(study.last_received_at, received_at)
    study.completes_at = min(
        study.last_received_at + dt.timedelta(seconds=quiet),
        version.started_at + dt.timedelta(seconds=timing.hard_cap_s),
    )
    if study.patient_id is None:
        study.patient_id = patient_id
    if study.AccessionNumber is None:
        study.AccessionNumber = header.AccessionNumber
    if study.StudyDescription is None:
        study.StudyDescription = header.StudyDescription
    if study.study_datetime is None:
        study.study_datetime = header.study_datetime(timing.site_zone)
    return version


def _series_id(*, session: Session, header: InstanceHeader, study_id: uuid.UUID) -> uuid.UUID:
    session.execute(
        insert_ignoring_conflicts(session, ImagingSeries), [new_series(header, study_id)]
    )
    series_id = session.scalar(
        select(ImagingSeries.id).where(ImagingSeries.SeriesInstanceUID == header.SeriesInstanceUID)
    )
    assert series_id is not None
    return series_id


def new_series(header: InstanceHeader, study_id: uuid.UUID) -> dict[str, Any]:
    """The ``imaging_series`` row of the series of ``header``, in study ``study_id``."""
    return {
        "id": uuid.uuid4(),
        "study_id": study_id,
        "SeriesInstanceUID": header.SeriesInstanceUID,
        "Modality": header.Modality,
        "BodyPartExamined": header.BodyPartExamined,
        "SeriesNumber": header.SeriesNumber,
        "SeriesDescription": header.SeriesDescription,
    }
