"""The aligner's queries: one patient, one event kind, a time range, current events.

Each modality is one query served by ``ix_timeline_events_patient_kind_time``; nothing
scans more than the patient's events of that kind inside the window.
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import Select, select, union_all
from sqlalchemy.orm import Session

from cds.core.aligner.align import EventView
from cds.core.aligner.task import ModalitySpec, TaskDefinition
from cds.core.db.models import EventKind, EventStatus, TimelineEvent

_COLUMNS = (
    TimelineEvent.id,
    TimelineEvent.kind,
    TimelineEvent.effective_at,
    TimelineEvent.category,
    TimelineEvent.code_system,
    TimelineEvent.code,
)


def modality_query(
    spec: ModalitySpec, *, patient_id: uuid.UUID, anchor_at: dt.datetime
) -> Select[uuid.UUID, EventKind, dt.datetime, str | None, str | None, str | None]:
    """The SQL for one timeline modality's candidates (see :func:`align.candidates`)."""
    assert spec.window is not None
    query = select(*_COLUMNS).where(
        TimelineEvent.patient_id == patient_id,
        TimelineEvent.kind == spec.kind,
        TimelineEvent.status == EventStatus.CURRENT,
        TimelineEvent.effective_at <= anchor_at + spec.window.end,
    )
    if spec.window.start is not None:
        query = query.where(TimelineEvent.effective_at >= anchor_at + spec.window.start)
    if spec.category is not None:
        query = query.where(TimelineEvent.category == spec.category)
    if spec.codes:
        query = query.where(
            TimelineEvent.code_system == spec.code_system, TimelineEvent.code.in_(spec.codes)
        )
    if spec.selection.mode == "latest":
        # Same tie-break as the pure aligner: time, then id (uuid order = hex string order).
        query = query.order_by(TimelineEvent.effective_at.desc(), TimelineEvent.id.desc()).limit(1)
    return query


def load_events(
    *, session: Session, task: TaskDefinition, patient_id: uuid.UUID, anchor_at: dt.datetime
) -> list[EventView]:
    """The patient's current events that any of ``task``'s modalities may take.

    One round trip: the modality queries joined with UNION ALL, each still served by the
    (patient, kind, time) index.
    """
    queries = [
        modality_query(spec, patient_id=patient_id, anchor_at=anchor_at).subquery().select()
        for spec in task.modalities.values()
        if spec.source == "timeline"
    ]
    if not queries:
        return []
    found: dict[uuid.UUID, EventView] = {}
    statement = queries[0] if len(queries) == 1 else union_all(*queries)
    for row in session.execute(statement):
        found[row.id] = EventView(
            id=row.id,
            kind=EventKind(row.kind),
            effective_at=row.effective_at,
            category=row.category,
            code_system=row.code_system,
            code=row.code,
        )
    return list(found.values())
