"""Outbox topic handlers that run inside the relay's transaction."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from cds.core.aligner.task import TaskDefinition
from cds.core.db.models import EventStatus, OutboxMessage, TimelineEvent
from cds.core.db.types import utcnow
from cds.core.pipeline.anchors import anchored_tasks
from cds.core.pipeline.bundles import assemble_bundle, open_bundles_touched
from cds.core.pipeline.jobs import mark_dispatched

logger = logging.getLogger(__name__)

Handler = Callable[[Session, OutboxMessage], None]


def timeline_handler(tasks: dict[str, TaskDefinition]) -> Handler:
    """Handle ``timeline.events``: new anchors get bundles; late data makes new versions."""

    def handle(session: Session, message: OutboxMessage) -> None:
        ids = [uuid.UUID(e) for e in message.payload.get("event_ids", [])]
        events = list(session.scalars(select(TimelineEvent).where(TimelineEvent.id.in_(ids))))
        now = utcnow()
        reassemble: dict[tuple[str, uuid.UUID], None] = {}
        for event in events:
            if event.patient_id is None:
                continue
            if event.status is EventStatus.CURRENT:
                for task in anchored_tasks(
                    tasks.values(), kind=event.kind, code=event.code, details=event.details
                ):
                    reassemble[(task.id, event.id)] = None
            for bundle in open_bundles_touched(
                session=session,
                tasks=tasks,
                patient_id=event.patient_id,
                effective_at=event.effective_at,
                now=now,
            ):
                reassemble[(bundle.task_id, bundle.anchor_event_id)] = None
        for task_id, anchor_event_id in reassemble:
            assemble_bundle(session=session, task=tasks[task_id], anchor_event_id=anchor_event_id)

    return handle


def scoring_handler(dispatch: Callable[[uuid.UUID], None]) -> Handler:
    """Handle ``scoring.job``: hand the job id to the workers (in-process or broker)."""

    def handle(session: Session, message: OutboxMessage) -> None:
        job_id = uuid.UUID(message.payload["job_id"])
        mark_dispatched(session=session, job_id=job_id)
        session.flush()
        dispatch(job_id)

    return handle
