"""The DICOM hierarchy: study, series, instance (PS3.3 A.1.2 information model)."""

from __future__ import annotations

import datetime as dt
import enum
import uuid

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from cds.core.db.base import Base
from cds.core.db.models._columns import str_enum, uuid_pk
from cds.core.db.types import UTCDateTime


class StudyState(enum.StrEnum):
    """Stable-study detection: a study receives instances until a quiet period passes."""

    RECEIVING = "receiving"
    COMPLETE = "complete"


class ImagingStudy(Base):
    """A DICOM study. ``version`` grows when instances arrive after completion.

    ``completes_at`` is when the study counts as complete if nothing else arrives (the last
    instance time plus the quiet period, capped by the hard limit); kept in the database so
    stable-study detection survives restarts and is shared by every receiver process.
    """

    __tablename__ = "imaging_studies"
    __table_args__ = (Index("ix_imaging_studies_state_completes_at", "state", "completes_at"),)

    id: Mapped[uuid.UUID] = uuid_pk()
    StudyInstanceUID: Mapped[str] = mapped_column(
        "study_instance_uid", String(64), nullable=False, unique=True
    )
    patient_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("patients.id"), index=True
    )
    AccessionNumber: Mapped[str | None] = mapped_column("accession_number", String(64))
    study_datetime: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    StudyDescription: Mapped[str | None] = mapped_column("study_description", String(255))
    state: Mapped[StudyState] = mapped_column(
        str_enum(StudyState, "study_state"), nullable=False, default=StudyState.RECEIVING
    )
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    first_received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    last_received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    completes_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    completed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class ImagingSeries(Base):
    """A DICOM series within a study."""

    __tablename__ = "imaging_series"

    id: Mapped[uuid.UUID] = uuid_pk()
    study_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("imaging_studies.id"), nullable=False, index=True
    )
    SeriesInstanceUID: Mapped[str] = mapped_column(
        "series_instance_uid", String(64), nullable=False, unique=True
    )
    Modality: Mapped[str | None] = mapped_column("modality", String(16))
    BodyPartExamined: Mapped[str | None] = mapped_column("body_part_examined", String(64))
    SeriesNumber: Mapped[int | None] = mapped_column("series_number", Integer)
    SeriesDescription: Mapped[str | None] = mapped_column("series_description", String(255))


class ImagingInstance(Base):
    """A stored DICOM SOP instance; the file lives in the content-addressed store."""

    __tablename__ = "imaging_instances"

    id: Mapped[uuid.UUID] = uuid_pk()
    series_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("imaging_series.id"), nullable=False, index=True
    )
    source_item_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("source_items.id"), nullable=False, unique=True
    )
    SOPInstanceUID: Mapped[str] = mapped_column(
        "sop_instance_uid", String(64), nullable=False, unique=True
    )
    SOPClassUID: Mapped[str] = mapped_column("sop_class_uid", String(64), nullable=False)
    TransferSyntaxUID: Mapped[str] = mapped_column(
        "transfer_syntax_uid", String(64), nullable=False
    )
    InstanceNumber: Mapped[int | None] = mapped_column("instance_number", Integer)
    ViewPosition: Mapped[str | None] = mapped_column("view_position", String(16))
    storage_key: Mapped[str] = mapped_column(String(255), nullable=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
