"""Wire-independent clinical items: what every connector's normalizer produces.

A connector turns its wire format (DICOM dataset, HL7v2 message, FHIR resource) into one
:class:`SourceItemIn` (the item and its provenance), the patient identifiers it names and the
:class:`EventIn` facts it carries, then calls :func:`cds.core.repository.ingest.ingest_item`.
Values here are plain and immutable so normalizers are pure and easy to property-test.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import uuid
from dataclasses import dataclass, field
from typing import Any

from cds.core.db.models import EventKind, Protocol


@dataclass(frozen=True, slots=True)
class IdentifierIn:
    """A patient identifier as the source gives it, before issuer mapping.

    Attributes:
        system: FHIR ``Identifier.system``, HL7 PID-3.4 assigning authority, or DICOM
            IssuerOfPatientID (empty when the source names none).
        value: the identifier value (an MRN: PHI, never logged).
        type_code: e.g. ``MR`` (HL7 table 0203), when known.
    """

    system: str
    value: str
    type_code: str | None = None


@dataclass(frozen=True, slots=True)
class SourceItemIn:
    """One inbound item and its provenance. See :class:`cds.core.db.models.SourceItem`."""

    protocol: Protocol
    namespace: str
    item_id: str
    content_sha256: str
    received_at: dt.datetime
    item_version: str = ""
    sender: str = ""
    content_type: str = ""
    size_bytes: int = 0
    storage_key: str | None = None
    payload: bytes | None = None

    @staticmethod
    def sha256(data: bytes) -> str:
        """Hex sha256 of the item's bytes (the dedup fingerprint)."""
        return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class EventIn:
    """A clinical fact to place on the timeline. See :class:`cds.core.db.models.TimelineEvent`.

    ``lineage_key`` must be the same for every version of the same logical fact, so that a
    newer version supersedes the older one (history is kept).
    """

    kind: EventKind
    lineage_key: str
    effective_at: dt.datetime
    event_key: str = ""
    effective_end: dt.datetime | None = None
    category: str | None = None
    code_system: str | None = None
    code: str | None = None
    display: str | None = None
    value_num: float | None = None
    value_text: str | None = None
    unit: str | None = None
    details: dict[str, Any] | None = None
    retracts: bool = False

    def __post_init__(self) -> None:
        if self.effective_at.tzinfo is None:
            raise ValueError("EventIn.effective_at must be timezone-aware")


@dataclass(frozen=True, slots=True)
class ItemIn:
    """Everything a connector hands to ingest for one item.

    Attributes:
        source: the item and its provenance.
        identifiers: the patient identifiers it names (resolved to one patient).
        patient_ref: a reference to a patient the engine may not know yet (e.g. a FHIR
            ``Patient/123`` key); with no known identifier the item is held under this key.
        events: the clinical facts it carries.
        patient_id: the engine's own patient id, for internal items (triggers) about a
            patient already on the timeline; connectors leave it empty.
    """

    source: SourceItemIn
    identifiers: tuple[IdentifierIn, ...] = ()
    patient_ref: str | None = None
    events: tuple[EventIn, ...] = field(default_factory=tuple)
    patient_id: uuid.UUID | None = None
