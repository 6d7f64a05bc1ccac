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

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cds.core.aligner.task import TaskDefinition
from cds.core.db.models import Bundle, BundleStatus, PredictionStatus
from cds.core.db.session import transaction
from cds.core.db.types import utcnow
from cds.core.pipeline.jobs import RetryPolicy, claim_many, fail, finish_many
from cds.core.repository.outbox import TOPIC_PREDICTION
from fusion.inputs import BundleInput, PredictionOutput
from worker.features import BuiltInput, build_input
from worker.writes import write_scored

__all__ = ["TOPIC_PREDICTION", "Outcome", "Scorer", "WorkerContext", "score_jobs"]

logger = logging.getLogger(__name__)


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
    patient_id: uuid.UUID
    task_id: str
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
    """Score ``job_ids`` as one batch; returns each job's outcome.

    Three steps, two transactions: claim the jobs and read their bundles (one transaction;
    a savepoint per bundle read), run the model on the batch (no transaction open), write
    every prediction set-based (one transaction; if that fails, a savepoint per job). A
    job that fails in any step fails alone and is recorded for retry. A database that
    fails the whole batch raises, so the caller (the Celery task) retries it later.
    """
    ids = list(dict.fromkeys(job_ids))
    outcomes: dict[uuid.UUID, Outcome] = {}
    failures: dict[uuid.UUID, Exception] = {}
    claimed: list[_Claimed] = []
    with transaction(wctx.session_factory) as session:
        taken = claim_many(session=session, job_ids=ids, worker=wctx.worker, policy=wctx.policy)
        outcomes.update({job_id: Outcome.SKIPPED for job_id in ids if job_id not in taken})
        bundles = {
            b.id: b for b in session.scalars(select(Bundle).where(Bundle.id.in_(taken.values())))
        }
        for job_id, bundle_id in taken.items():
            try:
                with session.begin_nested():
                    outcome, item = _prepare(session, wctx, scorer, job_id, bundles[bundle_id])
            except Exception as exc:  # noqa: BLE001 - a bad bundle fails alone
                failures[job_id] = exc
                continue
            if item is None:
                outcomes[job_id] = outcome
            else:
                claimed.append(item)
    results = _predict_isolating(scorer, claimed)
    scored = [(i, r) for i, r in zip(claimed, results, strict=True) if not isinstance(r, Exception)]
    failures.update(
        {i.job_id: r for i, r in zip(claimed, results, strict=True) if isinstance(r, Exception)}
    )
    with transaction(wctx.session_factory) as session:
        try:
            with session.begin_nested():
                write_scored(
                    session, [_row(i, out) for i, out in scored], [i.job_id for i, _ in scored]
                )
            outcomes.update({i.job_id: Outcome.SCORED for i, _ in scored})
        except Exception:  # noqa: BLE001 - fall back to one savepoint per job
            logger.warning("batch write failed; writing %d predictions one by one", len(scored))
            for item, out in scored:
                try:
                    with session.begin_nested():
                        write_scored(session, [_row(item, out)], [item.job_id])
                    outcomes[item.job_id] = Outcome.SCORED
                except Exception as exc:  # noqa: BLE001 - recorded on the job, retried
                    failures[item.job_id] = exc
    for job_id, error in failures.items():
        outcomes[job_id] = _record_failure(wctx, job_id, error)
    return outcomes


def _prepare(
    session: Session, wctx: WorkerContext, scorer: Scorer, job_id: uuid.UUID, bundle: Bundle
) -> tuple[Outcome, _Claimed | None]:
    if bundle.status is BundleStatus.SUPERSEDED:
        finish_many(session=session, job_ids=[job_id])
        return Outcome.SUPERSEDED, None
    if bundle.status is BundleStatus.INSUFFICIENT:
        _write_insufficient(session, scorer, bundle, list(bundle.missing or []), {}, job_id=job_id)
        return Outcome.INSUFFICIENT, None
    built = build_input(session=session, bundle=bundle, data_dir=wctx.data_dir)
    task = wctx.tasks.get(bundle.task_id)
    required = {n for n, s in task.modalities.items() if s.required} if task else set()
    unusable = sorted(required & set(built.unreadable))
    if unusable:
        _write_insufficient(session, scorer, bundle, unusable, built.unreadable, job_id=job_id)
        return Outcome.INSUFFICIENT, None
    return Outcome.SCORED, _Claimed(job_id, bundle.id, bundle.patient_id, bundle.task_id, built)


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


def _base_row(bundle_id: uuid.UUID, patient_id: uuid.UUID, task_id: str) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "bundle_id": bundle_id,
        "patient_id": patient_id,
        "task_id": task_id,
        "created_at": utcnow(),
        "superseded_by_id": None,
    }


def _write_insufficient(
    session: Session,
    scorer: Scorer,
    bundle: Bundle,
    missing: list[str],
    unreadable: dict[str, str],
    *,
    job_id: uuid.UUID,
) -> None:
    """A prediction row that says data was too thin: no probability, ever."""
    row = _base_row(bundle.id, bundle.patient_id, bundle.task_id) | {
        "model_name": scorer.model_name,
        "model_version": scorer.model_version,
        "model_sha256": scorer.sha256,
        "status": PredictionStatus.INSUFFICIENT_DATA,
        "probability": None,
        "interval_low": None,
        "interval_high": None,
        "outputs": {"missing": missing, "unreadable": unreadable},
    }
    write_scored(session, [row], [job_id])


def _row(item: _Claimed, out: PredictionOutput) -> dict[str, Any]:
    """The prediction row of one scored bundle."""
    patient_id, task_id = item.patient_id, item.task_id
    return _base_row(item.bundle_id, patient_id, task_id) | {
        "model_name": out.model_name,
        "model_version": out.model_version,
        "model_sha256": out.model_sha256,
        "status": PredictionStatus.FINAL,
        "probability": out.probability,
        "interval_low": out.interval_low,
        "interval_high": out.interval_high,
        "outputs": {
            "logit": out.logit,
            "coverage": out.coverage,
            "calibrated": out.calibrated,
            "attributions": out.attributions,
            "missing_modalities": out.missing_modalities,
            "missingness_pattern": out.missingness_pattern,
            "image_instance": item.built.image_instance,
            "unreadable": item.built.unreadable,
        },
    }
