"""Score jobs in batches: claim, build inputs, predict, write one prediction per job.

The unit of work for both the embedded worker and ``cdsfusion worker``. Idempotent: a job
already done is skipped, and the prediction is unique per (bundle, model version), so a
redelivered job never makes a second prediction. A bundle that fails inside a batch is
isolated by splitting the batch, so one poison bundle cannot sink the others.
"""

from __future__ import annotations

import enum
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from cds.core.aligner.task import TaskDefinition
from cds.core.db.models import Bundle, BundleStatus, Prediction, PredictionStatus, ScoringJob
from cds.core.db.session import transaction
from cds.core.pipeline.jobs import RetryPolicy, claim, fail, finish
from cds.core.repository.outbox import enqueue
from fusion.inputs import BundleInput, PredictionOutput
from worker.features import BuiltInput, build_input

logger = logging.getLogger(__name__)

#: Outbox topic announcing a new or changed prediction (FHIR RiskAssessment delivery).
TOPIC_PREDICTION = "prediction.changed"


class Scorer(Protocol):
    """What the worker needs of a model (``fusion.predictor.Predictor`` is one)."""

    @property
    def model_name(self) -> str: ...

    @property
    def model_version(self) -> str: ...

    @property
    def sha256(self) -> str: ...

    def predict(self, batch: Sequence[BundleInput]) -> list[PredictionOutput]: ...


class Outcome(enum.StrEnum):
    SCORED = "scored"
    INSUFFICIENT = "insufficient-data"
    SKIPPED = "skipped"
    SUPERSEDED = "superseded"
    FAILED = "failed"
    DEAD = "dead"


@dataclass
class _Claimed:
    job_id: uuid.UUID
    bundle_id: uuid.UUID
    built: BuiltInput


@dataclass(frozen=True)
class WorkerContext:
    """What scoring needs besides the model.

    Attributes:
        session_factory: database sessions.
        tasks: task definitions by id (required modalities, model inputs).
        data_dir: the DICOM store's root (``CDSFUSION_DATA_DIR``).
        worker: this worker's name (host:pid), recorded on jobs.
        policy: retries, backoff and the dead-letter threshold.
    """

    session_factory: sessionmaker[Session]
    tasks: dict[str, TaskDefinition]
    data_dir: Path
    worker: str
    policy: RetryPolicy


def score_jobs(
    *, wctx: WorkerContext, scorer: Scorer, job_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, Outcome]:
    """Score ``job_ids`` as one batch; returns each job's outcome."""
    outcomes: dict[uuid.UUID, Outcome] = {}
    claimed: list[_Claimed] = []
    for job_id in dict.fromkeys(job_ids):
        try:
            outcome, item = _claim_and_prepare(wctx, scorer, job_id)
        except Exception as exc:  # noqa: BLE001 - a bad bundle fails alone
            outcomes[job_id] = _record_failure(wctx, job_id, exc)
            continue
        if item is None:
            outcomes[job_id] = outcome
        else:
            claimed.append(item)
    results = _predict_isolating(scorer, claimed)
    for item, result in zip(claimed, results, strict=True):
        if isinstance(result, Exception):
            outcomes[item.job_id] = _record_failure(wctx, item.job_id, result)
            continue
        try:
            with transaction(wctx.session_factory) as session:
                _write_prediction(session, item, result)
            outcomes[item.job_id] = Outcome.SCORED
        except Exception as exc:  # noqa: BLE001 - recorded on the job, retried
            outcomes[item.job_id] = _record_failure(wctx, item.job_id, exc)
    return outcomes


def _claim_and_prepare(
    wctx: WorkerContext, scorer: Scorer, job_id: uuid.UUID
) -> tuple[Outcome, _Claimed | None]:
    with transaction(wctx.session_factory) as session:
        job = claim(session=session, job_id=job_id, worker=wctx.worker, policy=wctx.policy)
        if job is None:
            return Outcome.SKIPPED, None
        bundle = session.get(Bundle, job.bundle_id)
        assert bundle is not None
        if bundle.status is BundleStatus.SUPERSEDED:
            finish(session=session, job=job)
            return Outcome.SUPERSEDED, None
        if bundle.status is BundleStatus.INSUFFICIENT:
            _write_insufficient(session, scorer, bundle, list(bundle.missing or []), {})
            finish(session=session, job=job)
            return Outcome.INSUFFICIENT, None
        built = build_input(session=session, bundle=bundle, data_dir=wctx.data_dir)
        task = wctx.tasks.get(bundle.task_id)
        required = {n for n, s in task.modalities.items() if s.required} if task else set()
        unusable = sorted(required & set(built.unreadable))
        if unusable:
            _write_insufficient(session, scorer, bundle, unusable, built.unreadable)
            finish(session=session, job=job)
            return Outcome.INSUFFICIENT, None
        return Outcome.SCORED, _Claimed(job.id, bundle.id, built)


