"""Timeline events: the clinical facts the aligner windows around an anchor."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Any

from sqlalchemy import Float, ForeignKey, Index, String, Text, UniqueConstraint, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from cds.core.db.base import Base
from cds.core.db.models._columns import created_at_column, str_enum, uuid_pk
from cds.core.db.types import JsonDocument, UTCDateTime


class EventKind(enum.StrEnum):
    """What a timeline event is; the aligner's modalities are built from these."""

    OBSERVATION = "observation"
    NOTE = "note"
    IMAGING_STUDY = "imaging-study"
    ENCOUNTER = "encounter"
    DEMOGRAPHICS = "demographics"
    DIAGNOSTIC_REPORT = "diagnostic-report"
    #: An anchor that is not clinical data: a CDS Hooks call or a scheduled assessment.
    TRIGGER = "trigger"


class EventStatus(enum.StrEnum):
    """Lifecycle of an event: a newer version supersedes, a deletion retracts."""

    CURRENT = "current"
    SUPERSEDED = "superseded"
    RETRACTED = "retracted"


class TimelineEvent(Base):
    """A clinical event on a patient's timeline, derived from one source item.

    Attributes:
        event_key: identifies the event within its source item (an OBX set id, a FHIR
            component index); unique with ``source_item_id``, so re-ingesting the same item
            cannot add events twice.
        lineage_key: stable across versions of the same logical fact (e.g. FHIR
            ``Observation/123`` or ``HL7|LAB|ORDER42|OBX-1``). When a newer version arrives
            the older event becomes ``superseded`` and points at its successor; history is
            kept, nothing is overwritten.
        effective_at: clinically relevant time (observation effective time, study time,
            note authored time), timezone-aware UTC.
        category: e.g. ``laboratory`` / ``vital-signs`` for observations.
        code_system, code, display: the coded concept (LOINC for observations).
        value_num, value_text, unit: the value; ``unit`` is UCUM where the source gives it.
        details: kind-specific extras as JSON (components, reference ranges, ...).
    """

    __tablename__ = "timeline_events"
    __table_args__ = (
        UniqueConstraint("source_item_id", "event_key"),
        # The aligner's query: one patient, one kind, a time range, current events only.
        Index("ix_timeline_events_patient_kind_time", "patient_id", "kind", "effective_at"),
        Index("ix_timeline_events_lineage", "lineage_key", "status"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    patient_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("patients.id"))
    source_item_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("source_items.id"), nullable=False
    )
    event_key: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    lineage_key: Mapped[str] = mapped_column(String(512), nullable=False)
    kind: Mapped[EventKind] = mapped_column(str_enum(EventKind, "event_kind"), nullable=False)
    status: Mapped[EventStatus] = mapped_column(
        str_enum(EventStatus, "event_status"), nullable=False, default=EventStatus.CURRENT
    )
    superseded_by_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("timeline_events.id")
    )
    effective_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    effective_end: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    category: Mapped[str | None] = mapped_column(String(64))
    code_system: Mapped[str | None] = mapped_column(String(255))
    code: Mapped[str | None] = mapped_column(String(64))
    display: Mapped[str | None] = mapped_column(String(255))
    value_num: Mapped[float | None] = mapped_column(Float)
    value_text: Mapped[str | None] = mapped_column(Text)
    unit: Mapped[str | None] = mapped_column(String(64))
    imaging_study_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("imaging_studies.id"), index=True
    )
    details: Mapped[dict[str, Any] | None] = mapped_column(JsonDocument)
    created_at: Mapped[dt.datetime] = created_at_column()
