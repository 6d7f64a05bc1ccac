"""The append-only, hash-chained audit log (45 CFR 164.312(b) audit controls)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import BigInteger, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from cds.core.db.base import Base
from cds.core.db.types import JsonDocument, UTCDateTime


class AuditEntry(Base):
    """One audited action. Rows are never updated or deleted (database triggers refuse it).

    ``entry_hash`` is sha256 over the previous entry's hash and this entry's canonical
    content, so any edit or deletion breaks the chain (:func:`cds.core.audit.verify_chain`).
    """

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    occurred_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False, index=True)
    actor: Mapped[str] = mapped_column(String(255), nullable=False)
    action: Mapped[str] = mapped_column(String(64), nullable=False)
    entity_type: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    entity_id: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    details: Mapped[dict[str, Any]] = mapped_column(JsonDocument, nullable=False)
    prev_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    entry_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
