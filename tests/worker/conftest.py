"""A small stored world for the worker's tests: patients, studies, bundles and jobs.

Built through the connectors' repository functions and the aligner (the outbox relay), so
the worker reads real rows, on SQLite and PostgreSQL. Several shapes of bundle: complete
ones, one whose image file is missing, one with the anchor alone, two versions of one
anchor, and a study whose preferred image cannot be decoded (the next one is used).
"""

from __future__ import annotations

import datetime as dt
import itertools
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, select
from sqlalchemy.orm import Session, sessionmaker

from cds.core.clinical import EventIn, IdentifierIn, ItemIn, SourceItemIn
from cds.core.db.models import (
    Bundle,
    EventKind,
    ImagingInstance,
    ImagingSeries,
    ImagingStudy,
    PatientIdentifier,
    Protocol,
    ScoringJob,
)
from cds.core.db.session import make_session_factory, transaction
from cds.core.pipeline.compose import retry_policy, tasks_for
from cds.core.pipeline.handlers import timeline_handler
from cds.core.pipeline.relay import OutboxRelay
from cds.core.repository.ingest import ingest_item
from cds.core.repository.outbox import TOPIC_TIMELINE
from cds.core.runtime import EngineContext
from cds.core.settings import Settings
from tests.integration.pipeline_support import (
    seed_context,
    seed_study,
    synthetic_patient,
    tiny_checkpoint,
)
from worker.scoring import WorkerContext

ISSUER = "urn:oid:2.16.840.1.113883.3.9999"


@dataclass
class World:
    """What the fixture stored.

    Attributes:
        ctx: the engine context (database, settings with ``data_dir``).
        wctx: a worker context on it.
        patients: name -> the engine's patient id.
        jobs: bundle id -> its scoring job id (every bundle of this world).
    """

    ctx: EngineContext
    wctx: WorkerContext
    patients: dict[str, uuid.UUID]
    jobs: dict[uuid.UUID, uuid.UUID]

    def bundles(self) -> list[Bundle]:
        """This world's bundles, oldest first."""
        with self.ctx.session_factory() as session:
            return list(
                session.scalars(
                    select(Bundle)
                    .where(Bundle.id.in_(list(self.jobs)))
                    .order_by(Bundle.patient_id, Bundle.version)
                )
            )

    def bundles_of(self, name: str) -> list[Bundle]:
        return [b for b in self.bundles() if b.patient_id == self.patients[name]]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("model"))


def _late_lab(patient_mrn: str, at: dt.datetime) -> ItemIn:
    body = f"late {patient_mrn}".encode()
    return ItemIn(
        source=SourceItemIn(
            protocol=Protocol.HL7V2,
            namespace="LAB^SYN",
            item_id=f"{patient_mrn}-LATE",
            content_sha256=SourceItemIn.sha256(body),
            received_at=at + dt.timedelta(hours=3),
        ),
        identifiers=(IdentifierIn(ISSUER, patient_mrn),),
        events=(
            EventIn(
                kind=EventKind.OBSERVATION,
                lineage_key=f"test|{patient_mrn}|late",
                effective_at=at,
                category="laboratory",
                code_system="http://loinc.org",
                code="2524-7",
                value_num=4.8,
                unit="mmol/L",
            ),
        ),
    )


def _undecodable_first_image(
    session_factory: sessionmaker[Session], data_dir: Path, mrn: str
) -> None:
    """Give the patient's study a preferred (PA, first by UID) image that is not DICOM."""
    key = f"dicom/zz/{uuid.uuid4().hex}.dcm"
    uid = f"1.0.{uuid.uuid4().int}"  # sorts before the real image's 2.25... UID
    (data_dir / key).parent.mkdir(parents=True, exist_ok=True)
    (data_dir / key).write_bytes(b"not a DICOM file")
    with transaction(session_factory) as session:
        patient_id = session.scalar(
            select(PatientIdentifier.patient_id).where(PatientIdentifier.value == mrn)
        )
        series = session.scalar(
            select(ImagingSeries)
            .join(ImagingStudy, ImagingStudy.id == ImagingSeries.study_id)
            .where(ImagingStudy.patient_id == patient_id)
        )
        assert series is not None
        stored = ingest_item(
            session=session,
            item=ItemIn(
                source=SourceItemIn(
                    protocol=Protocol.DICOM,
                    namespace="",
                    item_id=uid,
                    content_sha256=SourceItemIn.sha256(key.encode()),
                    received_at=dt.datetime.now(dt.UTC),
                    storage_key=key,
                ),
                identifiers=(IdentifierIn(ISSUER, mrn),),
            ),
        )
        session.add(
            ImagingInstance(
                series_id=series.id,
                source_item_id=stored.source_item_id,
                SOPInstanceUID=uid,
                SOPClassUID="1.2.840.10008.5.1.4.1.1.1.1",
                TransferSyntaxUID="1.2.840.10008.1.2.1",
                ViewPosition="PA",
                storage_key=key,
                size_bytes=16,
                received_at=dt.datetime.now(dt.UTC),
            )
        )


