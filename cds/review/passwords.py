"""Password hashing for local review users: scrypt (RFC 7914) from the standard library.

A stored hash reads ``scrypt$<log2 N>$<r>$<p>$<salt b64>$<hash b64>``, so the cost can be
raised later without invalidating existing hashes. There is no default password anywhere:
the first admin is created by ``cdsfusion users create-admin``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

#: scrypt cost: N = 2**15, r = 8, p = 1 (32 MiB, tens of milliseconds per check).
LOG2_N = 15
BLOCK_SIZE = 8
PARALLELISM = 1
MIN_PASSWORD_LENGTH = 12
_MAX_PASSWORD_BYTES = 1024
_SCHEME = "scrypt"


class WeakPasswordError(ValueError):
    """The password is too short (fewer than :data:`MIN_PASSWORD_LENGTH` characters)."""


def _derive(password: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    n = 1 << log2_n
    return hashlib.scrypt(
        password.encode()[:_MAX_PASSWORD_BYTES],
        salt=salt,
        n=n,
        r=r,
        p=p,
        maxmem=256 * n * r + 1024 * 1024,
        dklen=32,
    )


def check_strength(password: str) -> None:
    """Refuse passwords shorter than :data:`MIN_PASSWORD_LENGTH` characters.

    Raises:
        WeakPasswordError: the password is too short.
    """
    if len(password) < MIN_PASSWORD_LENGTH:
        raise WeakPasswordError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")


def hash_password(password: str, *, log2_n: int = LOG2_N) -> str:
    """A salted scrypt hash of ``password`` in the self-describing format above."""
    salt = secrets.token_bytes(16)
    derived = _derive(password, salt, log2_n, BLOCK_SIZE, PARALLELISM)
    b64 = base64.b64encode
    return (
        f"{_SCHEME}${log2_n}${BLOCK_SIZE}${PARALLELISM}$"
        f"{b64(salt).decode()}${b64(derived).decode()}"
    )


def verify_password(password: str, stored: str | None) -> bool:
    """Whether ``password`` matches ``stored``; a malformed or empty hash never matches."""
    if not stored:
        return False
    try:
        scheme, log2_n, r, p, salt, expected = stored.split("$")
        if scheme != _SCHEME:
            return False
        derived = _derive(password, base64.b64decode(salt), int(log2_n), int(r), int(p))
        return hmac.compare_digest(derived, base64.b64decode(expected))
    except (ValueError, TypeError):
        return False


def dummy_verify(password: str) -> None:
    """Spend the time a real check takes, so an unknown username is not told apart by timing."""
    _derive(password, b"\0" * 16, LOG2_N, BLOCK_SIZE, PARALLELISM)
