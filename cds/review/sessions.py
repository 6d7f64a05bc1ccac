"""Server-side sessions with automatic logoff, and CSRF tokens (45 CFR 164.312(a)(2)(iii)).

* The cookie carries a random token and its HMAC under ``CDSFUSION_SECRET_KEY``; the
  database keeps only the token's sha256, so a copy of the table opens no session.
* A session ends after ``review_session_idle_timeout_s`` without a request, and after
  ``review_session_absolute_timeout_s`` however active it is; logout ends it at once.
* Every form carries the session's CSRF token, HMAC(secret, session id): forms cannot be
  posted from another site even if SameSite were ignored.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import hmac
import secrets
import uuid
from dataclasses import dataclass

from sqlalchemy.orm import Session

from cds.core.db.models import ReviewSession, ReviewUser
from cds.core.db.types import utcnow
from cds.core.repository.audit import append_audit
from cds.core.settings import Settings

COOKIE_NAME = "cdsfusion_review"


class EndReason(enum.StrEnum):
    """Why a session ended."""

    LOGOUT = "logout"
    IDLE = "idle"
    ABSOLUTE = "absolute"
    DISABLED = "disabled"


class Signer:
    """HMAC-SHA256 under the engine's secret key, one purpose string per use."""

    def __init__(self, secret: str) -> None:
        self._key = hashlib.sha256(b"cdsfusion-review|" + secret.encode()).digest()

    def sign(self, purpose: str, value: str) -> str:
        return hmac.new(self._key, f"{purpose}|{value}".encode(), hashlib.sha256).hexdigest()

    def check(self, purpose: str, value: str, signature: str) -> bool:
        return hmac.compare_digest(self.sign(purpose, value), signature)


@dataclass(frozen=True)
class ActiveSession:
    """A valid session and its user, as a request sees it."""

    row: ReviewSession
    user: ReviewUser
    csrf: str


@dataclass(frozen=True)
class EndedSession:
    """The cookie named a session that has just expired (the login page says so)."""

    reason: EndReason


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def cookie_value(signer: Signer, token: str) -> str:
    return f"{token}.{signer.sign('session', token)}"


def token_from_cookie(signer: Signer, cookie: str | None) -> str | None:
    """The session token if the cookie is well-formed and signed by us."""
    if not cookie or cookie.count(".") != 1:
        return None
    token, signature = cookie.split(".")
    return token if signer.check("session", token, signature) else None


def csrf_for(signer: Signer, session_id: uuid.UUID) -> str:
    return signer.sign("csrf", str(session_id))


def start_session(
    *,
    session: Session,
    user: ReviewUser,
    method: str,
    settings: Settings,
    now: dt.datetime | None = None,
) -> str:
    """Open a session for ``user`` and audit the login; returns the new token."""
    now = now or utcnow()
    token = secrets.token_urlsafe(32)
    row = ReviewSession(
        id=uuid.uuid4(),
        token_sha256=_token_hash(token),
        user_id=user.id,
        auth_method=method,
        created_at=now,
        last_seen_at=now,
        expires_at=now + dt.timedelta(seconds=settings.review_session_absolute_timeout_s),
    )
    session.add(row)
    user.last_login_at = now
    session.flush()
    append_audit(
        session=session,
        actor=f"user:{user.id}",
        action="review.login",
        occurred_at=now,
        entity_type="review-session",
        entity_id=str(row.id),
        details={"method": method, "role": user.role.value},
    )
    return token


def end_session(
    *, session: Session, row: ReviewSession, reason: EndReason, now: dt.datetime | None = None
) -> None:
    """End ``row`` and audit why (logout, idle, absolute timeout, disabled user)."""
    now = now or utcnow()
    row.ended_at = now
    row.end_reason = reason.value
    append_audit(
        session=session,
        actor=f"user:{row.user_id}",
        action="review.logout" if reason is EndReason.LOGOUT else "review.session-expired",
        occurred_at=now,
        entity_type="review-session",
        entity_id=str(row.id),
        details={"reason": reason.value},
    )


def resume_session(
    *,
    session: Session,
    token: str,
    settings: Settings,
    signer: Signer,
    now: dt.datetime | None = None,
) -> ActiveSession | EndedSession | None:
    """The session behind ``token``, refreshed; ended when it has run out.

    Returns ``None`` for an unknown or already ended session.
    """
    now = now or utcnow()
    row = session.query(ReviewSession).filter_by(token_sha256=_token_hash(token)).one_or_none()
    if row is None or row.ended_at is not None:
        return None
    user = session.get(ReviewUser, row.user_id)
    reason: EndReason | None = None
    if user is None or not user.active:
        reason = EndReason.DISABLED
    elif now >= row.expires_at:
        reason = EndReason.ABSOLUTE
    elif now - row.last_seen_at >= dt.timedelta(seconds=settings.review_session_idle_timeout_s):
        reason = EndReason.IDLE
    if reason is not None or user is None:
        end_session(session=session, row=row, reason=reason or EndReason.DISABLED, now=now)
        return EndedSession(reason or EndReason.DISABLED)
    row.last_seen_at = now
    return ActiveSession(row=row, user=user, csrf=csrf_for(signer, row.id))
