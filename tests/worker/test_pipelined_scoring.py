"""Scoring through the pipelined batcher (prepare, predict, write on their own threads).

Every shape of bundle ends as it did when scoring ran in one step, a poison bundle is
isolated from its batch, stopping with batches in every step loses and duplicates nothing,
and each step's database work is a fixed number of statements whatever the batch size.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest
from sqlalchemy import func, select

from cds.core.db.models import (
    BundleStatus,
    JobState,
    Prediction,
    PredictionStatus,
    ScoringJob,
)
from cds.core.db.types import utcnow
from fusion.features import EncodedBundle
from fusion.inputs import BundleInput, PredictionOutput
from fusion.predictor import Predictor
from tests.integration.pipeline_support import DelegatingScorer
from tests.worker.conftest import World, counting_statements
from worker.embedded import WorkerMetrics, scoring_batcher
from worker.model import load_predictor
from worker.scoring import Outcome, Scorer, predict_jobs, prepare_jobs, write_jobs
from worker.writes import write_scored

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WAIT_S = 120.0


class GatedScorer(DelegatingScorer):
    """The real model, except that it raises on the bundles named poison and, while the
    gate is shut, holds every batch (so batches pile up in the other steps)."""

    def __init__(self, inner: Scorer, poison: frozenset[str] = frozenset()) -> None:
        super().__init__(inner)
        self.poison = poison
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.batches: list[list[str]] = []

    def predict(self, batch: Sequence[BundleInput]) -> list[PredictionOutput]:
        self.batches.append([item.bundle_id for item in batch])
        self.entered.set()
        assert self.gate.wait(WAIT_S)
        if any(item.bundle_id in self.poison for item in batch):
            raise ValueError("poison bundle")
        return self.inner.predict(batch)


def metrics(world: World) -> WorkerMetrics:
    return WorkerMetrics(world.ctx)  # the world's own registry


def expected_outcomes(world: World) -> dict[uuid.UUID, Outcome]:
    """Each job's outcome: superseded v1, insufficient data where the image is missing or
    the anchor is alone, scored otherwise."""
    want = {}
    for bundle in world.bundles():
        job = world.jobs[bundle.id]
        if bundle.status is BundleStatus.SUPERSEDED:
            want[job] = Outcome.SUPERSEDED
        elif bundle.patient_id in (world.patients["no-file"], world.patients["anchor-only"]):
            want[job] = Outcome.INSUFFICIENT
        else:
            want[job] = Outcome.SCORED
    return want


def predictions_per_bundle(world: World) -> dict[uuid.UUID, int]:
    with world.ctx.session_factory() as session:
        return dict(
            session.execute(
                select(Prediction.bundle_id, func.count())
                .where(Prediction.bundle_id.in_(list(world.jobs)))
                .group_by(Prediction.bundle_id)
            ).all()
        )


def job_states(world: World) -> dict[uuid.UUID, tuple[JobState, int]]:
    with world.ctx.session_factory() as session:
        rows = session.execute(
            select(ScoringJob.id, ScoringJob.state, ScoringJob.attempts).where(
                ScoringJob.id.in_(list(world.jobs.values()))
            )
        ).all()
    return {job_id: (state, attempts) for job_id, state, attempts in rows}


def test_pipelined_scoring_settles_every_shape_once(world: World) -> None:
    scorer = GatedScorer(load_predictor(world.ctx.settings.model_path, device="cpu"))
    batcher = scoring_batcher(
        world.wctx, scorer, metrics(world), max_batch=3, max_wait_s=0.05, name="test-pipeline"
    )
    batcher.start()
    try:
        futures = {job: batcher.submit(job) for job in world.jobs.values()}
        outcomes = {job: f.result(timeout=WAIT_S) for job, f in futures.items()}
    finally:
        batcher.stop()
    assert outcomes == expected_outcomes(world)
    counts = predictions_per_bundle(world)
    superseded = {b.id for b in world.bundles() if b.status is BundleStatus.SUPERSEDED}
    assert set(counts) == set(world.jobs) - superseded
    assert set(counts.values()) == {1}
    assert set(job_states(world).values()) == {(JobState.DONE, 1)}
    with world.ctx.session_factory() as session:
        statuses = dict(
            session.execute(
                select(Prediction.bundle_id, Prediction.status).where(
                    Prediction.bundle_id.in_(list(world.jobs))
                )
            ).all()
        )
    (fallback,) = world.bundles_of("bad-first-image")
    assert statuses[fallback.id] is PredictionStatus.FINAL
    (no_file,) = world.bundles_of("no-file")
    assert statuses[no_file.id] is PredictionStatus.INSUFFICIENT_DATA


def test_pipelined_scoring_isolates_a_poison_bundle(world: World) -> None:
    (poison,) = world.bundles_of("full-b")
    scorer = GatedScorer(
        load_predictor(world.ctx.settings.model_path, device="cpu"), frozenset({str(poison.id)})
    )
    scorer.gate.clear()  # hold the first batch until every job is queued: one batch
    batcher = scoring_batcher(
        world.wctx, scorer, metrics(world), max_batch=16, max_wait_s=2.0, name="test-poison"
    )
    batcher.start()
    try:
        futures = {job: batcher.submit(job) for job in world.jobs.values()}
        assert scorer.entered.wait(WAIT_S)
        scorer.gate.set()
        outcomes = {job: f.result(timeout=WAIT_S) for job, f in futures.items()}
    finally:
        batcher.stop()
    want = expected_outcomes(world)
    want[world.jobs[poison.id]] = Outcome.FAILED
    assert outcomes == want
    assert len(scorer.batches[0]) == 4  # the four scorable bundles went in together
    states = job_states(world)
    assert states.pop(world.jobs[poison.id]) == (JobState.FAILED, 1)
    assert set(states.values()) == {(JobState.DONE, 1)}
    assert poison.id not in predictions_per_bundle(world)


def test_stop_with_batches_in_every_step_loses_and_duplicates_nothing(world: World) -> None:
    scorer = GatedScorer(load_predictor(world.ctx.settings.model_path, device="cpu"))
    scorer.gate.clear()
    batcher = scoring_batcher(
        world.wctx, scorer, metrics(world), max_batch=1, max_wait_s=0.0, name="test-stop"
    )
    batcher.start()
    jobs = list(world.jobs.values())
    # Every job twice (a redelivery): the second claim finds it running or done.
    futures = [(job, batcher.submit(job)) for job in jobs + jobs]
    assert scorer.entered.wait(WAIT_S)  # a batch is held in the model
    stopper = threading.Thread(target=batcher.stop, kwargs={"timeout": WAIT_S})
    stopper.start()
    scorer.gate.set()
    stopper.join(WAIT_S)
    assert not stopper.is_alive()
    assert all(f.done() for _, f in futures)
    first = {job: f.result() for job, f in futures[: len(jobs)]}
    again = {job: f.result() for job, f in futures[len(jobs) :]}
    assert first == expected_outcomes(world)
    assert set(again.values()) == {Outcome.SKIPPED}
    assert set(predictions_per_bundle(world).values()) == {1}
    assert set(job_states(world).values()) == {(JobState.DONE, 1)}


def test_each_step_takes_a_fixed_number_of_statements(world: World) -> None:
    """Claim and read: four statements for one job or many; write: no bundle read again."""
    scorer = load_predictor(world.ctx.settings.model_path, device="cpu")
    bundles = world.bundles()
    (full,) = world.bundles_of("full-a")
    jobs = [world.jobs[full.id]] + [world.jobs[b.id] for b in bundles if b.id != full.id]
    engine = world.ctx.engine
    with counting_statements(engine) as one:
        prepare_jobs(wctx=world.wctx, scorer=scorer, job_ids=jobs[:1])
    with counting_statements(engine) as many:
        batch = prepare_jobs(wctx=world.wctx, scorer=scorer, job_ids=jobs[1:])
    assert len(one) == len(many) == 4  # claim, bundles, members, study images
    assert not batch.failures and not batch.outcomes  # every job claimed and settled
    assert len(batch.to_score) + len(batch.to_write) + len(batch.superseded) == len(jobs) - 1
    # Version 1 bundles only: a later version also supersedes (a read per bundle).
    batch.to_score = [c for c in batch.to_score if batch.bundles[c.bundle_id].version == 1]
    with counting_statements(engine) as writes:
        outcomes = write_jobs(wctx=world.wctx, batch=predict_jobs(scorer=scorer, batch=batch))
    assert Outcome.SCORED in outcomes.values()
    assert not [s for s in writes if s.lstrip().upper().startswith("SELECT")]


def test_write_reads_the_bundles_it_was_not_given(world: World) -> None:
    """Called without the bundles (as before), the write still supersedes older versions."""
    old, new = world.bundles_of("two-versions")
    row = {
        "id": uuid.uuid4(),
        "bundle_id": old.id,
        "patient_id": old.patient_id,
        "task_id": old.task_id,
        "model_name": "m",
        "model_version": "v",
        "model_sha256": "0" * 64,
        "status": PredictionStatus.FINAL,
        "probability": 0.5,
        "interval_low": 0.4,
        "interval_high": 0.6,
        "outputs": {},
        "created_at": utcnow(),
        "superseded_by_id": None,
    }
    with world.ctx.session_factory() as session, session.begin():
        write_scored(session, [row], [world.jobs[old.id]])
        write_scored(
            session,
            [row | {"id": uuid.uuid4(), "bundle_id": new.id}],
            [world.jobs[new.id]],
        )
    with world.ctx.session_factory() as session:
        first = session.get(Prediction, row["id"])
    assert first is not None and first.status is PredictionStatus.SUPERSEDED


class CountingPredictor(Predictor):
    """The real predictor, counting where featurization runs; one bundle cannot be encoded."""

    def __init__(self, path: Path, unencodable: str) -> None:
        super().__init__(path)
        self.unencodable = unencodable
        self.encoded_on: list[str] = []

    def encode(self, item: BundleInput) -> EncodedBundle:
        self.encoded_on.append(threading.current_thread().name)
        if item.bundle_id == self.unencodable:
            raise ValueError("cannot featurize this bundle")
        return super().encode(item)


def test_featurization_runs_in_the_prepare_step_and_fails_alone(world: World) -> None:
    (bad,) = world.bundles_of("full-b")
    scorer = CountingPredictor(world.ctx.settings.model_path, str(bad.id))
    batch = prepare_jobs(wctx=world.wctx, scorer=scorer, job_ids=list(world.jobs.values()))
    assert scorer.encoded_on  # encoded while preparing
    assert all(claimed.encoded is not None for claimed in batch.to_score)
    assert set(batch.failures) == {world.jobs[bad.id]}
    assert isinstance(batch.failures[world.jobs[bad.id]], ValueError)
    encoded_before = len(scorer.encoded_on)
    batch = predict_jobs(scorer=scorer, batch=batch)
    assert len(scorer.encoded_on) == encoded_before  # the predict step only runs the model
    outcomes = write_jobs(wctx=world.wctx, batch=batch)
    assert outcomes[world.jobs[bad.id]] is Outcome.FAILED
    scored = [job for job, outcome in outcomes.items() if outcome is Outcome.SCORED]
    assert scored and all(
        predictions_per_bundle(world)[b.id] == 1
        for b in world.bundles()
        if world.jobs[b.id] in scored
    )
