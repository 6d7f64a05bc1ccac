"""Set-based batch indexing gives what indexing one by one gives (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any
from unittest import mock

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cds.core.clinical import IdentifierIn
from cds.core.db.models import (
    DicomStudyVersion,
    ImagingInstance,
    ImagingSeries,
    ImagingStudy,
    Patient,
    PatientIdentifier,
    Protocol,
    SourceItem,
    StudyState,
)
from cds.core.errors import ConflictError
from cds.core.repository.patients import merge_patients, resolve_patient
from cds.core.settings import DicomDuplicatePolicy
from connectors.dicom import batch as batch_module
from connectors.dicom.batch import IndexRequest, IndexResult, index_batch
from connectors.dicom.header import InstanceHeader
from connectors.dicom.index import IndexOutcome, index_instance
from connectors.dicom.routing import RoutingRules
from connectors.dicom.stable import complete_study
from tests.connectors.dicom.test_timeline import STUDY, T0, TIMING, header, stored

pytestmark = pytest.mark.integration

KEEP = DicomDuplicatePolicy.KEEP_NEWEST
REJECT = DicomDuplicatePolicy.REJECT


def request(h: InstanceHeader, content: bytes, seconds: float = 0) -> IndexRequest:
    return IndexRequest(
        header=h,
        stored=stored(content),
        transfer_syntax="1.2.840.10008.1.2.1",
        sender="MODALITY@127.0.0.1",
        received_at=T0 + dt.timedelta(seconds=seconds),
    )


def batch(
    session: Session,
    requests: Sequence[IndexRequest],
    policy: DicomDuplicatePolicy = KEEP,
    *,
    one_by_one_expected: bool = False,
) -> list[IndexResult]:
    """``index_batch``, checking whether it fell back to indexing one by one."""
    with mock.patch.object(batch_module, "_index_alone", wraps=batch_module._index_alone) as alone:
        results = index_batch(session=session, requests=requests, timing=TIMING, policy=policy)
    assert alone.called is one_by_one_expected
    return results


def one_by_one(
    session: Session, requests: Sequence[IndexRequest], policy: DicomDuplicatePolicy = KEEP
) -> list[IndexResult]:
    results: list[IndexResult] = []
    for r in requests:
        try:
            with session.begin_nested():
                results.append(
                    index_instance(
                        session=session,
                        header=r.header,
                        stored=r.stored,
                        transfer_syntax=r.transfer_syntax,
                        sender=r.sender,
                        received_at=r.received_at,
                        timing=TIMING,
                        policy=policy,
                    )
                )
        except ConflictError as exc:
            results.append(exc)
    return results


def snapshot(session: Session) -> dict[str, Any]:
    """Every indexed row by its natural keys (generated ids left out)."""
    session.expire_all()
    patient_of = {
        p: frozenset(
            session.scalars(
                select(PatientIdentifier.value).where(PatientIdentifier.patient_id == p)
            )
        )
        for p in session.scalars(select(Patient.id))
    }
    study_uid = dict(session.execute(select(ImagingStudy.id, ImagingStudy.StudyInstanceUID)).all())
    series_uid = dict(
        session.execute(select(ImagingSeries.id, ImagingSeries.SeriesInstanceUID)).all()
    )
    item_uid = dict(session.execute(select(SourceItem.id, SourceItem.item_id)).all())
    return {
        "patients": sorted(map(sorted, patient_of.values())),
        "items": sorted(
            (i.item_id, i.content_sha256, i.received_at, patient_of.get(i.patient_id))
            for i in session.scalars(select(SourceItem))
        ),
        "studies": sorted(
            (
                s.StudyInstanceUID,
                s.state,
                s.version,
                s.first_received_at,
                s.last_received_at,
                s.completes_at,
                patient_of.get(s.patient_id),
                s.AccessionNumber,
                s.study_datetime,
            )
            for s in session.scalars(select(ImagingStudy))
        ),
        "versions": sorted(
            (study_uid[v.study_id], v.version, v.started_at)
            for v in session.scalars(select(DicomStudyVersion))
        ),
        "series": sorted(
            (s.SeriesInstanceUID, study_uid[s.study_id], s.Modality)
            for s in session.scalars(select(ImagingSeries))
        ),
        "instances": sorted(
            (
                i.SOPInstanceUID,
                series_uid[i.series_id],
                item_uid[i.source_item_id],
                i.ViewPosition,
                i.storage_key,
                i.received_at,
            )
            for i in session.scalars(select(ImagingInstance))
        ),
    }


def outcomes(results: Sequence[IndexResult]) -> list[object]:
    return [type(r) if isinstance(r, Exception) else r for r in results]


def rows(session: Session, model: type) -> int:
    return int(session.scalar(select(func.count()).select_from(model)) or 0)


MIXED = [
    request(header(1), b"one", 0),
    request(header(2), b"two", 5),
    request(header(1), b"one", 6),  # same bytes again: a duplicate
    request(header(3, ViewPosition="AP"), b"three", 4),  # earlier clock than the one before
    request(header(2, ViewPosition="LL"), b"two-changed", 7),  # other bytes, same UID
    request(header(9, StudyInstanceUID=f"{STUDY}.9", SeriesInstanceUID=f"{STUDY}.9.1"), b"x", 8),
    request(header(10, PatientID="MRN-7", StudyInstanceUID=f"{STUDY}.10"), b"y", 9),
    request(header(11, PatientID=None, StudyInstanceUID=f"{STUDY}.11"), b"z", 9),
    request(header(2), b"two-again", 10),  # a third version of one UID in one batch
]


@pytest.mark.parametrize("policy", [KEEP, REJECT])
def test_a_batch_stores_what_one_by_one_stores(
    session: Session, policy: DicomDuplicatePolicy
) -> None:
    index_instance(
        session=session,
        header=header(3, ViewPosition="AP"),
        stored=stored(b"three-before"),
        transfer_syntax="1.2.840.10008.1.2.1",
        sender="MODALITY@127.0.0.1",
        received_at=T0 - dt.timedelta(seconds=1),
        timing=TIMING,
        policy=KEEP,
    )
    alone = session.begin_nested()
    expected_results = outcomes(one_by_one(session, MIXED, policy))
    expected = snapshot(session)
    alone.rollback()
    assert outcomes(batch(session, MIXED, policy)) == expected_results
    assert snapshot(session) == expected


def test_a_duplicate_in_the_batch_and_one_stored_before_change_nothing(session: Session) -> None:
    batch(session, [request(header(1), b"one")])
    results = batch(session, [request(header(1), b"one", 1), request(header(2), b"two", 2)] * 2)
    assert results == [IndexOutcome.DUPLICATE, IndexOutcome.STORED] + [IndexOutcome.DUPLICATE] * 2
    assert rows(session, SourceItem) == 2 and rows(session, ImagingInstance) == 2


def test_conflicting_duplicate_in_one_batch_keep_newest(session: Session) -> None:
    results = batch(
        session, [request(header(1), b"one"), request(header(1, ViewPosition="AP"), b"new", 3)]
    )
    assert results == [IndexOutcome.STORED, IndexOutcome.REPLACED]
    item = session.scalars(select(SourceItem)).one()
    instance = session.scalars(select(ImagingInstance)).one()
    assert item.content_sha256 == stored(b"new").sha256
    assert instance.ViewPosition == "AP" and instance.storage_key == item.storage_key


def test_conflicting_duplicate_in_one_batch_rejected(session: Session) -> None:
    results = batch(session, [request(header(1), b"one"), request(header(1), b"other", 3)], REJECT)
    assert results[0] is IndexOutcome.STORED and isinstance(results[1], ConflictError)
    assert session.scalars(select(SourceItem.content_sha256)).one() == stored(b"one").sha256
    assert rows(session, ImagingInstance) == 1


def test_two_instances_of_one_new_study_in_one_batch(session: Session) -> None:
    results = batch(session, [request(header(1), b"one", 10), request(header(2), b"two", 5)])
    assert results == [IndexOutcome.STORED, IndexOutcome.STORED]
    study = session.scalars(select(ImagingStudy)).one()
    assert study.version == 1 and study.state is StudyState.RECEIVING
    assert study.first_received_at == T0 + dt.timedelta(seconds=10)
    assert study.last_received_at == T0 + dt.timedelta(seconds=10)
    assert study.completes_at == T0 + dt.timedelta(seconds=40)
    assert rows(session, DicomStudyVersion) == 1 and rows(session, ImagingSeries) == 1
    assert rows(session, Patient) == 1 and rows(session, PatientIdentifier) == 1
    items = session.scalars(select(SourceItem)).all()
    assert {i.patient_id for i in items} == {study.patient_id} != {None}


def test_a_batch_after_completion_reopens_the_study_as_one_new_version(session: Session) -> None:
    batch(session, [request(header(1), b"one")])
    study = session.scalars(select(ImagingStudy)).one()
    now = T0 + dt.timedelta(seconds=31)
    assert complete_study(session=session, study_id=study.id, now=now, rules=RoutingRules())
    late = [request(header(2), b"two", 60), request(header(3), b"three", 61)]
    assert batch(session, late) == [IndexOutcome.STORED, IndexOutcome.STORED]
    study = session.scalars(select(ImagingStudy).execution_options(populate_existing=True)).one()
    assert study.state is StudyState.RECEIVING and study.version == 2
    assert study.completes_at == T0 + dt.timedelta(seconds=91)
    versions = session.scalars(select(DicomStudyVersion.started_at).order_by("version")).all()
    assert versions == [T0, T0 + dt.timedelta(seconds=60)]


def test_a_failing_instance_fails_alone_and_leaves_nothing(session: Session) -> None:
    # An instance row that already holds UID 7 without its source item: indexing 7 fails
    # at its instance row, after its source item and patient were written.
    batch(session, [request(header(100), b"hundred")])
    session.execute(update(ImagingInstance).values(SOPInstanceUID=f"{STUDY}.1.7"))
    good = [request(header(n), f"i{n}".encode(), n) for n in (1, 2)]
    failing = request(header(7), b"seven", 1.5)
    results = batch(session, [good[0], failing, good[1]], one_by_one_expected=True)
    assert results[0] is IndexOutcome.STORED and results[2] is IndexOutcome.STORED
    assert isinstance(results[1], IntegrityError)
    assert session.scalar(select(SourceItem.id).where(SourceItem.item_id == f"{STUDY}.1.7")) is None
    assert rows(session, SourceItem) == 3 and rows(session, ImagingInstance) == 3
    study = session.scalars(select(ImagingStudy)).one()
    assert study.last_received_at == T0 + dt.timedelta(seconds=2)


def test_a_known_patient_merged_into_another_places_items_on_the_survivor(
    session: Session,
) -> None:
    batch(session, [request(header(1), b"one")])
    merged = session.scalars(select(Patient.id)).one()
    survivor = resolve_patient(
        session=session, identifiers=[IdentifierIn(system="HOSP", value="MRN-99")]
    )
    merge_patients(session=session, surviving_id=survivor, merged_id=merged, merged_at=T0)
    late = request(header(2, StudyInstanceUID=f"{STUDY}.2", SeriesInstanceUID=f"{STUDY}.2.1"), b"2")
    assert batch(session, [late]) == [IndexOutcome.STORED]
    item = session.scalars(select(SourceItem).where(SourceItem.item_id == f"{STUDY}.1.2")).one()
    study = session.scalars(
        select(ImagingStudy).where(ImagingStudy.StudyInstanceUID == f"{STUDY}.2")
    )
    assert item.patient_id == survivor and study.one().patient_id == survivor


def test_items_held_under_a_known_patient_are_attached_by_the_next_batch(
    session: Session,
) -> None:
    # A FHIR item held under the identifier while a concurrent transaction created it: the
    # next instance of that patient attaches it, as ingesting one by one does.
    batch(session, [request(header(1), b"one")])
    patient = session.scalars(select(Patient.id)).one()
    held = SourceItem(
        protocol=Protocol.FHIR,
        namespace="http://fhir.example",
        item_id="Observation/1",
        item_version="1",
        content_sha256="0" * 64,
        received_at=T0,
        patient_ref="HOSP|MRN-42",
    )
    session.add(held)
    session.flush()
    assert batch(session, [request(header(2), b"two", 1)]) == [IndexOutcome.STORED]
    session.refresh(held)
    assert held.patient_id == patient
