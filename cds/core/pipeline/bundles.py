"""Assemble bundle versions in the database; late data makes new versions.

A bundle row is never changed after it is written except for its status. When the
aligner's result for a (task, anchor lineage) differs from the newest version's content
hash, a new version is written, the older one becomes ``superseded``, and a scoring job is
created for the new one, all in the caller's transaction.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cds.core.aligner.align import AlignedBundle, Anchor, align
from cds.core.aligner.task import TaskDefinition
from cds.core.db.models import (
    Bundle,
    BundleMember,
    BundleStatus,
    EventStatus,
    TimelineEvent,
)
from cds.core.db.types import utcnow
from cds.core.pipeline.jobs import create_job
from cds.core.pipeline.timeline import load_events

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AssembleResult:
    """What :func:`assemble_bundle` did.

    Attributes:
        bundle_id: the newest version for the anchor (``None`` when the anchor is gone).
        created: a new version was written (and a job created).
        aligned: the aligner's result, when it ran.
    """

    bundle_id: uuid.UUID | None
    created: bool
    aligned: AlignedBundle | None = None


def anchor_of(event: TimelineEvent) -> Anchor:
    return Anchor(event_id=event.id, key=event.lineage_key, at=event.effective_at, kind=event.kind)


def latest_version(*, session: Session, task_id: str, anchor_key: str) -> Bundle | None:
    return session.scalar(
        select(Bundle)
        .where(Bundle.task_id == task_id, Bundle.anchor_key == anchor_key)
        .order_by(Bundle.version.desc())
        .limit(1)
    )


def assemble_bundle(
    *, session: Session, task: TaskDefinition, anchor_event_id: uuid.UUID
) -> AssembleResult:
    """Align the anchor's timeline and store a new bundle version if its content changed."""
    anchor_row = session.get(TimelineEvent, anchor_event_id)
    if anchor_row is None or anchor_row.patient_id is None:
        return AssembleResult(None, False)
    if anchor_row.status is not EventStatus.CURRENT:
        # A newer version of the anchor (a reopened study) has its own announcement.
        return AssembleResult(None, False)
    anchor = anchor_of(anchor_row)
    events = load_events(
        session=session, task=task, patient_id=anchor_row.patient_id, anchor_at=anchor.at
    )
    aligned = align(task, anchor, events)
    previous = latest_version(session=session, task_id=task.id, anchor_key=anchor.key)
    if previous is not None and previous.content_hash == aligned.content_hash:
        return AssembleResult(previous.id, False, aligned)

    bundle = Bundle(
        id=uuid.uuid4(),
        task_id=task.id,
        task_version=task.version,
        patient_id=anchor_row.patient_id,
        anchor_event_id=anchor.event_id,
        anchor_key=anchor.key,
        anchor_at=anchor.at,
        window_start=aligned.window_start,
        window_end=aligned.window_end,
        # Late data counts from when the window closes or, for a study processed after
        # its window (backfill, replay), from when the bundle was built.
        late_until=max(aligned.window_end, utcnow()) + task.late_data_grace,
        version=(previous.version + 1) if previous else 1,
        content_hash=aligned.content_hash,
        status=BundleStatus.READY if aligned.sufficient else BundleStatus.INSUFFICIENT,
        supersedes_id=previous.id if previous else None,
        missing=_missing(task, aligned),
    )
    try:
        with session.begin_nested():
            session.add(bundle)
            session.flush()
            session.add_all(
                BundleMember(
                    bundle_id=bundle.id,
                    event_id=m.event_id,
                    modality=m.modality,
                    relative_seconds=m.relative_seconds,
                )
                for m in aligned.members
            )
            session.flush()
    except IntegrityError:
        # Another process wrote this version first; its result stands.
        winner = latest_version(session=session, task_id=task.id, anchor_key=anchor.key)
        return AssembleResult(winner.id if winner else None, False, aligned)
    if previous is not None:
        previous.status = BundleStatus.SUPERSEDED
    create_job(session=session, bundle_id=bundle.id)
    logger.info(
        "bundle %s v%d for task %s: %d members%s",
        bundle.id,
        bundle.version,
        task.id,
        len(aligned.members),
        "" if aligned.sufficient else f", insufficient (missing {list(aligned.missing_required)})",
    )
    return AssembleResult(bundle.id, True, aligned)


def _missing(task: TaskDefinition, aligned: AlignedBundle) -> list[str] | None:
    """Why a bundle is insufficient, in words a reviewer can read (no patient data)."""
    if aligned.sufficient:
        return None
    reasons = list(aligned.missing_required)
    needed = task.minimum.modalities_present
    if len(aligned.present) < needed:
        reasons.append(f"at least {needed} modalities needed, {len(aligned.present)} present")
    return reasons


def open_bundles_touched(
    *,
    session: Session,
    tasks: dict[str, TaskDefinition],
    patient_id: uuid.UUID,
    effective_at: dt.datetime,
    now: dt.datetime,
) -> list[Bundle]:
    """Newest bundle versions of ``patient_id`` still open for late data whose window
    contains ``effective_at``.
    """
    rows = session.scalars(
        select(Bundle).where(
            Bundle.patient_id == patient_id,
            Bundle.late_until >= now,
            Bundle.status != BundleStatus.SUPERSEDED,
            Bundle.window_end >= effective_at,
        )
    )
    touched = []
    for bundle in rows:
        task = tasks.get(bundle.task_id)
        if task is None:
            continue
        unbounded = task.reach_before is None
        if unbounded or bundle.window_start <= effective_at:
            touched.append(bundle)
    return touched
