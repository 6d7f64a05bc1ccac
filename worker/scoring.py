"""Score jobs in batches: claim, build inputs, predict, write one prediction per job.

The unit of work for both the embedded worker and ``cdsfusion worker``, in three steps
that a pipelined batcher overlaps across batches (:class:`ScoringStages`): prepare (claim
and read set-based, decode), predict, write (set-based). Idempotent: a job already done
is skipped, and the prediction is unique per (bundle, model version), so a redelivered
job never makes a second prediction. A bundle that fails inside a batch is isolated by
splitting the batch, so one poison bundle cannot sink the others.
"""

from __future__ import annotations

import enum
import logging
import os
import uuid
from collections.abc import Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cds.core.aligner.task import TaskDefinition
from cds.core.db.models import Bundle, BundleStatus, PredictionStatus
from cds.core.db.session import transaction
from cds.core.db.types import utcnow
from cds.core.pipeline.jobs import RetryPolicy, claim_many, fail, finish_many
from cds.core.repository.outbox import TOPIC_PREDICTION
from fusion.inputs import BundleInput, PredictionOutput
from worker.features import BuiltInput, assemble, read_records
from worker.writes import write_scored

__all__ = [
    "TOPIC_PREDICTION",
    "Outcome",
    "Scorer",
    "ScoringBatch",
    "ScoringStages",
    "WorkerContext",
    "predict_jobs",
    "prepare_jobs",
    "score_jobs",
    "write_jobs",
]

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


@runtime_checkable
class EncodingScorer(Scorer, Protocol):
    """A scorer whose CPU featurization can run ahead, in the prepare step
    (``fusion.predictor.Predictor`` is one): the predict step then only runs the model."""

    def encode(self, item: BundleInput) -> Any: ...

    def predict_encoded(
        self, batch: Sequence[BundleInput], encoded: Sequence[Any]
    ) -> list[PredictionOutput]: ...


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
    encoded: Any = None


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


@dataclass
class ScoringBatch:
    """A batch of jobs on its way through the three steps of scoring.

    Attributes:
        outcomes: jobs settled so far (skipped: not claimed by this worker).
        failures: jobs that failed, with the error (recorded for retry by the last step).
        to_score: claimed jobs with their model input, for the model.
        to_write: prediction rows to store (job id, row, outcome): insufficient-data rows
            from the first step, scored rows from the model.
        superseded: claimed jobs whose bundle was superseded (finished, nothing written).
        bundles: the claimed jobs' bundles, by id.
    """

    outcomes: dict[uuid.UUID, Outcome] = field(default_factory=dict)
    failures: dict[uuid.UUID, Exception] = field(default_factory=dict)
    to_score: list[_Claimed] = field(default_factory=list)
    to_write: list[tuple[uuid.UUID, dict[str, Any], Outcome]] = field(default_factory=list)
    superseded: list[uuid.UUID] = field(default_factory=list)
    bundles: dict[uuid.UUID, Bundle] = field(default_factory=dict)


def score_jobs(
    *, wctx: WorkerContext, scorer: Scorer, job_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, Outcome]:
    """Score ``job_ids`` as one batch; returns each job's outcome.

    :func:`prepare_jobs`, :func:`predict_jobs` and :func:`write_jobs` in turn (a
    pipelined worker runs them on separate threads, see :class:`ScoringStages`). A job
    that fails in any step fails alone and is recorded for retry. A database that fails
    the whole batch raises, so the caller (the Celery task) retries it later.
    """
    batch = prepare_jobs(wctx=wctx, scorer=scorer, job_ids=job_ids)
    return write_jobs(wctx=wctx, batch=predict_jobs(scorer=scorer, batch=batch))


