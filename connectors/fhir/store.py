"""Ingesting FHIR resources in the caller's transaction (shared by notifications and backfill).

Policy for a re-sent version with different bytes (same ``Type/id`` and ``meta.versionId``):
the first stored content is kept and the resend is counted as a conflict, never an error,
because servers may re-serialise a version (element order, narrative) without changing it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cds.core.clinical import ItemIn
from cds.core.db.models import EventKind, ImagingStudy, TimelineEvent
from cds.core.errors import ConflictError
from cds.core.repository.ingest import ingest_item

logger = logging.getLogger(__name__)


@dataclass
class Counts:
    """What one notification did to the timeline."""

    stored: int = 0
    duplicates: int = 0
    ignored: int = 0
    conflicts: int = 0
    event_ids: list[Any] = field(default_factory=list)

    def describe(self) -> str:
        return f"{self.stored} stored, {self.duplicates} duplicate, {self.ignored} ignored" + (
            f", {self.conflicts} conflicting version kept as first received"
            if self.conflicts
            else ""
        )


def ingest_items(
    *,
    session: Session,
    items: Sequence[ItemIn],
    counts: Counts,
    issuer_map: Mapping[str, str] | None,
) -> None:
    """Ingest ``items`` in the caller's transaction, adding to ``counts``."""
    for item in items:
        try:
            result = ingest_item(session=session, item=item, issuer_map=issuer_map)
        except ConflictError:
            counts.conflicts += 1
            logger.warning("FHIR version re-sent with different content: first kept")
            continue
        if result.duplicate:
            counts.duplicates += 1
            continue
        counts.stored += 1
        counts.event_ids.extend(result.event_ids)
        _link_imaging(session, item, result.event_ids)


def _link_imaging(session: Session, item: ItemIn, event_ids: Sequence[Any]) -> None:
    """Point an ImagingStudy event at the DICOM study of the same StudyInstanceUID."""
    if not item.source.item_id.startswith("ImagingStudy/") or not event_ids:
        return
    for event in item.events:
        uid = (event.details or {}).get("StudyInstanceUID")
        if event.kind is EventKind.IMAGING_STUDY and uid:
            study_id = session.scalar(
                select(ImagingStudy.id).where(ImagingStudy.StudyInstanceUID == uid)
            )
            if study_id is not None:
                session.execute(
                    update(TimelineEvent)
                    .where(TimelineEvent.id.in_(list(event_ids)))
                    .values(imaging_study_id=study_id)
                )
