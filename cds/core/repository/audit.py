"""The hash-chained audit log: append and verify.

Each entry's hash covers the previous entry's hash and this entry's canonical content
(sorted-key JSON), so an edited, inserted or deleted row breaks the chain at that point.
Appends are serialised (a PostgreSQL advisory lock; SQLite's single writer) so the chain
never forks.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from cds.core.db.models import AuditEntry

GENESIS_HASH = "0" * 64
_ADVISORY_LOCK_KEY = 0x6364_7366_7573  # "cdsfus"


def _entry_hash(prev_hash: str, content: dict[str, Any]) -> str:
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{prev_hash}\n{canonical}".encode()).hexdigest()


def _content(entry: AuditEntry) -> dict[str, Any]:
    return {
        "occurred_at": entry.occurred_at.astimezone(dt.UTC).isoformat(),
        "actor": entry.actor,
        "action": entry.action,
        "entity_type": entry.entity_type,
        "entity_id": entry.entity_id,
        "details": entry.details,
    }


def append_audit(
    *,
    session: Session,
    actor: str,
    action: str,
    occurred_at: dt.datetime,
    entity_type: str = "",
    entity_id: str = "",
    details: dict[str, Any] | None = None,
) -> AuditEntry:
    """Append one entry to the chain (in the caller's transaction).

    Args:
        actor: unique user id, or ``system:<component>`` for the engine itself.
        action: a short verb such as ``prediction.view`` or ``cds.feedback``.
        occurred_at: when it happened, timezone-aware.
        entity_type, entity_id: what it was done to (internal ids, not PHI).
        details: JSON-serialisable extras.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK_KEY})
    prev = session.scalar(select(AuditEntry.entry_hash).order_by(AuditEntry.id.desc()).limit(1))
    entry = AuditEntry(
        occurred_at=occurred_at.astimezone(dt.UTC),
        actor=actor,
        action=action,
        entity_type=entity_type,
        entity_id=entity_id,
        details=details or {},
        prev_hash=prev or GENESIS_HASH,
        entry_hash="",
    )
    entry.entry_hash = _entry_hash(entry.prev_hash, _content(entry))
    session.add(entry)
    session.flush()
    return entry


@dataclass(frozen=True, slots=True)
class ChainReport:
    """Result of :func:`verify_chain`; ``first_bad_id`` is where the chain breaks."""

    ok: bool
    entries: int
    first_bad_id: int | None = None
    reason: str = ""


def verify_chain(*, session: Session, batch_size: int = 5000) -> ChainReport:
    """Walk the whole audit log and check every link."""
    prev_hash = GENESIS_HASH
    count = 0
    last_id = 0
    while True:
        batch = list(
            session.scalars(
                select(AuditEntry)
                .where(AuditEntry.id > last_id)
                .order_by(AuditEntry.id)
                .limit(batch_size)
            )
        )
        if not batch:
            return ChainReport(ok=True, entries=count)
        for entry in batch:
            if entry.prev_hash != prev_hash:
                return ChainReport(False, count, entry.id, "previous hash does not match")
            if _entry_hash(entry.prev_hash, _content(entry)) != entry.entry_hash:
                return ChainReport(False, count, entry.id, "content does not match its hash")
            prev_hash = entry.entry_hash
            count += 1
            last_id = entry.id