def prepare_jobs(
    *,
    wctx: WorkerContext,
    scorer: Scorer,
    job_ids: Sequence[uuid.UUID],
    pool: Executor | None = None,
) -> ScoringBatch:
    """Step 1: claim the jobs and read their bundles, then decode and featurize them.

    One short transaction of a fixed number of statements whatever the batch size (claim,
    bundles, members, study images); the pixels are decoded after it commits, on
    ``pool`` when given, and an :class:`EncodingScorer`'s featurization (tokens, resized
    image) runs here too, so that the predict step only runs the model. Superseded and
    insufficient bundles are settled here without the model (their rows are written by
    :func:`write_jobs`).
    """
    ids = list(dict.fromkeys(job_ids))
    batch = ScoringBatch()
    with transaction(wctx.session_factory) as session:
        taken = claim_many(session=session, job_ids=ids, worker=wctx.worker, policy=wctx.policy)
        batch.outcomes.update({job_id: Outcome.SKIPPED for job_id in ids if job_id not in taken})
        batch.bundles = {
            b.id: b for b in session.scalars(select(Bundle).where(Bundle.id.in_(taken.values())))
        }
        to_read: list[tuple[uuid.UUID, Bundle]] = []
        for job_id, bundle_id in taken.items():
            bundle = batch.bundles.get(bundle_id)
            if bundle is None:
                batch.failures[job_id] = LookupError("bundle not found")
            elif bundle.status is BundleStatus.SUPERSEDED:
                batch.superseded.append(job_id)
            elif bundle.status is BundleStatus.INSUFFICIENT:
                row = _insufficient_row(scorer, bundle, list(bundle.missing or []), {})
                batch.to_write.append((job_id, row, Outcome.INSUFFICIENT))
            else:
                to_read.append((job_id, bundle))
        records = read_records(session, [bundle for _, bundle in to_read])
    built = assemble(records, wctx.data_dir, pool=pool)
    for job_id, bundle in to_read:
        result = built[bundle.id]
        if isinstance(result, Exception):  # a bad bundle fails alone
            batch.failures[job_id] = result
            continue
        claimed = _classify(wctx, scorer, job_id, bundle, result)
        if isinstance(claimed, _Claimed):
            batch.to_score.append(claimed)
        else:
            batch.to_write.append((job_id, claimed, Outcome.INSUFFICIENT))
    if isinstance(scorer, EncodingScorer):
        _encode(scorer, batch, pool)
    return batch


def _encode(scorer: EncodingScorer, batch: ScoringBatch, pool: Executor | None) -> None:
    """Featurize the claimed jobs (on ``pool`` when given); one that fails fails alone."""

    def attempt(item: _Claimed) -> Any:
        try:
            return scorer.encode(item.built.input)
        except Exception as exc:  # noqa: BLE001 - recorded on the job, retried
            return exc

    items, batch.to_score = batch.to_score, []
    results = list(pool.map(attempt, items) if pool is not None else map(attempt, items))
    for item, result in zip(items, results, strict=True):
        if isinstance(result, Exception):
            logger.warning("bundle %s cannot be encoded: %s", item.bundle_id, type(result).__name__)
            batch.failures[item.job_id] = result
        else:
            item.encoded = result
            batch.to_score.append(item)


def _classify(
    wctx: WorkerContext, scorer: Scorer, job_id: uuid.UUID, bundle: Bundle, built: BuiltInput
) -> _Claimed | dict[str, Any]:
    """The job's model input, or its insufficient-data row if a required input is
    unreadable."""
    task = wctx.tasks.get(bundle.task_id)
    required = {n for n, s in task.modalities.items() if s.required} if task else set()
    unusable = sorted(required & set(built.unreadable))
    if unusable:
        return _insufficient_row(scorer, bundle, unusable, built.unreadable)
    return _Claimed(job_id, bundle.id, bundle.patient_id, bundle.task_id, built)


def predict_jobs(*, scorer: Scorer, batch: ScoringBatch) -> ScoringBatch:
    """Step 2: run the model on the batch (no transaction open).

    A batch the model fails on is split in halves until the failing bundles stand alone,
    so one poison bundle cannot sink the others.
    """
    items, batch.to_score = batch.to_score, []
    results = _predict_isolating(scorer, items)
    for item, result in zip(items, results, strict=True):
        if isinstance(result, Exception):
            batch.failures[item.job_id] = result
        else:
            batch.to_write.append((item.job_id, _row(item, result), Outcome.SCORED))
    return batch


