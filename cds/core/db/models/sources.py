"""Source items: every accepted inbound item, with its provenance."""

from __future__ import annotations

import datetime as dt
import enum
import uuid

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Index,
    LargeBinary,
    String,
    UniqueConstraint,
    Uuid,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from cds.core.db.base import Base
from cds.core.db.models._columns import str_enum, uuid_pk
from cds.core.db.types import UTCDateTime


class Protocol(enum.StrEnum):
    """The wire a source item arrived on."""

    DICOM = "dicom"
    HL7V2 = "hl7v2"
    FHIR = "fhir"
    INTERNAL = "internal"


class SourceItem(Base):
    """One accepted inbound item: a DICOM instance, an HL7v2 message, a FHIR resource version.

    Deduplication is this table's unique constraint on (``protocol``, ``namespace``,
    ``item_id``, ``item_version``):

    * DICOM: namespace ``""``, item_id the SOPInstanceUID (globally unique by PS3.5 §9),
      item_version ``""``.
    * HL7v2: namespace the sending application and facility (MSH-3^MSH-4), item_id the
      message control id MSH-10, item_version ``""``: a retransmission is the same item.
    * FHIR: namespace the server base URL, item_id ``Type/id``, item_version the
      ``meta.versionId`` (or the content hash when the server gives none).

    ``patient_id`` is empty while the item's patient is not known yet (the item is held and
    attached when the patient appears). ``payload`` keeps HL7 and FHIR bodies for
    provenance and replay; DICOM files live in the content-addressed store
    (``storage_key``), never in the database.
    """

    __tablename__ = "source_items"
    __table_args__ = (
        UniqueConstraint("protocol", "namespace", "item_id", "item_version"),
        Index("ix_source_items_received_at", "received_at"),
        # Items waiting for their patient, found by the reference they wait under.
        Index(
            "ix_source_items_held",
            "patient_ref",
            postgresql_where=text("patient_id IS NULL"),
            sqlite_where=text("patient_id IS NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    protocol: Mapped[Protocol] = mapped_column(str_enum(Protocol, "protocol"), nullable=False)
    namespace: Mapped[str] = mapped_column(String(255), nullable=False, default="")
    item_id: Mapped[str] = mapped_column(String(255), nullable=False)
    item_version: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    sender: Mapped[str] = mapped_column(String(255), nullable=False, default="")
    content_type: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    content_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    storage_key: Mapped[str | None] = mapped_column(String(255))
    payload: Mapped[bytes | None] = mapped_column(LargeBinary)
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    patient_id: Mapped[uuid.UUID | None] = mapped_column(
        Uuid, ForeignKey("patients.id"), index=True
    )
    patient_ref: Mapped[str | None] = mapped_column(String(512))
