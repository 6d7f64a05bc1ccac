"""Writing to the transactional outbox (delivery is the pipeline's relay)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy.orm import Session

from cds.core.db.models import OutboxMessage, OutboxState
from cds.core.db.types import utcnow
from cds.core.db.upsert import insert_ignoring_conflicts

#: Topic announcing events newly placed on a patient's timeline (anchors and late data).
TOPIC_TIMELINE = "timeline.events"
#: Topic announcing a new or superseded prediction (FHIR RiskAssessment delivery).
TOPIC_PREDICTION = "prediction.changed"


def enqueue(
    *,
    session: Session,
    topic: str,
    dedup_key: str,
    payload: dict[str, Any],
    aggregate_id: uuid.UUID | None = None,
    not_before: dt.datetime | None = None,
) -> bool:
    """Add a message in the caller's transaction; a repeated ``dedup_key`` is a no-op.

    Returns:
        True when a new message was written.
    """
    written = session.execute(
        insert_ignoring_conflicts(session, OutboxMessage, ["dedup_key"])
        .values(
            id=uuid.uuid4(),
            topic=topic,
            dedup_key=dedup_key,
            aggregate_id=aggregate_id,
            payload=payload,
            state=OutboxState.PENDING,
            attempts=0,
            next_attempt_at=not_before or utcnow(),
            created_at=utcnow(),
        )
        .returning(OutboxMessage.id)
    ).first()
    return written is not None


def announce_events(
    *,
    session: Session,
    patient_id: uuid.UUID,
    event_ids: list[uuid.UUID] | tuple[uuid.UUID, ...],
    dedup_key: str,
) -> None:
    """Tell the aligner that events landed on ``patient_id``'s timeline."""
    if not event_ids:
        return
    enqueue(
        session=session,
        topic=TOPIC_TIMELINE,
        dedup_key=dedup_key,
        aggregate_id=patient_id,
        payload={"patient_id": str(patient_id), "event_ids": [str(e) for e in event_ids]},
    )