def _predict_isolating(scorer: Scorer, items: list[_Claimed]) -> list[PredictionOutput | Exception]:
    if not items:
        return []
    try:
        return list(scorer.predict([i.built.input for i in items]))
    except Exception as exc:  # noqa: BLE001 - split the batch to find the poison bundle
        if len(items) == 1:
            logger.warning("bundle %s failed to score: %s", items[0].bundle_id, type(exc).__name__)
            return [exc]
        middle = len(items) // 2
        return _predict_isolating(scorer, items[:middle]) + _predict_isolating(
            scorer, items[middle:]
        )


def _record_failure(wctx: WorkerContext, job_id: uuid.UUID, exc: Exception) -> Outcome:
    with transaction(wctx.session_factory) as session:
        state = fail(session=session, job_id=job_id, error=type(exc).__name__, policy=wctx.policy)
    logger.warning("job %s failed (%s): now %s", job_id, type(exc).__name__, state.value)
    return Outcome.DEAD if state.value == "dead" else Outcome.FAILED


def _insert_prediction(session: Session, prediction: Prediction) -> bool:
    try:
        with session.begin_nested():
            session.add(prediction)
            session.flush()
    except IntegrityError:
        return False  # this bundle version was already scored by this model: idempotent
    return True


def _supersede_older(session: Session, bundle: Bundle, newest: Prediction) -> list[uuid.UUID]:
    older_bundles = select(Bundle.id).where(
        Bundle.task_id == bundle.task_id,
        Bundle.anchor_key == bundle.anchor_key,
        Bundle.version < bundle.version,
    )
    ids = list(
        session.scalars(
            select(Prediction.id).where(
                Prediction.bundle_id.in_(older_bundles),
                Prediction.status != PredictionStatus.SUPERSEDED,
            )
        )
    )
    if ids:
        session.execute(
            update(Prediction)
            .where(Prediction.id.in_(ids))
            .values(status=PredictionStatus.SUPERSEDED, superseded_by_id=newest.id)
        )
    return ids


def _announce(session: Session, prediction_ids: list[uuid.UUID], reason: str) -> None:
    for pid in prediction_ids:
        enqueue(
            session=session,
            topic=TOPIC_PREDICTION,
            dedup_key=f"prediction|{pid}|{reason}",
            aggregate_id=pid,
            payload={"prediction_id": str(pid), "reason": reason},
        )


def _store(session: Session, bundle: Bundle, prediction: Prediction) -> None:
    if _insert_prediction(session, prediction):
        superseded = _supersede_older(session, bundle, prediction)
        _announce(session, [prediction.id], "created")
        _announce(session, superseded, "superseded")


def _write_insufficient(
    session: Session,
    scorer: Scorer,
    bundle: Bundle,
    missing: list[str],
    unreadable: dict[str, str],
) -> None:
    """A prediction row that says data was too thin: no probability, ever."""
    _store(
        session,
        bundle,
        Prediction(
            id=uuid.uuid4(),
            bundle_id=bundle.id,
            patient_id=bundle.patient_id,
            task_id=bundle.task_id,
            model_name=scorer.model_name,
            model_version=scorer.model_version,
            model_sha256=scorer.sha256,
            status=PredictionStatus.INSUFFICIENT_DATA,
            probability=None,
            outputs={"missing": missing, "unreadable": unreadable},
        ),
    )


def _write_prediction(session: Session, item: _Claimed, out: PredictionOutput) -> None:
    bundle = session.get(Bundle, item.bundle_id)
    assert bundle is not None
    outputs: dict[str, Any] = {
        "logit": out.logit,
        "coverage": out.coverage,
        "calibrated": out.calibrated,
        "attributions": out.attributions,
        "missing_modalities": out.missing_modalities,
        "missingness_pattern": out.missingness_pattern,
        "image_instance": item.built.image_instance,
        "unreadable": item.built.unreadable,
    }
    _store(
        session,
        bundle,
        Prediction(
            id=uuid.uuid4(),
            bundle_id=bundle.id,
            patient_id=bundle.patient_id,
            task_id=bundle.task_id,
            model_name=out.model_name,
            model_version=out.model_version,
            model_sha256=out.model_sha256,
            status=PredictionStatus.FINAL,
            probability=out.probability,
            interval_low=out.interval_low,
            interval_high=out.interval_high,
            outputs=outputs,
        ),
    )
    if bundle.status is not BundleStatus.SUPERSEDED:
        bundle.status = BundleStatus.SCORED
    job = session.get(ScoringJob, item.job_id, with_for_update=True)
    if job is not None:
        finish(session=session, job=job)
