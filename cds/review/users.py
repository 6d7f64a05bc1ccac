"""Review users: local accounts with scrypt hashes, and accounts from the OIDC provider.

Every change to a user is an audit entry (``review.user-create``, ``review.user-disable``,
``review.user-enable``). Usernames are login names, not PHI.
"""

from __future__ import annotations

import re
import uuid

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cds.core.db.models import ReviewRole, ReviewUser
from cds.core.db.types import utcnow
from cds.core.errors import ConflictError, MalformedInputError
from cds.core.repository.audit import append_audit
from cds.review.passwords import check_strength, dummy_verify, hash_password, verify_password

_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{1,127}$")


def check_username(username: str) -> str:
    """A login name: 2-128 letters, digits, ``.``, ``_``, ``@`` or ``-``.

    Raises:
        MalformedInputError: anything else.
    """
    if not _USERNAME.match(username):
        raise MalformedInputError(
            "a username is 2-128 characters: letters, digits, '.', '_', '@' or '-'"
        )
    return username


def find_user(*, session: Session, username: str) -> ReviewUser | None:
    """The user with this login name (case-insensitive), or ``None``."""
    return session.scalar(
        select(ReviewUser).where(func.lower(ReviewUser.username) == username.lower())
    )


def create_local_user(
    *, session: Session, username: str, password: str, role: ReviewRole, actor: str
) -> ReviewUser:
    """Create a local user with a hashed password and audit it.

    Raises:
        MalformedInputError: invalid username.
        WeakPasswordError: the password is too short.
        ConflictError: the username is taken.
    """
    check_username(username)
    check_strength(password)
    if find_user(session=session, username=username) is not None:
        raise ConflictError("that username is taken")
    user = ReviewUser(
        id=uuid.uuid4(), username=username, role=role, password_hash=hash_password(password)
    )
    session.add(user)
    session.flush()
    append_audit(
        session=session,
        actor=actor,
        action="review.user-create",
        occurred_at=utcnow(),
        entity_type="review-user",
        entity_id=str(user.id),
        details={"role": role.value, "method": "local"},
    )
    return user


def authenticate_local(*, session: Session, username: str, password: str) -> ReviewUser | None:
    """The active local user with these credentials, else ``None`` (same time either way)."""
    user = find_user(session=session, username=username)
    if user is None or user.password_hash is None:
        dummy_verify(password)
        return None
    if not verify_password(password, user.password_hash) or not user.active:
        return None
    return user


def oidc_user(
    *, session: Session, issuer: str, subject: str, username: str, role: ReviewRole
) -> ReviewUser:
    """The user for an OIDC identity, created on first sign-in; its role follows the token.

    The username is the token's ``preferred_username`` (or the subject), made unique.
    """
    user = session.scalar(
        select(ReviewUser).where(
            ReviewUser.oidc_issuer == issuer, ReviewUser.oidc_subject == subject
        )
    )
    if user is not None:
        if user.role is not role:
            append_audit(
                session=session,
                actor="system:review",
                action="review.user-role",
                occurred_at=utcnow(),
                entity_type="review-user",
                entity_id=str(user.id),
                details={"from": user.role.value, "to": role.value, "method": "oidc"},
            )
            user.role = role
        return user
    name = username if _USERNAME.match(username) else f"oidc-{uuid.uuid4().hex[:12]}"
    if find_user(session=session, username=name) is not None:
        name = f"{name[:110]}-{uuid.uuid4().hex[:8]}"
    user = ReviewUser(
        id=uuid.uuid4(), username=name, role=role, oidc_issuer=issuer, oidc_subject=subject
    )
    session.add(user)
    session.flush()
    append_audit(
        session=session,
        actor="system:review",
        action="review.user-create",
        occurred_at=utcnow(),
        entity_type="review-user",
        entity_id=str(user.id),
        details={"role": role.value, "method": "oidc"},
    )
    return user


def set_active(*, session: Session, user_id: uuid.UUID, active: bool, actor: str) -> ReviewUser:
    """Enable or disable a user (never deleted: audit entries keep naming them).

    Raises:
        MalformedInputError: no such user.
    """
    user = session.get(ReviewUser, user_id)
    if user is None:
        raise MalformedInputError("no such user")
    user.active = active
    append_audit(
        session=session,
        actor=actor,
        action="review.user-enable" if active else "review.user-disable",
        occurred_at=utcnow(),
        entity_type="review-user",
        entity_id=str(user.id),
        details={},
    )
    return user


def list_users(*, session: Session) -> list[ReviewUser]:
    return list(session.scalars(select(ReviewUser).order_by(ReviewUser.username)))
