"""The scoring-job state machine.

::

    pending --dispatch--> dispatched --claim--> running --finish--> done
    running --fail--> failed --(backoff, sweep)--> dispatched
    running --fail, N attempts--> dead
    dispatched/running --(lease expired: worker or broker lost, sweep)--> dispatched

Every transition is a row update; the broker only carries job ids. A job is idempotent:
the prediction is unique per (bundle, model version), so scoring the same bundle version
twice gives one prediction.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from cds.core.db.models import ScoringJob
from cds.core.db.models.pipeline import JobState
from cds.core.db.types import utcnow
from cds.core.repository.outbox import enqueue

TOPIC_SCORING = "scoring.job"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries of failed jobs.

    Attributes:
        max_attempts: after this many failed attempts the job is dead. Defaults to 5.
        base_delay_s: delay after the first failure, doubled each time. Defaults to 2 s.
        max_delay_s: cap on the delay. Defaults to 300 s.
        lease_s: a dispatched or running job untouched this long is taken for lost and
            dispatched again. Defaults to 120 s.
    """

    max_attempts: int = 5
    base_delay_s: float = 2.0
    max_delay_s: float = 300.0
    lease_s: float = 120.0

    def delay(self, attempts: int) -> dt.timedelta:
        return dt.timedelta(
            seconds=min(self.max_delay_s, self.base_delay_s * 2 ** max(0, attempts - 1))
        )


def _announce(session: Session, job: ScoringJob) -> None:
    enqueue(
        session=session,
        topic=TOPIC_SCORING,
        dedup_key=f"job|{job.id}|{job.attempts}|{job.updated_at.isoformat()}",
        aggregate_id=job.id,
        payload={"job_id": str(job.id), "bundle_id": str(job.bundle_id)},
    )


def create_job(*, session: Session, bundle_id: uuid.UUID) -> ScoringJob:
    """A pending job for a new bundle version, announced on the outbox."""
    now = utcnow()
    job = ScoringJob(
        id=uuid.uuid4(),
        bundle_id=bundle_id,
        state=JobState.PENDING,
        created_at=now,
        updated_at=now,
        next_attempt_at=now,
    )
    session.add(job)
    session.flush()
    _announce(session, job)
    return job


def mark_dispatched(*, session: Session, job_id: uuid.UUID) -> None:
    job = session.get(ScoringJob, job_id, with_for_update=True)
    if job is not None and job.state in (JobState.PENDING, JobState.FAILED, JobState.DISPATCHED):
        job.state = JobState.DISPATCHED
        job.updated_at = utcnow()


def claim_many(
    *, session: Session, job_ids: list[uuid.UUID], worker: str, policy: RetryPolicy
) -> dict[uuid.UUID, uuid.UUID]:
    """Claim a batch of jobs in one statement; returns job id -> bundle id of those taken.

    Finished and dead jobs, and running jobs whose lease has not expired (a duplicate
    delivery), are left alone; a concurrent claimer waits on the row lock and then sees
    them running.
    """
    if not job_ids:
        return {}
    now = utcnow()
    stale = now - dt.timedelta(seconds=policy.lease_s)
    claimable = ScoringJob.state.in_([JobState.PENDING, JobState.DISPATCHED, JobState.FAILED]) | (
        (ScoringJob.state == JobState.RUNNING) & (ScoringJob.updated_at <= stale)
    )
    rows = session.execute(
        update(ScoringJob)
        .where(ScoringJob.id.in_(job_ids), claimable)
        .values(
            state=JobState.RUNNING, attempts=ScoringJob.attempts + 1, worker=worker, updated_at=now
        )
        .returning(ScoringJob.id, ScoringJob.bundle_id)
        .execution_options(synchronize_session=False)
    ).all()
    return {job_id: bundle_id for job_id, bundle_id in rows}


def finish_many(*, session: Session, job_ids: list[uuid.UUID]) -> None:
    """Mark running jobs done, in one statement."""
    if job_ids:
        session.execute(
            update(ScoringJob)
            .where(ScoringJob.id.in_(job_ids), ScoringJob.state == JobState.RUNNING)
            .values(state=JobState.DONE, last_error=None, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )


def fail(*, session: Session, job_id: uuid.UUID, error: str, policy: RetryPolicy) -> JobState:
    """Record a failed attempt: retry later with backoff, or dead-letter it.

    Args:
        error: a short description without patient data (an exception type, a status).
    """
    job = session.get(ScoringJob, job_id, with_for_update=True)
    if job is None or job.state in (JobState.DONE, JobState.DEAD):
        return job.state if job else JobState.DEAD
    now = utcnow()
    job.last_error = error[:500]
    job.updated_at = now
    if job.attempts >= policy.max_attempts:
        job.state = JobState.DEAD
    else:
        job.state = JobState.FAILED
        job.next_attempt_at = now + policy.delay(job.attempts)
    return job.state


def sweep(*, session: Session, policy: RetryPolicy, limit: int = 500) -> int:
    """Dispatch again what is due: failed jobs past their backoff, and jobs whose
    dispatch or run went silent for a lease (a lost worker, a restart, a broker outage).

    Returns:
        the number of jobs re-announced.
    """
    now = utcnow()
    stale = now - dt.timedelta(seconds=policy.lease_s)
    due = session.scalars(
        select(ScoringJob)
        .where(
            or_(
                (ScoringJob.state == JobState.FAILED) & (ScoringJob.next_attempt_at <= now),
                ScoringJob.state.in_([JobState.DISPATCHED, JobState.RUNNING, JobState.PENDING])
                & (ScoringJob.updated_at <= stale),
            )
        )
        .order_by(ScoringJob.updated_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    ).all()
    for job in due:
        if job.state is JobState.RUNNING and job.attempts >= policy.max_attempts:
            job.state = JobState.DEAD
            job.last_error = "lease expired on the last attempt (worker lost)"
            job.updated_at = now
            continue
        job.state = JobState.DISPATCHED
        job.updated_at = now
        _announce(session, job)
    return len(due)
