"""Indexing and stable-study detection against SQLite and PostgreSQL (one rollback each)."""

from __future__ import annotations

import datetime as dt
import hashlib
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cds.core.db.models import (
    DicomStudyVersion,
    EventStatus,
    ImagingInstance,
    ImagingSeries,
    ImagingStudy,
    OutboxMessage,
    PatientIdentifier,
    SourceItem,
    StudyState,
    TimelineEvent,
)
from cds.core.errors import ConflictError
from cds.core.settings import DicomDuplicatePolicy
from connectors.dicom.header import InstanceHeader
from connectors.dicom.index import IndexOutcome, StudyTiming, index_instance
from connectors.dicom.routing import RoutingRules
from connectors.dicom.stable import complete_study, due_study_ids
from connectors.dicom.store import ContentStore, StoredFile

pytestmark = pytest.mark.integration

T0 = dt.datetime(2026, 3, 1, 9, 0, tzinfo=dt.UTC)
TIMING = StudyTiming(
    quiet_period_s=30, hard_cap_s=600, rules=RoutingRules(), site_zone=ZoneInfo("Europe/Paris")
)
STUDY = "1.2.826.0.1.3680043.8.498.77"


def header(n: int = 1, **overrides: object) -> InstanceHeader:
    values: dict[str, object] = {
        "SOPClassUID": "1.2.840.10008.5.1.4.1.1.1",
        "SOPInstanceUID": f"{STUDY}.1.{n}",
        "StudyInstanceUID": STUDY,
        "SeriesInstanceUID": f"{STUDY}.1",
        "PatientID": "MRN-42",
        "IssuerOfPatientID": "HOSP",
        "AccessionNumber": "ACC-1",
        "StudyDate": "20260301",
        "StudyTime": "094500",
        "Modality": "CR",
        "BodyPartExamined": "CHEST",
        "StudyDescription": "Chest PA",
        "ViewPosition": "PA",
        "InstanceNumber": n,
    }
    values.update(overrides)
    return InstanceHeader(**values)  # type: ignore[arg-type]


def stored(content: bytes) -> StoredFile:
    sha = hashlib.sha256(content).hexdigest()
    return StoredFile(ContentStore.key_for(sha), sha, len(content), reused=False)


def index(
    session: Session,
    h: InstanceHeader,
    content: bytes,
    at: dt.datetime,
    policy: DicomDuplicatePolicy = DicomDuplicatePolicy.KEEP_NEWEST,
) -> IndexOutcome:
    return index_instance(
        session=session,
        header=h,
        stored=stored(content),
        transfer_syntax="1.2.840.10008.1.2.1",
        sender="MODALITY@127.0.0.1",
        received_at=at,
        timing=TIMING,
        policy=policy,
    )


def count(session: Session, model: type) -> int:
    return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_instances_build_the_hierarchy_and_the_clock(session: Session) -> None:
    assert index(session, header(1), b"one", T0) is IndexOutcome.STORED
    assert index(session, header(2), b"two", T0 + dt.timedelta(seconds=10)) is IndexOutcome.STORED
    study = session.scalars(select(ImagingStudy)).one()
    assert study.state is StudyState.RECEIVING and study.version == 1
    assert study.completes_at == T0 + dt.timedelta(seconds=40)
    # 09:45 in Paris (no TimezoneOffsetFromUTC) is 08:45 UTC.
    assert study.study_datetime == dt.datetime(2026, 3, 1, 8, 45, tzinfo=dt.UTC)
    assert count(session, ImagingSeries) == 1
    assert count(session, ImagingInstance) == 2
    ident = session.scalars(select(PatientIdentifier)).one()
    assert (ident.system, ident.value, ident.type_code) == ("HOSP", "MRN-42", "MR")
    items = session.scalars(select(SourceItem)).all()
    assert {i.patient_id for i in items} == {study.patient_id}
    assert {i.content_type for i in items} == {"application/dicom"}


def test_same_bytes_again_is_a_duplicate_and_adds_nothing(session: Session) -> None:
    index(session, header(1), b"one", T0)
    assert index(session, header(1), b"one", T0) is IndexOutcome.DUPLICATE
    assert count(session, SourceItem) == 1 and count(session, ImagingInstance) == 1


