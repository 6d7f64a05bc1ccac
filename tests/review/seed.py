"""A review database with real predictions from the tiny model, built once per test run.

Patient A (every modality): a prediction, then a late lab makes bundle version 2 whose
prediction supersedes the first. Patient B: the study file is missing, so the image is
unreadable and the prediction says "not enough data". The EHR's feedback on A's card is
written the way ``cds.hooks`` writes it. Three local users, one per role.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from cds.core import migrate
from cds.core.clinical import EventIn, IdentifierIn, ItemIn, SourceItemIn
from cds.core.db.models import (
    EventKind,
    PatientIdentifier,
    Prediction,
    PredictionStatus,
    Protocol,
    ReviewRole,
)
from cds.core.db.session import make_engine, make_session_factory, transaction
from cds.core.db.types import utcnow
from cds.core.repository.audit import append_audit
from cds.core.repository.ingest import ingest_item
from cds.core.runtime import EngineContext
from cds.core.settings import Settings
from cds.review.users import create_local_user

PASSWORD = "correct horse battery staple"
USERS = {"clin": ReviewRole.CLINICIAN, "audi": ReviewRole.AUDITOR, "boss": ReviewRole.ADMIN}


@dataclass(frozen=True)
class Seeded:
    """What the seeded database holds."""

    database_url: str
    data_dir: Path
    model_dir: Path
    mrn_a: str
    mrn_b: str
    current: uuid.UUID
    superseded: uuid.UUID
    insufficient: uuid.UUID


def _wait(check: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError("the pipeline did not produce the predictions in time")


def _predictions(ctx: EngineContext, mrn: str) -> list[Prediction]:
    with ctx.session_factory() as session:
        patient = session.scalar(
            select(PatientIdentifier.patient_id).where(PatientIdentifier.value == mrn)
        )
        return list(
            session.scalars(
                select(Prediction)
                .where(Prediction.patient_id == patient)
                .order_by(Prediction.created_at)
            )
        )


def _late_lab(ctx: EngineContext, mrn: str, anchor: dt.datetime) -> None:
    late_at = anchor - dt.timedelta(hours=1)
    body = b"late lactate"
    with transaction(ctx.session_factory) as session:
        ingest_item(
            session=session,
            item=ItemIn(
                source=SourceItemIn(
                    protocol=Protocol.HL7V2,
                    namespace="LAB^SYN",
                    item_id=f"{mrn}-LATE",
                    content_sha256=SourceItemIn.sha256(body),
                    received_at=late_at + dt.timedelta(hours=3),
                ),
                identifiers=(IdentifierIn("urn:oid:2.16.840.1.113883.3.9999", mrn),),
                events=(
                    EventIn(
                        kind=EventKind.OBSERVATION,
                        lineage_key=f"test|{mrn}|late",
                        effective_at=late_at,
                        category="laboratory",
                        code_system="http://loinc.org",
                        code="2524-7",
                        display="Lactate",
                        value_num=4.8,
                        unit="mmol/L",
                    ),
                ),
            ),
        )


def build(root: Path) -> Seeded:
    """Migrate a SQLite file under ``root``, run the pipeline, add feedback and users."""
    from tests.integration.pipeline_support import (
        seed_context,
        seed_study,
        synthetic_patient,
        tiny_checkpoint,
    )
    from tests.integration.test_pipeline import running_pipeline

    data_dir = root / "data"
    data_dir.mkdir(parents=True)
    model_dir = tiny_checkpoint(root / "model")
    url = f"sqlite:///{root / 'review.db'}"
    migrate.upgrade(url)
    settings = Settings(
        database_url=url, data_dir=data_dir, model_dir=model_dir, worker_device="cpu"
    )
    engine = make_engine(url)
    ctx = EngineContext(
        settings=settings, engine=engine, session_factory=make_session_factory(engine)
    )
    a, b = synthetic_patient(0, seed=101), synthetic_patient(0, seed=202)
    try:
        with transaction(ctx.session_factory) as session:
            seed_context(session, a)
            seed_study(session, a, data_dir)
            seed_context(session, b)
            seed_study(session, b, data_dir, write_file=False)
        with running_pipeline(ctx):
            _wait(lambda: len(_predictions(ctx, a.patient_id)) == 1)
            _wait(lambda: len(_predictions(ctx, b.patient_id)) == 1)
            _late_lab(ctx, a.patient_id, a.anchor)
            _wait(
                lambda: (
                    [p.status for p in _predictions(ctx, a.patient_id)]
                    == [PredictionStatus.SUPERSEDED, PredictionStatus.FINAL]
                )
            )
        old, new = _predictions(ctx, a.patient_id)
        (thin,) = _predictions(ctx, b.patient_id)
        assert thin.status is PredictionStatus.INSUFFICIENT_DATA
        with transaction(ctx.session_factory) as session:
            append_audit(
                session=session,
                actor="cds-client:https://ehr.example|dr-who",
                action="cds.feedback",
                occurred_at=utcnow(),
                entity_type="card",
                entity_id=str(new.id),
                details={
                    "service": "cxr-deterioration-patient-view",
                    "outcome": "overridden",
                    "override_reason": {
                        "system": "urn:cdsfusion:override-reason",
                        "code": "disagree",
                    },
                    "prediction_id": str(new.id),
                },
            )
            for username, role in USERS.items():
                create_local_user(
                    session=session,
                    username=username,
                    password=PASSWORD,
                    role=role,
                    actor="system:test",
                )
    finally:
        engine.dispose()
    return Seeded(
        database_url=url,
        data_dir=data_dir,
        model_dir=model_dir,
        mrn_a=a.patient_id,
        mrn_b=b.patient_id,
        current=new.id,
        superseded=old.id,
        insufficient=thin.id,
    )