#: Cohort seeds of the worlds of this test run, each with its own MRNs (see ``world``).
_WORLD_SEEDS = itertools.count(600)


@pytest.fixture
def world(db_engine: Engine, tmp_path: Path, checkpoint: Path) -> Iterator[World]:
    """Seven bundles of five shapes (see the module docstring), each with its job."""
    settings = Settings(
        database_url=db_engine.url.render_as_string(hide_password=False),
        data_dir=tmp_path,
        model_dir=checkpoint,
        worker_device="cpu",
        job_max_attempts=3,
        job_retry_base_s=0.05,
        job_lease_s=60,
    )
    ctx = EngineContext(
        settings=settings, engine=db_engine, session_factory=make_session_factory(db_engine)
    )
    # Fresh MRNs (PostgreSQL is shared per module): the synthetic MRN holds only seed % 1000,
    # so random seeds collided about once in 15 modules, and a world then found another
    # world's patient (whose bundle lacked observations); a counter never repeats one.
    seed = next(_WORLD_SEEDS)
    shapes = {
        "full-a": synthetic_patient(0, seed=seed),
        "full-b": synthetic_patient(1, seed=seed),
        "no-file": synthetic_patient(2, seed=seed),
        "anchor-only": synthetic_patient(3, seed=seed),
        "two-versions": synthetic_patient(4, seed=seed),
        "bad-first-image": synthetic_patient(5, seed=seed),
    }
    with transaction(ctx.session_factory) as session:
        for name, patient in shapes.items():
            if name != "anchor-only":
                seed_context(session, patient)
            seed_study(session, patient, tmp_path, write_file=name != "no-file")
    _undecodable_first_image(ctx.session_factory, tmp_path, shapes["bad-first-image"].patient_id)
    tasks = tasks_for(settings)
    relay = OutboxRelay(ctx, {TOPIC_TIMELINE: timeline_handler(tasks)})
    while relay.drain():
        pass
    late = shapes["two-versions"]
    with transaction(ctx.session_factory) as session:
        ingest_item(
            session=session,
            item=_late_lab(late.patient_id, late.anchor - dt.timedelta(hours=1)),
        )
    while relay.drain():
        pass
    with ctx.session_factory() as session:
        patients = {
            name: session.scalar(
                select(PatientIdentifier.patient_id).where(
                    PatientIdentifier.value == patient.patient_id
                )
            )
            for name, patient in shapes.items()
        }
        jobs = dict(
            session.execute(
                select(ScoringJob.bundle_id, ScoringJob.id)
                .join(Bundle, Bundle.id == ScoringJob.bundle_id)
                .where(Bundle.patient_id.in_(list(patients.values())))
            ).all()
        )
    assert all(patients.values())
    wctx = WorkerContext(
        session_factory=ctx.session_factory,
        tasks=tasks,
        data_dir=tmp_path,
        worker="test-worker",
        policy=retry_policy(settings),
    )
    yield World(ctx=ctx, wctx=wctx, patients=patients, jobs=jobs)  # type: ignore[arg-type]


@contextmanager
def counting_statements(
    engine: Engine, verbs: frozenset[str] = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE"})
) -> Iterator[list[str]]:
    """The SQL statements ``engine`` runs meanwhile whose first word is one of ``verbs``."""
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().split(None, 1)[0].upper() in verbs:
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", count)
