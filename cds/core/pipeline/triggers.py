"""Anchors that are not clinical data: a CDS Hooks call, a scheduled assessment.

A trigger is an internal source item with one ``trigger`` event naming its task, placed on
the patient's timeline like any other item, so the aligner builds its bundle through the
same outbox path. One trigger per (task, patient, period): the source item's unique key
makes repeated hook calls or several schedulers in several processes create it once.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import uuid

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from cds.core.aligner.task import TaskDefinition
from cds.core.clinical import EventIn, ItemIn, SourceItemIn
from cds.core.db.models import EventKind, EventStatus, Protocol, TimelineEvent
from cds.core.db.session import transaction
from cds.core.db.types import utcnow
from cds.core.repository.ingest import IngestResult, ingest_item
from cds.core.runtime import EngineContext

logger = logging.getLogger(__name__)

#: How often a CDS Hooks call may start a new assessment for the same patient and task.
CDS_HOOKS_PERIOD = dt.timedelta(hours=1)


def slot_of(at: dt.datetime, period: dt.timedelta) -> int:
    """The index of the period ``at`` falls in (periods counted from the epoch, UTC)."""
    return int(at.timestamp() // period.total_seconds())


def record_trigger(
    *,
    session: Session,
    task: TaskDefinition,
    patient_id: uuid.UUID,
    reason: str,
    at: dt.datetime,
    period: dt.timedelta,
) -> IngestResult:
    """Anchor ``task`` for ``patient_id`` now, once per ``period``.

    Args:
        reason: ``cds-hooks`` or ``schedule`` (kept on the event for the review page).
    """
    slot = slot_of(at, period)
    item_id = f"{task.id}|{patient_id}|{slot}"
    return ingest_item(
        session=session,
        item=ItemIn(
            source=SourceItemIn(
                protocol=Protocol.INTERNAL,
                namespace="trigger",
                item_id=item_id,
                content_sha256=SourceItemIn.sha256(item_id.encode()),
                received_at=at,
                sender=reason,
            ),
            patient_id=patient_id,
            events=(
                EventIn(
                    kind=EventKind.TRIGGER,
                    lineage_key=f"trigger|{task.id}|{patient_id}",
                    event_key="trigger",
                    effective_at=at,
                    details={"task": task.id, "reason": reason, "slot": slot},
                ),
            ),
        ),
    )


def patients_with_open_encounters(*, session: Session, now: dt.datetime) -> list[uuid.UUID]:
    """Patients with a current encounter that has started and not ended."""
    return list(
        session.scalars(
            select(TimelineEvent.patient_id)
            .where(
                TimelineEvent.kind == EventKind.ENCOUNTER,
                TimelineEvent.status == EventStatus.CURRENT,
                TimelineEvent.patient_id.is_not(None),
                TimelineEvent.effective_at <= now,
                or_(TimelineEvent.effective_end.is_(None), TimelineEvent.effective_end > now),
            )
            .distinct()
        )
    )


def tick_schedules(*, session: Session, tasks: list[TaskDefinition], now: dt.datetime) -> int:
    """Create this period's triggers for every scheduled task; returns how many were new."""
    created = 0
    patients = patients_with_open_encounters(session=session, now=now) if tasks else []
    for task in tasks:
        assert task.anchor.every is not None
        for patient_id in patients:
            result = record_trigger(
                session=session,
                task=task,
                patient_id=patient_id,
                reason="schedule",
                at=now,
                period=task.anchor.every,
            )
            created += 0 if result.duplicate else 1
    return created


class ScheduleTicker:
    """Runs :func:`tick_schedules` every ``interval_s`` (tasks with ``anchor.kind: schedule``)."""

    name = "schedule-ticker"

    def __init__(
        self, ctx: EngineContext, tasks: list[TaskDefinition], *, interval_s: float = 30.0
    ) -> None:
        self._ctx = ctx
        self._tasks = tasks
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with transaction(self._ctx.session_factory) as session:
                    created = tick_schedules(session=session, tasks=self._tasks, now=utcnow())
                if created:
                    logger.info("scheduled assessments: %d new triggers", created)
            except Exception as exc:  # noqa: BLE001 - try again next period
                logger.error("schedule tick failed: %s", type(exc).__name__)
            self._stop.wait(self._interval)
