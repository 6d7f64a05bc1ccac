"""State of the CDS outputs: the CDS Hooks JWT replay cache."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Index, String
from sqlalchemy.orm import Mapped, mapped_column

from cds.core.db.base import Base
from cds.core.db.models._columns import created_at_column
from cds.core.db.types import UTCDateTime


class HookTokenUse(Base):
    """A CDS Hooks client JWT seen once (CDS Hooks 2.0 §Trusting CDS Clients: ``jti``).

    The primary key (issuer, jti) makes a replayed token fail on insert in every process
    sharing the database. Rows are kept until ``expires_at`` (the token's ``exp``), after
    which the token is refused for having expired anyway and the row may be purged.
    """

    __tablename__ = "cds_hook_token_uses"
    __table_args__ = (Index("ix_cds_hook_token_uses_expires_at", "expires_at"),)

    issuer: Mapped[str] = mapped_column(String(255), primary_key=True)
    jti: Mapped[str] = mapped_column(String(255), primary_key=True)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    seen_at: Mapped[dt.datetime] = created_at_column()
