"""DICOM connector tables beyond the shared hierarchy in :mod:`.imaging`."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import ForeignKey, Integer, String, UniqueConstraint, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from cds.core.db.base import Base
from cds.core.db.models._columns import uuid_pk
from cds.core.db.types import UTCDateTime


class DicomStudyVersion(Base):
    """One receiving period of a study: version 1 from its first instance, and one more
    each time instances arrive after the study was complete (stable-study detection).

    ``started_at`` bounds the version by the hard cap (``CDSFUSION_DICOM_STUDY_HARD_CAP_S``);
    ``completed_at``, ``routing_rule`` and ``event_id`` record how it was completed and
    which anchor event announced it, so every version of a study stays traceable.
    """

    __tablename__ = "dicom_study_versions"
    __table_args__ = (UniqueConstraint("study_id", "version"),)

    id: Mapped[uuid.UUID] = uuid_pk()
    study_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("imaging_studies.id"), nullable=False
    )
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    started_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    completed_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    routing_rule: Mapped[str | None] = mapped_column(String(128))
    event_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("timeline_events.id"))
