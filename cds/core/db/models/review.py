"""The clinician audit review pages: users, server-side sessions and reviewer verdicts.

45 CFR 164.312 asks for unique user ids (``review_users``), automatic logoff (sessions
with an idle and an absolute expiry) and audit controls (every page view and action goes
to ``audit_log``; a reviewer's comment is kept in ``review_verdicts`` and its sha256 in the
hash-chained audit entry, so the free text stays out of the log yet cannot be changed
unnoticed).

Two indexes on other areas' tables serve the review list and are declared here, next to
the queries that need them: predictions by time (the list's order and keyset pages) and
audit entries by entity (the feedback shown and filtered per prediction).
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
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
from cds.core.db.models.audit import AuditEntry
from cds.core.db.models.pipeline import Prediction
from cds.core.db.types import JsonDocument, UTCDateTime


class ReviewRole(enum.StrEnum):
    """What a review user may see and do (``cds/review/access.py`` has the rules)."""

    CLINICIAN = "clinician"
    AUDITOR = "auditor"
    ADMIN = "admin"


class Verdict(enum.StrEnum):
    """A reviewer's judgement of a prediction."""

    AGREE = "agree"
    DISAGREE = "disagree"


class ReviewUser(Base):
    """One person who signs in to the review pages (a unique user id, 164.312(a)(2)(i)).

    Local users have a ``password_hash`` (scrypt, ``cds/review/passwords.py``); users from
    the OIDC provider have ``oidc_issuer`` and ``oidc_subject`` instead. Users are disabled
    (``active`` false), never deleted, so audit entries always name a known user.
    """

    __tablename__ = "review_users"
    __table_args__ = (UniqueConstraint("oidc_issuer", "oidc_subject"),)

    id: Mapped[uuid.UUID] = uuid_pk()
    username: Mapped[str] = mapped_column(String(128), nullable=False, unique=True)
    role: Mapped[ReviewRole] = mapped_column(str_enum(ReviewRole, "review_role"), nullable=False)
    password_hash: Mapped[str | None] = mapped_column(String(255))
    oidc_issuer: Mapped[str | None] = mapped_column(String(255))
    oidc_subject: Mapped[str | None] = mapped_column(String(255))
    active: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)
    created_at: Mapped[dt.datetime] = created_at_column()
    last_login_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)


class ReviewSession(Base):
    """A signed-in browser. The cookie holds a random token; only its sha256 is stored.

    Attributes:
        last_seen_at: the last request; idle longer than the idle timeout ends the session.
        expires_at: the absolute end, however active the session is.
        ended_at, end_reason: ``logout``, ``idle``, ``absolute`` or ``disabled``.
        filters: the prediction list's filters (kept here, never in a URL: a patient
            filter is resolved to internal patient ids).
    """

    __tablename__ = "review_sessions"

    id: Mapped[uuid.UUID] = uuid_pk()
    token_sha256: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    user_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("review_users.id"), nullable=False, index=True
    )
    auth_method: Mapped[str] = mapped_column(String(16), nullable=False)
    created_at: Mapped[dt.datetime] = created_at_column()
    last_seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, nullable=False)
    ended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    end_reason: Mapped[str | None] = mapped_column(String(16))
    filters: Mapped[dict[str, Any] | None] = mapped_column(JsonDocument)


class ReviewVerdict(Base):
    """A reviewer's agree / disagree on a prediction, with the comment.

    ``audit_entry_id`` is the chained audit entry that records it; that entry carries the
    comment's sha256, so an edited comment no longer matches the tamper-evident log.
    """

    __tablename__ = "review_verdicts"
    __table_args__ = (Index("ix_review_verdicts_prediction_verdict", "prediction_id", "verdict"),)

    id: Mapped[uuid.UUID] = uuid_pk()
    prediction_id: Mapped[uuid.UUID] = mapped_column(
        Uuid, ForeignKey("predictions.id"), nullable=False
    )
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid, ForeignKey("review_users.id"), nullable=False)
    verdict: Mapped[Verdict] = mapped_column(str_enum(Verdict, "review_verdict"), nullable=False)
    comment: Mapped[str] = mapped_column(Text, nullable=False, default="")
    audit_entry_id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), ForeignKey("audit_log.id"), nullable=False
    )
    created_at: Mapped[dt.datetime] = created_at_column()


#: The review list: newest first, keyset pages on (created_at, id).
Index("ix_predictions_created_at_id", Prediction.created_at, Prediction.id)
#: Feedback for a prediction: audit entries whose entity is the prediction (or its card).
Index("ix_audit_log_entity_id_action", AuditEntry.entity_id, AuditEntry.action)
