"""The scoring pipeline: bundle -> job -> prediction, each a state in the database."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Any

from sqlalchemy import (
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.orm import Mapped, mapped_column

from cds.core.db.base import Base
from cds.core.db.models._columns import created_at_column, str_enum, uuid_pk
from cds.core.db.types import JsonDocument, UTCDateTime


class BundleStatus(enum.StrEnum):
    """Where a bundle version stands."""

    READY = "ready"
    QUEUED = "queued"
    SCORED = "scored"
    INSUFFICIENT = "insufficient"
    SUPERSEDED = "superseded"


class JobState(enum.StrEnum):
    """A scoring job's state; ``dead`` after the configured number of failures."""

    PENDING = "pending"
    DISPATCHED = "dispatched"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    DEAD = "dead"


class PredictionStatus(enum.StrEnum):
    """A prediction's status; maps onto RiskAssessment.status (FHIR R4 ObservationStatus)."""

    FINAL = "final"
    INSUFFICIENT_DATA = "insufficient-data"
    SUPERSEDED = "superseded"
    CANCELLED = "cancelled"


class Bundle(Base):
    """A time-windowed set of timeline events around an anchor, for one prediction task.

    A bundle is immutable once written; late data makes a new ``version`` that supersedes
    the old one (``supersedes_id``). Versions are counted per task and ``anchor_key`` (the
    anchor event's lineage), so a study reopened by late instances, whose anchor event is a
    new version of the same lineage, also yields a new bundle version.

    Attributes:
        late_until: until when an event landing in the window makes a new version (the
            window's end plus the task's grace period).
        missing: required modalities that had no data (``status`` is ``insufficient``).
    """

    __tablename__ = "bundles"
    __table_args__ = (
        UniqueConstraint("task_id", "anchor_key", "version"),
        Index("ix_bundles_patient_anchor_at", "patient_id", "anchor_at"),
        Index("ix_bundles_patient_late_until", "patient_id", "late_until"),
        Index("ix_bundles_status", "status"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    task_id: Mapped[str] = mapped_column(String(64), nullable=False)
    task_version: Mapped[str] = mapped_column(String(64), nullable=False)
    patient_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("patients.id"), nullable=False)
    anchor_event_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("timeline_events.id"), nullable=False
    )
    anchor_key: Mapped[str] = mapped_column(String(512), nullable=False)
    anchor_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    window_start: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    window_end: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    content_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    status: Mapped[BundleStatus] = mapped_column(
        str_enum(BundleStatus, "bundle_status"), nullable=False, default=BundleStatus.READY
    )
    supersedes_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("bundles.id"))
    late_until: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    missing: Mapped[list[str] | None] = mapped_column(JsonDocument)
    created_at: Mapped[dt.datetime] = created_at_column()


class BundleMember(Base):
    """One event in one modality of a bundle, with its time relative to the anchor (seconds)."""

    __tablename__ = "bundle_members"

    bundle_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("bundles.id", ondelete="CASCADE"), primary_key=True
    )
    event_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("timeline_events.id"), primary_key=True, index=True
    )
    modality: Mapped[str] = mapped_column(String(32), primary_key=True)
    relative_seconds: Mapped[float] = mapped_column(Float, nullable=False)


class ScoringJob(Base):
    """The work of scoring one bundle version; at most one per bundle."""

    __tablename__ = "scoring_jobs"
    __table_args__ = (
        UniqueConstraint("bundle_id"),
        Index("ix_scoring_jobs_state_next_attempt_at", "state", "next_attempt_at"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    bundle_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("bundles.id"), nullable=False)
    state: Mapped[JobState] = mapped_column(
        str_enum(JobState, "job_state"), nullable=False, default=JobState.PENDING
    )
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    worker: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = created_at_column()
    updated_at: Mapped[dt.datetime] = created_at_column()


class Prediction(Base):
    """A model's output for one bundle version, or a record that data was too thin.

    ``probability`` is empty when ``status`` is ``insufficient-data``: the engine never
    makes up a number. ``outputs`` keeps the interval, attributions and raw model outputs.
    """

    __tablename__ = "predictions"
    __table_args__ = (
        UniqueConstraint("bundle_id", "model_version"),
        Index("ix_predictions_patient_created_at", "patient_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    bundle_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("bundles.id"), nullable=False)
    patient_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("patients.id"), nullable=False)
    task_id: Mapped[str] = mapped_column(String(64), nullable=False)
    model_name: Mapped[str] = mapped_column(String(128), nullable=False)
    model_version: Mapped[str] = mapped_column(String(64), nullable=False)
    model_sha256: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[PredictionStatus] = mapped_column(
        str_enum(PredictionStatus, "prediction_status"), nullable=False
    )
    probability: Mapped[float | None] = mapped_column(Float)
    interval_low: Mapped[float | None] = mapped_column(Float)
    interval_high: Mapped[float | None] = mapped_column(Float)
    outputs: Mapped[dict[str, Any] | None] = mapped_column(JsonDocument)
    superseded_by_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("predictions.id"))
    created_at: Mapped[dt.datetime] = created_at_column()
