"""Writing to the transactional outbox (delivery is the pipeline's relay)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cds.core.db.models import OutboxMessage
from cds.core.db.types import utcnow

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
    if session.scalar(select(OutboxMessage.id).where(OutboxMessage.dedup_key == dedup_key)):
        return False
    try:
        with session.begin_nested():
            session.add(
                OutboxMessage(
                    topic=topic,
                    dedup_key=dedup_key,
                    aggregate_id=aggregate_id,
                    payload=payload,
                    next_attempt_at=not_before or utcnow(),
                )
            )
    except IntegrityError:
        return False
    return True


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
