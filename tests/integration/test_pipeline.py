"""The embedded pipeline end to end on SQLite and PostgreSQL, with a real (tiny) model.

anchor -> bundle -> job -> prediction through the outbox relay and the in-process worker;
late data makes a new version and supersedes the old prediction; a redelivered job makes
no second prediction; too little data gives a prediction row without a number; a poison
bundle is isolated from its batch and dead-lettered after N failures.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from cds.core.clinical import EventIn, IdentifierIn, ItemIn, SourceItemIn
from cds.core.db.models import (
    Bundle,
    BundleMember,
    BundleStatus,
    EventKind,
    JobState,
    Patient,
    PatientIdentifier,
    Prediction,
    PredictionStatus,
    Protocol,
    ScoringJob,
)
from cds.core.db.session import make_session_factory, transaction
from cds.core.pipeline.compose import retry_policy, tasks_for
from cds.core.pipeline.handlers import scoring_handler, timeline_handler
from cds.core.pipeline.jobs import TOPIC_SCORING, sweep
from cds.core.pipeline.relay import OutboxRelay
from cds.core.repository.ingest import ingest_item
from cds.core.repository.outbox import TOPIC_TIMELINE
from cds.core.runtime import EngineContext
from cds.core.settings import Settings
from fusion.inputs import BundleInput, PredictionOutput
from tests.integration.pipeline_support import (
    DelegatingScorer,
    seed_context,
    seed_study,
    synthetic_patient,
    tiny_checkpoint,
)
from worker.embedded import EmbeddedWorker
from worker.model import load_predictor
from worker.scoring import Outcome, Scorer, WorkerContext, score_jobs

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("model"))


@pytest.fixture
def ctx(db_engine: Engine, tmp_path: Path, checkpoint: Path) -> Iterator[EngineContext]:
    settings = Settings(
        database_url=db_engine.url.render_as_string(hide_password=False),
        data_dir=tmp_path,
        model_dir=checkpoint,
        worker_device="cpu",
        job_max_attempts=3,
        job_retry_base_s=0.05,
        job_lease_s=60,
    )
    yield EngineContext(
        settings=settings, engine=db_engine, session_factory=make_session_factory(db_engine)
    )


@contextmanager
def running_pipeline(
    ctx: EngineContext, scorer_factory: Callable[[], Scorer] | None = None
) -> Iterator[EmbeddedWorker]:
    settings = ctx.settings
    tasks = tasks_for(settings)
    policy = retry_policy(settings)
    worker = EmbeddedWorker(
        ctx,
        scorer_factory=scorer_factory
        or (lambda: load_predictor(settings.model_path, device="cpu")),
        tasks=tasks,
        policy=policy,
        max_batch=8,
        max_wait_s=0.01,
    )
    relay = OutboxRelay(
        ctx,
        {TOPIC_TIMELINE: timeline_handler(tasks), TOPIC_SCORING: scoring_handler(worker.dispatch)},
        policy=policy,
        poll_interval_s=0.05,
        sweep_interval_s=0.5,
    )
    worker.start()
    relay.start()
    try:
        yield worker
    finally:
        relay.stop()
        worker.stop()


def patient_db_id(ctx: EngineContext, mrn: str) -> uuid.UUID:
    with ctx.session_factory() as session:
        found = session.scalar(
            select(PatientIdentifier.patient_id).where(PatientIdentifier.value == mrn)
        )
    assert found is not None
    return found


def predictions_of(ctx: EngineContext, patient_id: uuid.UUID) -> list[Prediction]:
    with ctx.session_factory() as session:
        return list(
            session.scalars(
                select(Prediction)
                .where(Prediction.patient_id == patient_id)
                .order_by(Prediction.created_at)
            )
        )


def wait_for(check: Callable[[], bool], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def test_study_to_prediction_then_late_data_supersedes(ctx: EngineContext) -> None:
    patient = synthetic_patient(0, seed=101)
    with transaction(ctx.session_factory) as session:
        seed_context(session, patient)
        seed_study(session, patient, ctx.settings.data_dir)
    pid = patient_db_id(ctx, patient.patient_id)

    with running_pipeline(ctx) as worker:
        wait_for(lambda: len(predictions_of(ctx, pid)) == 1)
        (first,) = predictions_of(ctx, pid)
        assert first.status is PredictionStatus.FINAL
        assert first.probability is not None and 0.0 <= first.probability <= 1.0
        assert first.interval_low is not None and first.interval_high is not None
        assert first.interval_low <= first.probability <= first.interval_high
        assert first.outputs is not None and "attributions" in first.outputs
        assert first.model_version == "0.0.1-pipeline-test"
        with ctx.session_factory() as session:
            bundle = session.get(Bundle, first.bundle_id)
            assert bundle is not None and bundle.status is BundleStatus.SCORED
            modalities = set(
                session.scalars(
                    select(BundleMember.modality).where(BundleMember.bundle_id == bundle.id)
                )
            )
            assert {"image", "labs", "vitals", "notes", "demographics"} <= modalities
            job = session.scalar(select(ScoringJob).where(ScoringJob.bundle_id == bundle.id))
            assert job is not None and job.state is JobState.DONE and job.attempts == 1

        # A lab that arrives late, inside the window: a new version, scored again.
        late_at = patient.anchor - dt.timedelta(hours=1)
        body = b"late lactate"
        with transaction(ctx.session_factory) as session:
            ingest_item(
                session=session,
                item=ItemIn(
                    source=SourceItemIn(
                        protocol=Protocol.HL7V2,
                        namespace="LAB^SYN",
                        item_id=f"{patient.patient_id}-LATE",
                        content_sha256=SourceItemIn.sha256(body),
                        received_at=late_at + dt.timedelta(hours=3),
                    ),
                    identifiers=(
                        IdentifierIn("urn:oid:2.16.840.1.113883.3.9999", patient.patient_id),
                    ),
                    events=(
                        EventIn(
                            kind=EventKind.OBSERVATION,
                            lineage_key=f"test|{patient.patient_id}|late",
                            effective_at=late_at,
                            category="laboratory",
                            code_system="http://loinc.org",
                            code="2524-7",
                            value_num=4.8,
                            unit="mmol/L",
                        ),
                    ),
                ),
            )
        wait_for(lambda: len(predictions_of(ctx, pid)) == 2)
        wait_for(
            lambda: predictions_of(ctx, pid)[0].status is PredictionStatus.SUPERSEDED, timeout=10
        )
        old, new = predictions_of(ctx, pid)
        assert old.superseded_by_id == new.id
        assert new.status is PredictionStatus.FINAL
        with ctx.session_factory() as session:
            v1 = session.get(Bundle, old.bundle_id)
            v2 = session.get(Bundle, new.bundle_id)
            assert v1 is not None and v2 is not None
            assert (v1.version, v2.version) == (1, 2)
            assert v1.status is BundleStatus.SUPERSEDED and v2.supersedes_id == v1.id
            job2 = session.scalar(select(ScoringJob.id).where(ScoringJob.bundle_id == v2.id))
        assert job2 is not None

        # Redelivering a finished job changes nothing.
        worker.dispatch(job2)
        time.sleep(0.5)
    assert len(predictions_of(ctx, pid)) == 2


def test_unreadable_required_image_is_not_enough_data(ctx: EngineContext) -> None:
    patient = synthetic_patient(0, seed=202)
    with transaction(ctx.session_factory) as session:
        seed_context(session, patient)
        seed_study(session, patient, ctx.settings.data_dir, write_file=False)
    pid = patient_db_id(ctx, patient.patient_id)
    with running_pipeline(ctx):
        wait_for(lambda: len(predictions_of(ctx, pid)) == 1)
    (prediction,) = predictions_of(ctx, pid)
    assert prediction.status is PredictionStatus.INSUFFICIENT_DATA
    assert prediction.probability is None and prediction.interval_low is None
    assert prediction.outputs is not None
    assert prediction.outputs["missing"] == ["image"]
    assert "no decodable image" in prediction.outputs["unreadable"]["image"]


def test_anchor_alone_is_insufficient_by_minimum(ctx: EngineContext) -> None:
    patient = synthetic_patient(0, seed=303)
    with transaction(ctx.session_factory) as session:
        seed_study(session, patient, ctx.settings.data_dir)
    pid = patient_db_id(ctx, patient.patient_id)
    with running_pipeline(ctx):
        wait_for(lambda: len(predictions_of(ctx, pid)) == 1)
    (prediction,) = predictions_of(ctx, pid)
    assert prediction.status is PredictionStatus.INSUFFICIENT_DATA
    assert prediction.probability is None
    assert prediction.outputs is not None
    assert prediction.outputs["missing"] == ["at least 2 modalities needed, 1 present"]


class PoisonScorer(DelegatingScorer):
    """The real model, except that it raises on the bundles named poison (a test double
    for a bundle that crashes the model)."""

    def __init__(self, inner: Scorer, poison: set[str]) -> None:
        super().__init__(inner)
        self.poison = poison
        self.batches: list[int] = []

    def predict(self, batch: Sequence[BundleInput]) -> list[PredictionOutput]:
        self.batches.append(len(batch))
        if any(item.bundle_id in self.poison for item in batch):
            raise ValueError("poison bundle")
        return self.inner.predict(batch)


def drain_timeline(ctx: EngineContext) -> None:
    """Turn announced events into bundles and jobs, with no worker consuming them."""
    side = EngineContext(
        settings=ctx.settings, engine=ctx.engine, session_factory=ctx.session_factory
    )
    tasks = tasks_for(ctx.settings)
    OutboxRelay(side, {TOPIC_TIMELINE: timeline_handler(tasks)}).drain()


def _bundle_jobs(ctx: EngineContext, patients: list[uuid.UUID]) -> dict[uuid.UUID, uuid.UUID]:
    with ctx.session_factory() as session:
        rows = session.execute(
            select(Bundle.patient_id, ScoringJob.id)
            .join(ScoringJob, ScoringJob.bundle_id == Bundle.id)
            .where(Bundle.patient_id.in_(patients))
        ).all()
    return {p: j for p, j in rows}


def test_poison_bundle_is_isolated_then_dead_lettered(ctx: EngineContext) -> None:
    good, bad = synthetic_patient(0, seed=404), synthetic_patient(1, seed=404)
    with transaction(ctx.session_factory) as session:
        for patient in (good, bad):
            seed_context(session, patient)
            seed_study(session, patient, ctx.settings.data_dir)
    good_id, bad_id = patient_db_id(ctx, good.patient_id), patient_db_id(ctx, bad.patient_id)
    drain_timeline(ctx)
    tasks = tasks_for(ctx.settings)
    policy = retry_policy(ctx.settings)
    jobs = _bundle_jobs(ctx, [good_id, bad_id])
    with ctx.session_factory() as session:
        bad_bundle = session.scalar(select(Bundle.id).where(Bundle.patient_id == bad_id))
    scorer = PoisonScorer(load_predictor(ctx.settings.model_path, device="cpu"), {str(bad_bundle)})
    wctx = WorkerContext(
        session_factory=ctx.session_factory,
        tasks=tasks,
        data_dir=ctx.settings.data_dir,
        worker="test",
        policy=policy,
    )
    outcomes = score_jobs(wctx=wctx, scorer=scorer, job_ids=[jobs[good_id], jobs[bad_id]])
    assert outcomes == {jobs[good_id]: Outcome.SCORED, jobs[bad_id]: Outcome.FAILED}
    assert scorer.batches[0] == 2  # they really were in one batch
    assert [p.status for p in predictions_of(ctx, good_id)] == [PredictionStatus.FINAL]

    for _ in range(policy.max_attempts - 1):
        time.sleep(policy.delay(policy.max_attempts).total_seconds())
        with transaction(ctx.session_factory) as session:
            sweep(session=session, policy=policy)
        score_jobs(wctx=wctx, scorer=scorer, job_ids=[jobs[bad_id]])
    with ctx.session_factory() as session:
        job = session.get(ScoringJob, jobs[bad_id])
        assert job is not None
        assert job.state is JobState.DEAD
        assert job.attempts == policy.max_attempts
        assert job.last_error == "ValueError"
    assert predictions_of(ctx, bad_id) == []


def test_lost_worker_job_is_swept_and_scored_once(ctx: EngineContext) -> None:
    patient = synthetic_patient(0, seed=505)
    with transaction(ctx.session_factory) as session:
        seed_context(session, patient)
        seed_study(session, patient, ctx.settings.data_dir)
    pid = patient_db_id(ctx, patient.patient_id)
    policy = retry_policy(ctx.settings)
    drain_timeline(ctx)
    job_id = _bundle_jobs(ctx, [pid])[pid]
    # A worker claimed it and died: RUNNING, last touched long ago.
    with transaction(ctx.session_factory) as session:
        job = session.get(ScoringJob, job_id)
        assert job is not None
        job.state = JobState.RUNNING
        job.attempts = 1
        job.updated_at = job.updated_at - dt.timedelta(seconds=policy.lease_s + 1)
    with running_pipeline(ctx):
        wait_for(lambda: len(predictions_of(ctx, pid)) == 1)
        time.sleep(1.0)
    assert len(predictions_of(ctx, pid)) == 1
    with ctx.session_factory() as session:
        job = session.get(ScoringJob, job_id)
        assert job is not None and job.state is JobState.DONE and job.attempts == 2
        assert session.scalar(select(Patient.id).where(Patient.id == pid)) == pid
