"""The list query on SQLite and PostgreSQL: filters, keyset pages, and the index at 100k rows."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from cds.core.db.models import (
    Bundle,
    BundleStatus,
    EventKind,
    Patient,
    PatientIdentifier,
    Prediction,
    PredictionStatus,
    Protocol,
    SourceItem,
    TimelineEvent,
)
from cds.core.repository.audit import append_audit
from cds.fhir.levels import RiskLevels
from cds.review.listing import ListFilters, list_page, list_query, uuid_text

pytestmark = pytest.mark.integration
T0 = dt.datetime(2025, 3, 1, 12, tzinfo=dt.UTC)
LEVELS = RiskLevels(0.2, 0.5)


def _bundle(session: Session, patient_id: uuid.UUID) -> uuid.UUID:
    source = SourceItem(
        protocol=Protocol.INTERNAL,
        item_id=str(uuid.uuid4()),
        content_sha256="0" * 64,
        received_at=T0,
    )
    session.add(source)
    session.flush()
    event = TimelineEvent(
        patient_id=patient_id,
        source_item_id=source.id,
        lineage_key=str(uuid.uuid4()),
        kind=EventKind.IMAGING_STUDY,
        effective_at=T0,
    )
    session.add(event)
    session.flush()
    bundle = Bundle(
        task_id="cxr-deterioration",
        task_version="1",
        patient_id=patient_id,
        anchor_event_id=event.id,
        anchor_key=str(uuid.uuid4()),
        anchor_at=T0,
        window_start=T0 - dt.timedelta(hours=48),
        window_end=T0,
        content_hash="0" * 64,
        status=BundleStatus.SCORED,
        late_until=T0,
    )
    session.add(bundle)
    session.flush()
    return bundle.id


def _patient(session: Session, mrn: str) -> uuid.UUID:
    patient = Patient()
    session.add(patient)
    session.flush()
    session.add(PatientIdentifier(patient_id=patient.id, system="urn:test:mrn", value=mrn))
    session.flush()
    return patient.id


def _prediction(
    session: Session, bundle_id: uuid.UUID, patient_id: uuid.UUID, n: int, p: float | None
) -> uuid.UUID:
    row = Prediction(
        bundle_id=bundle_id,
        patient_id=patient_id,
        task_id="cxr-deterioration",
        model_name="m",
        model_version=f"v{n % 2}",
        status=PredictionStatus.FINAL if p is not None else PredictionStatus.INSUFFICIENT_DATA,
        probability=p,
        created_at=T0 + dt.timedelta(days=n),
    )
    session.add(row)
    session.flush()
    return row.id


def test_uuid_text_matches_python(session: Session) -> None:
    patient = _patient(session, "MRN-UUID")
    found = session.scalar(select(uuid_text(Patient.id)).where(Patient.id == patient))
    assert found == str(patient)


def test_filters_and_pages(session: Session) -> None:
    a, b = _patient(session, "MRN-A1"), _patient(session, "MRN-B1")
    ids = [
        _prediction(session, _bundle(session, a), a, 0, 0.1),
        _prediction(session, _bundle(session, b), b, 1, 0.3),
        _prediction(session, _bundle(session, a), a, 2, 0.7),
        _prediction(session, _bundle(session, b), b, 3, None),
    ]
    append_audit(
        session=session,
        actor="cds-client:x",
        action="cds.feedback",
        occurred_at=T0,
        entity_type="card",
        entity_id=str(ids[2]),
        details={"outcome": "accepted"},
    )

    def shown(filters: ListFilters, size: int = 10) -> list[uuid.UUID]:
        return [
            p.id
            for p in list_page(session=session, filters=filters, levels=LEVELS, page_size=size).rows
        ]

    assert shown(ListFilters()) == ids[::-1]
    assert shown(ListFilters(patient_ids=(str(a),))) == [ids[2], ids[0]]
    assert shown(ListFilters(patient_ids=())) == []
    assert shown(ListFilters(risk="high")) == [ids[2]]
    assert shown(ListFilters(risk="moderate")) == [ids[1]]
    assert shown(ListFilters(risk="low")) == [ids[0]]
    assert shown(ListFilters(risk="none")) == [ids[3]]
    assert shown(ListFilters(model_version="v1")) == [ids[3], ids[1]]
    assert shown(ListFilters(date_from="2025-03-02", date_to="2025-03-03")) == [ids[2], ids[1]]
    assert shown(ListFilters(feedback="accepted")) == [ids[2]]
    assert shown(ListFilters(feedback="overridden")) == []
    assert shown(ListFilters(feedback="none")) == [ids[3], ids[1], ids[0]]
    first = list_page(session=session, filters=ListFilters(), levels=LEVELS, page_size=3)
    assert first.newer is None and first.older == ids[1]
    second = list_page(
        session=session, filters=ListFilters(), levels=LEVELS, page_size=3, after=first.older
    )
    assert [p.id for p in second.rows] == [ids[0]] and second.older is None
    back = list_page(
        session=session, filters=ListFilters(), levels=LEVELS, page_size=3, before=ids[0]
    )
    assert [p.id for p in back.rows] == ids[3:0:-1]


def test_list_uses_the_index_with_100k_predictions(migrated_postgres: Engine) -> None:
    """EXPLAIN on PostgreSQL over 100k bulk-inserted rows (rolled back), not a timing."""
    with migrated_postgres.connect() as conn:
        outer = conn.begin()
        try:
            session = Session(bind=conn, join_transaction_mode="create_savepoint")
            patient = _patient(session, f"MRN-BULK-{uuid.uuid4().hex[:6]}")
            bundles = [_bundle(session, patient) for _ in range(4)]
            # Server-side bulk insert: 100k rows in about a second.
            conn.execute(
                text(
                    "INSERT INTO predictions (id, bundle_id, patient_id, task_id, model_name,"
                    " model_version, status, probability, created_at)"
                    " SELECT gen_random_uuid(), (CAST(:bundles AS uuid[]))[1 + n % 4], :patient,"
                    " 'cxr-deterioration', 'm', 'bulk-' || n, 'final', (n % 100) / 100.0,"
                    " CAST(:t0 AS timestamptz) + n * interval '1 second'"
                    " FROM generate_series(1, 100000) AS n"
                ),
                {"bundles": [str(b) for b in bundles], "patient": patient, "t0": T0},
            )
            conn.execute(text("ANALYZE predictions"))
            for filters in (
                ListFilters(),
                ListFilters(risk="high"),
                ListFilters(task_id="cxr-deterioration"),
                ListFilters(feedback="accepted"),
            ):
                query = list_query(filters, LEVELS, limit=51)
                compiled = query.compile(migrated_postgres, compile_kwargs={"literal_binds": True})
                plan = "\n".join(r[0] for r in conn.execute(text(f"EXPLAIN {compiled}")))
                assert "ix_predictions_created_at_id" in plan, plan
                assert "Seq Scan on predictions" not in plan, plan
            session.close()
        finally:
            outer.rollback()