def write_jobs(*, wctx: WorkerContext, batch: ScoringBatch) -> dict[uuid.UUID, Outcome]:
    """Step 3: store the rows set-based and finish the jobs; record the failures.

    One transaction: every prediction row of the batch in a few statements (if that
    fails, a savepoint per job); then each failed job is recorded for retry or
    dead-lettered.
    """
    outcomes = dict(batch.outcomes)
    failures = dict(batch.failures)
    now = utcnow()  # a prediction is created when it is stored
    rows = [(job_id, row | {"created_at": now}, outcome) for job_id, row, outcome in batch.to_write]
    with transaction(wctx.session_factory) as session:
        try:
            with session.begin_nested():
                finish_many(session=session, job_ids=batch.superseded)
                write_scored(
                    session,
                    [row for _, row, _ in rows],
                    [job_id for job_id, _, _ in rows],
                    bundles=batch.bundles,
                )
            outcomes.update({job_id: Outcome.SUPERSEDED for job_id in batch.superseded})
            outcomes.update({job_id: outcome for job_id, _, outcome in rows})
        except Exception:  # noqa: BLE001 - fall back to one savepoint per job
            logger.warning("batch write failed; writing %d jobs one by one", len(rows))
            for job_id in batch.superseded:
                try:
                    with session.begin_nested():
                        finish_many(session=session, job_ids=[job_id])
                    outcomes[job_id] = Outcome.SUPERSEDED
                except Exception as exc:  # noqa: BLE001 - recorded on the job, retried
                    failures[job_id] = exc
            for job_id, row, outcome in rows:
                try:
                    with session.begin_nested():
                        write_scored(session, [row], [job_id], bundles=batch.bundles)
                    outcomes[job_id] = outcome
                except Exception as exc:  # noqa: BLE001 - recorded on the job, retried
                    failures[job_id] = exc
    for job_id, error in failures.items():
        outcomes[job_id] = _record_failure(wctx, job_id, error)
    return outcomes


class ScoringStages:
    """:func:`score_jobs` in its three steps, for a pipelined :class:`DynamicBatcher`.

    Holds what the steps reuse from batch to batch: the model and a thread pool that
    decodes images.

    Args:
        wctx: the worker's context.
        scorer: the model.
        decode_threads: threads decoding images (1: decode on the step's own thread).
            Defaults to the CPU count, at most 8.
    """

    def __init__(
        self, wctx: WorkerContext, scorer: Scorer, *, decode_threads: int | None = None
    ) -> None:
        self._wctx = wctx
        self._scorer = scorer
        threads = decode_threads or min(8, os.cpu_count() or 1)
        self._pool = (
            ThreadPoolExecutor(threads, thread_name_prefix="dicom-decode") if threads > 1 else None
        )

    def prepare(self, job_ids: Sequence[uuid.UUID]) -> ScoringBatch:
        """:func:`prepare_jobs` with this worker's decode pool."""
        return prepare_jobs(wctx=self._wctx, scorer=self._scorer, job_ids=job_ids, pool=self._pool)

    def predict(self, batch: ScoringBatch) -> ScoringBatch:
        """:func:`predict_jobs`."""
        return predict_jobs(scorer=self._scorer, batch=batch)

    def write(self, batch: ScoringBatch) -> dict[uuid.UUID, Outcome]:
        """:func:`write_jobs`."""
        return write_jobs(wctx=self._wctx, batch=batch)

    def close(self) -> None:
        """Stop the decode threads (after the batcher has stopped)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)


def _predict_isolating(scorer: Scorer, items: list[_Claimed]) -> list[PredictionOutput | Exception]:
    if not items:
        return []
    try:
        inputs = [i.built.input for i in items]
        if isinstance(scorer, EncodingScorer) and all(i.encoded is not None for i in items):
            return list(scorer.predict_encoded(inputs, [i.encoded for i in items]))
        return list(scorer.predict(inputs))
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


def _insufficient_row(
    scorer: Scorer, bundle: Bundle, missing: list[str], unreadable: dict[str, str]
) -> dict[str, Any]:
    """A prediction row that says data was too thin: no probability, ever."""
    return _base_row(bundle.id, bundle.patient_id, bundle.task_id) | {
        "model_name": scorer.model_name,
        "model_version": scorer.model_version,
        "model_sha256": scorer.sha256,
        "status": PredictionStatus.INSUFFICIENT_DATA,
        "probability": None,
        "interval_low": None,
        "interval_high": None,
        "outputs": {"missing": missing, "unreadable": unreadable},
    }


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