def test_other_bytes_follow_the_policy(session: Session) -> None:
    index(session, header(1), b"one", T0)
    with pytest.raises(ConflictError):
        index(session, header(1), b"changed", T0, DicomDuplicatePolicy.REJECT)
    assert session.scalars(select(SourceItem.content_sha256)).one() == stored(b"one").sha256
    later = T0 + dt.timedelta(seconds=5)
    assert index(session, header(1, ViewPosition="AP"), b"changed", later) is (
        IndexOutcome.REPLACED
    )
    item = session.scalars(select(SourceItem)).one()
    assert item.content_sha256 == stored(b"changed").sha256
    instance = session.scalars(select(ImagingInstance)).one()
    assert instance.ViewPosition == "AP" and instance.storage_key == item.storage_key


def test_hard_cap_bounds_a_trickling_study(session: Session) -> None:
    for n in range(1, 40):
        index(session, header(n), f"i{n}".encode(), T0 + dt.timedelta(seconds=20 * n))
    study = session.scalars(select(ImagingStudy)).one()
    # The version started with instance 1 at T0 + 20 s; the cap is 600 s after that.
    assert study.completes_at == T0 + dt.timedelta(seconds=620)


def test_completion_emits_one_anchor_event_and_reopens_as_a_new_version(
    session: Session,
) -> None:
    index(session, header(1), b"one", T0)
    index(session, header(2), b"two", T0)
    assert due_study_ids(session=session, now=T0 + dt.timedelta(seconds=29)) == []
    now = T0 + dt.timedelta(seconds=31)
    done = complete_study(
        session=session,
        study_id=due_study_ids(session=session, now=now)[0],
        now=now,
        rules=RoutingRules(),
    )
    assert done is not None and done.anchor and done.routing_rule == "chest-radiograph"
    study = session.scalars(select(ImagingStudy)).one()
    assert study.state is StudyState.COMPLETE and study.completed_at == now
    event = session.get(TimelineEvent, done.event_id)
    assert event is not None
    assert event.imaging_study_id == study.id and event.patient_id == study.patient_id
    assert event.lineage_key == f"dicom-study|{STUDY}" and event.code == "CR"
    assert event.code_system == "http://dicom.nema.org/resources/ontology/DCM"
    assert event.display == "Chest PA"
    assert event.effective_at == dt.datetime(2026, 3, 1, 8, 45, tzinfo=dt.UTC)
    assert event.details == {
        "StudyInstanceUID": STUDY,
        "version": 1,
        "modalities": ["CR"],
        "body_parts": ["CHEST"],
        "series": 1,
        "instances": 2,
        "AccessionNumber": "ACC-1",
        "routing_rule": "chest-radiograph",
        "anchor": True,
    }
    outbox = session.scalars(select(OutboxMessage)).all()
    assert any(str(done.event_id) in m.payload.get("event_ids", []) for m in outbox)
    # Exactly once: a second detector finds nothing due.
    assert complete_study(session=session, study_id=study.id, now=now, rules=RoutingRules()) is None

    # A late instance reopens the study as version 2, which completes with a new event.
    late = now + dt.timedelta(seconds=60)
    index(session, header(3, SeriesInstanceUID=f"{STUDY}.2", Modality="DX"), b"three", late)
    study = session.scalars(select(ImagingStudy).execution_options(populate_existing=True)).one()
    assert study.state is StudyState.RECEIVING and study.version == 2
    assert study.completes_at == late + dt.timedelta(seconds=30)
    second = complete_study(
        session=session,
        study_id=study.id,
        now=late + dt.timedelta(seconds=31),
        rules=RoutingRules(),
    )
    assert second is not None and second.version == 2
    old = session.get(TimelineEvent, done.event_id)
    assert old is not None
    session.refresh(old)
    assert old.status is EventStatus.SUPERSEDED and old.superseded_by_id == second.event_id
    new = session.get(TimelineEvent, second.event_id)
    assert new is not None and new.details is not None
    assert new.details["instances"] == 3 and new.details["series"] == 2
    versions = session.scalars(select(DicomStudyVersion).order_by(DicomStudyVersion.version)).all()
    assert [(v.version, v.event_id) for v in versions] == [
        (1, done.event_id),
        (2, second.event_id),
    ]


def test_study_without_a_matching_rule_is_not_an_anchor(session: Session) -> None:
    index(session, header(1, Modality="CT", BodyPartExamined="ABDOMEN"), b"ct", T0)
    now = T0 + dt.timedelta(minutes=5)
    study_id = due_study_ids(session=session, now=now)[0]
    done = complete_study(session=session, study_id=study_id, now=now, rules=RoutingRules())
    assert done is not None and not done.anchor and done.routing_rule is None
