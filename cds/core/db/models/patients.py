"""Patients and their identifiers across DICOM, HL7v2 and FHIR."""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import ForeignKey, String, UniqueConstraint, Uuid
from sqlalchemy.orm import Mapped, mapped_column, relationship

from cds.core.db.base import Base
from cds.core.db.models._columns import created_at_column, uuid_pk
from cds.core.db.types import UTCDateTime


class Patient(Base):
    """One person on the timeline.

    A patient merged into another (HL7 ADT^A40, FHIR Patient.link replaced-by) keeps its row
    with ``merged_into_id`` set; its events are re-pointed to the survivor and the merge is
    recorded in ``patient_merges``.
    """

    __tablename__ = "patients"

    id: Mapped[uuid.UUID] = uuid_pk()
    created_at: Mapped[dt.datetime] = created_at_column()
    merged_into_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("patients.id"), index=True
    )

    identifiers: Mapped[list[PatientIdentifier]] = relationship(
        back_populates="patient", cascade="all, delete-orphan"
    )


class PatientIdentifier(Base):
    """An identifier of a patient in one namespace.

    ``system`` is the canonical namespace after the configured issuer mapping: a FHIR
    ``Patient.identifier.system`` URI, an HL7 PID-3 assigning authority, or a DICOM
    IssuerOfPatientID all map to the same string when they name the same register. An
    identifier belongs to exactly one patient (unique ``system`` + ``value``).
    """

    __tablename__ = "patient_identifiers"
    __table_args__ = (UniqueConstraint("system", "value"),)

    id: Mapped[uuid.UUID] = uuid_pk()
    patient_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("patients.id"), nullable=False, index=True
    )
    system: Mapped[str] = mapped_column(String(255), nullable=False)
    value: Mapped[str] = mapped_column(String(255), nullable=False)
    type_code: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[dt.datetime] = created_at_column()

    patient: Mapped[Patient] = relationship(back_populates="identifiers")


class PatientMerge(Base):
    """A recorded merge of one patient's timeline into another's (never silently undone)."""

    __tablename__ = "patient_merges"

    id: Mapped[uuid.UUID] = uuid_pk()
    surviving_patient_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("patients.id"), nullable=False, index=True
    )
    merged_patient_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("patients.id"), nullable=False, index=True
    )
    source_item_id: Mapped[uuid.UUID | None] = mapped_column(Uuid, ForeignKey("source_items.id"))
    merged_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
