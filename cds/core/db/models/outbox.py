"""The transactional outbox: outbound work written with the change that causes it."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Any

from sqlalchemy import Index, Integer, String, Text, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from cds.core.db.base import Base
from cds.core.db.models._columns import created_at_column, str_enum, uuid_pk
from cds.core.db.types import JsonDocument, UTCDateTime


class OutboxState(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    DEAD = "dead"


class OutboxMessage(Base):
    """A delivery to make: a scoring job to hand to the broker, a resource to PUT upstream.

    ``dedup_key`` is unique, so the same delivery cannot be enqueued twice. A relay reads
    pending rows whose ``next_attempt_at`` has passed, delivers, and marks them delivered;
    failures back off and end ``dead`` after the configured number of attempts, visible in
    the database.
    """

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_state_next_attempt_at", "state", "next_attempt_at"),)

    id: Mapped[uuid.UUID] = uuid_pk()
    topic: Mapped[str] = mapped_column(String(64), nullable=False)
    dedup_key: Mapped[str] = mapped_column(String(255), nullable=False, unique=True)
    aggregate_id: Mapped[uuid.UUID | None] = mapped_column(Uuid)
    payload: Mapped[dict[str, Any]] = mapped_column(JsonDocument, nullable=False)
    state: Mapped[OutboxState] = mapped_column(
        str_enum(OutboxState, "outbox_state"), nullable=False, default=OutboxState.PENDING
    )
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = created_at_column()
    delivered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
