"""Verifying the CDS Client's JWT on every CDS Hooks call (CDS Hooks 2.0 §Trusting CDS Clients).

A call carries ``Authorization: Bearer <JWT>``. It is accepted only when all of this holds:

* the header's ``alg`` is ``RS384`` or ``ES384`` (``none``, HMAC and everything else are
  refused before any key is looked at);
* ``iss`` is a configured trusted issuer (:func:`load_issuers`);
* the signature verifies with a key of that issuer: from its configured ``jwks`` or
  ``jwks_url``, or from the header's ``jku`` only where the issuer allows ``jku`` and the
  URL is on its list (or, with no list, on the issuer's own origin). Key sets are cached
  (``CDSFUSION_CDS_HOOKS_JWKS_CACHE_S``) and fetched again once when a ``kid`` is unknown
  (key rotation), at most every :data:`MIN_REFETCH_S`;
* ``aud`` is this service's endpoint URL; ``exp`` is in the future and at most
  :data:`MAX_LIFETIME_S` ahead; ``iat`` is not in the future; ``jti`` is present;
* the ``jti`` was never seen for this issuer: it is recorded in the database
  (``cds_hook_token_uses``) so a replay fails in every process.

Clock skew of :data:`LEEWAY_S` is tolerated. Any failure is a bare 401 for the caller; the
reason is logged as a category, never with the token.

The trusted-issuers file (``CDSFUSION_CDS_HOOKS_ISSUERS_FILE``, JSON or YAML)::

    {"https://ehr.example.org": {
        "jwks_url": "https://ehr.example.org/.well-known/jwks.json",
        "jku_allowed": false,
        "jku_urls": [],
        "fhir_servers": ["https://ehr.example.org/fhir"]},
     "https://other.example": {"jwks": {"keys": [...]}}}

``fhir_servers``, when given, are the only ``fhirServer`` values this issuer's calls may
make the engine query.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import Executable, delete
from sqlalchemy.orm import Session

from cds.core.db.models import HookTokenUse
from cds.core.db.types import utcnow
from cds.core.db.upsert import insert_ignoring_conflicts
from cds.core.errors import ConfigurationError, InputError

logger = logging.getLogger(__name__)

#: CDS Hooks 2.0: "CDS Services SHALL support ES384 and RS384"; nothing else is accepted.
ALGORITHMS = ("RS384", "ES384")
_KEY_TYPE = {"RS384": "RSA", "ES384": "EC"}
#: CDS Hooks 2.0: ``exp`` "SHOULD be no more than 5 minutes in the future".
MAX_LIFETIME_S = 300
LEEWAY_S = 60
MIN_REFETCH_S = 10.0
_PURGE_EVERY = 500
_MAX_PARSED_KEYS = 256


class AuthenticationError(InputError):
    """The call's JWT is not acceptable; ``str()`` is a category, never token content."""


class _IssuerFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    jwks_url: str | None = None
    jwks: dict[str, Any] | None = None
    jku_allowed: bool = False
    jku_urls: list[str] = Field(default_factory=list)
    fhir_servers: list[str] = Field(default_factory=list)


@dataclass(frozen=True)
class TrustedIssuer:
    """A CDS Client allowed to call, and where its keys are.

    Attributes:
        iss: the ``iss`` claim it uses.
        jwks_url: URL of its JWK Set.
        jwks: an inline JWK Set (``{"keys": [...]}``).
        jku_allowed: whether a ``jku`` header may name where its keys are.
        jku_urls: the ``jku`` values accepted; empty: any URL on the issuer's origin.
        fhir_servers: the ``fhirServer`` values its calls may name; empty: any.
    """

    iss: str
    jwks_url: str | None = None
    jwks: Mapping[str, Any] | None = None
    jku_allowed: bool = False
    jku_urls: tuple[str, ...] = ()
    fhir_servers: tuple[str, ...] = ()

    def jku_trusted(self, jku: str) -> bool:
        if not self.jku_allowed:
            return False
        if self.jku_urls:
            return jku in self.jku_urls
        mine, theirs = urlsplit(self.iss), urlsplit(jku)
        return theirs.scheme == "https" and (mine.scheme, mine.netloc) == (
            theirs.scheme,
            theirs.netloc,
        )

    def allows_fhir_server(self, url: str) -> bool:
        return not self.fhir_servers or url.rstrip("/") in {
            s.rstrip("/") for s in self.fhir_servers
        }


def load_issuers(path: Path | None) -> dict[str, TrustedIssuer]:
    """Read the trusted-issuers file (JSON or YAML); no file trusts nobody.

    Raises:
        ConfigurationError: unreadable file or invalid entries.
    """
    if path is None:
        return {}
    try:
        text = path.read_text(encoding="utf-8")
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ConfigurationError(f"cannot read CDSFUSION_CDS_HOOKS_ISSUERS_FILE: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigurationError("the trusted-issuers file must map iss -> settings")
    issuers: dict[str, TrustedIssuer] = {}
    for iss, entry in raw.items():
        try:
            parsed = _IssuerFile.model_validate(entry or {})
        except ValidationError as exc:
            raise ConfigurationError(f"trusted issuer {iss!r}: {exc.error_count()} errors") from exc
        if not (parsed.jwks_url or parsed.jwks or parsed.jku_allowed):
            raise ConfigurationError(f"trusted issuer {iss!r} needs jwks_url, jwks or jku_allowed")
        issuers[str(iss)] = TrustedIssuer(
            iss=str(iss),
            jwks_url=parsed.jwks_url,
            jwks=parsed.jwks,
            jku_allowed=parsed.jku_allowed,
            jku_urls=tuple(parsed.jku_urls),
            fhir_servers=tuple(parsed.fhir_servers),
        )
    return issuers


class JwksCache:
    """JWK Sets by URL, fetched with httpx and kept ``ttl_s`` seconds.

    Args:
        http: the client used to fetch (its timeout applies).
        ttl_s: how long a fetched set is used. Defaults to 300.
        clock: monotonic seconds (tests).
    """

    def __init__(
        self,
        http: httpx.Client,
        *,
        ttl_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._http = http
        self._ttl = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._sets: dict[str, tuple[float, list[dict[str, Any]]]] = {}

    def keys(self, url: str, *, refresh: bool = False) -> list[dict[str, Any]]:
        """The keys at ``url``; ``refresh`` fetches again unless fetched very recently.

        Raises:
            AuthenticationError: the set cannot be fetched or is not a JWK Set.
        """
        now = self._clock()
        with self._lock:
            cached = self._sets.get(url)
        if cached is not None:
            age = now - cached[0]
            if age < self._ttl and not (refresh and age >= MIN_REFETCH_S):
                return cached[1]
        try:
            response = self._http.get(url, headers={"Accept": "application/json"})
            response.raise_for_status()
            body = response.json()
        except (httpx.HTTPError, ValueError):
            logger.warning("JWK Set fetch failed")
            if cached is not None:
                return cached[1]
            raise AuthenticationError("JWK Set unavailable") from None
        keys = body.get("keys") if isinstance(body, dict) else None
        if not isinstance(keys, list):
            raise AuthenticationError("not a JWK Set")
        found = [k for k in keys if isinstance(k, dict)]
        with self._lock:
            self._sets[url] = (now, found)
        return found

    def close(self) -> None:
        self._http.close()


@dataclass(frozen=True)
class Principal:
    """A verified CDS Client call.

    Attributes:
        issuer: the ``iss`` (a trusted issuer); ``embedded`` when verification is off.
        subject: the ``sub`` (the client id), if given.
        jti: the token id (``None`` when verification is off).
        expires_at: the token's ``exp``.
        trusted: the issuer's settings (``None`` when verification is off).
    """

    issuer: str
    subject: str | None
    jti: str | None
    expires_at: dt.datetime | None
    trusted: TrustedIssuer | None = None


def _usable(jwk: Mapping[str, Any], alg: str, kid: str | None) -> bool:
    if kid is not None and jwk.get("kid") != kid:
        return False
    if jwk.get("kty") != _KEY_TYPE[alg] or jwk.get("use", "sig") != "sig":
        return False
    if jwk.get("alg", alg) != alg:
        return False
    return alg != "ES384" or jwk.get("crv") == "P-384"


class HookTokenVerifier:
    """Checks a CDS Client JWT's header, signature and claims (replay: :class:`ReplayGuard`).

    Args:
        issuers: the trusted issuers by ``iss``.
        jwks: the key-set cache.
    """

    def __init__(self, issuers: Mapping[str, TrustedIssuer], jwks: JwksCache) -> None:
        self._issuers = dict(issuers)
        self._jwks = jwks
        self._keys_lock = threading.Lock()
        self._keys: dict[tuple[str, str], jwt.PyJWK] = {}

    @property
    def issuers(self) -> Mapping[str, TrustedIssuer]:
        return self._issuers

    def _key_sources(self, issuer: TrustedIssuer, header: Mapping[str, Any]) -> list[str | None]:
        jku = header.get("jku")
        if isinstance(jku, str) and issuer.jku_trusted(jku):
            return [jku]
        sources: list[str | None] = []
        if issuer.jwks is not None:
            sources.append(None)
        if issuer.jwks_url:
            sources.append(issuer.jwks_url)
        return sources

    def _candidates(
        self, issuer: TrustedIssuer, header: Mapping[str, Any], alg: str
    ) -> list[dict[str, Any]]:
        kid = header.get("kid") if isinstance(header.get("kid"), str) else None
        found: list[dict[str, Any]] = []
        for source in self._key_sources(issuer, header):
            if source is None:
                keys = list((issuer.jwks or {}).get("keys") or [])
                found += [k for k in keys if isinstance(k, dict) and _usable(k, alg, kid)]
                continue
            matching = [k for k in self._jwks.keys(source) if _usable(k, alg, kid)]
            if not matching and kid is not None:
                matching = [
                    k for k in self._jwks.keys(source, refresh=True) if _usable(k, alg, kid)
                ]
            found += matching
        return found

    def verify(self, token: str, audiences: Sequence[str]) -> Principal:
        """Verify ``token`` for a call to one of ``audiences`` (the endpoint URL).

        Raises:
            AuthenticationError: anything wrong (the message is a category only).
        """
        try:
            parsed = jwt.decode_complete(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise AuthenticationError("malformed token") from None
        header, unverified = parsed["header"], parsed["payload"]
        if not isinstance(header, dict) or not isinstance(unverified, dict):
            raise AuthenticationError("malformed token")
        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise AuthenticationError("algorithm not accepted")
        issuer = self._issuers.get(str(unverified.get("iss", "")))
        if issuer is None:
            raise AuthenticationError("issuer not trusted")
        claims: dict[str, Any] | None = None
        for jwk in self._candidates(issuer, header, alg):
            try:
                key = self._key(jwk, alg)
                claims = jwt.decode(
                    token,
                    key=key,
                    algorithms=[alg],
                    audience=list(audiences),
                    issuer=issuer.iss,
                    leeway=LEEWAY_S,
                    options={"require": ["iss", "aud", "exp", "iat", "jti"]},
                )
                break
            except (jwt.InvalidSignatureError, jwt.PyJWKError, jwt.InvalidKeyError):
                continue
            except jwt.PyJWTError as exc:
                raise AuthenticationError(f"claims rejected ({type(exc).__name__})") from None
        if claims is None:
            raise AuthenticationError("signature not verified")
        return self._principal(issuer, claims)

    def _key(self, jwk: Mapping[str, Any], alg: str) -> jwt.PyJWK:
        """The key object of a JWK, parsed once per distinct JWK (a JWK Set changes rarely)."""
        cache_key = (alg, json.dumps(jwk, sort_keys=True))
        with self._keys_lock:
            key = self._keys.get(cache_key)
        if key is None:
            key = jwt.PyJWK(dict(jwk), algorithm=alg)
            with self._keys_lock:
                if len(self._keys) >= _MAX_PARSED_KEYS:
                    self._keys.clear()
                self._keys[cache_key] = key
        return key

    @staticmethod
    def _principal(issuer: TrustedIssuer, claims: Mapping[str, Any]) -> Principal:
        now = time.time()
        exp, iat, jti = claims["exp"], claims["iat"], claims["jti"]
        if not isinstance(exp, int | float) or exp > now + MAX_LIFETIME_S + LEEWAY_S:
            raise AuthenticationError("token lifetime too long")
        if not isinstance(iat, int | float) or iat > now + LEEWAY_S:
            raise AuthenticationError("token issued in the future")
        if not isinstance(jti, str) or not 0 < len(jti) <= 255:
            raise AuthenticationError("jti missing or too long")
        sub = claims.get("sub")
        return Principal(
            issuer=issuer.iss,
            subject=sub if isinstance(sub, str) else None,
            jti=jti,
            expires_at=dt.datetime.fromtimestamp(exp, dt.UTC),
            trusted=issuer,
        )


class ReplayGuard:
    """Records each ``jti`` once per issuer in the database; a second use is refused.

    The CDS Hooks call path commits a transaction that wrote only the token record without
    waiting for PostgreSQL's WAL flush (``synchronous_commit`` off for that transaction):
    a database crash may forget the tokens used in the last fraction of a second, which
    could then be replayed until they expire (at most :data:`MAX_LIFETIME_S`). That is the
    price of not paying a disk flush on every card; a call that also records a trigger
    commits durably.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._uses = 0
        self._inserts: dict[str, Executable] = {}

    def consume(self, *, session: Session, principal: Principal) -> None:
        """Record the token's ``jti`` in the caller's transaction.

        Raises:
            AuthenticationError: the ``jti`` was used before.
        """
        if principal.jti is None or principal.expires_at is None:
            return
        values = {
            "issuer": principal.issuer[:255],
            "jti": principal.jti,
            "expires_at": principal.expires_at + dt.timedelta(seconds=LEEWAY_S),
            "seen_at": utcnow(),
        }
        # One statement, no savepoint: the primary key decides, in every process. Built once
        # per dialect and run as Core: it is on every call.
        dialect = session.get_bind().dialect.name
        statement = self._inserts.get(dialect)
        if statement is None:
            statement = insert_ignoring_conflicts(session, HookTokenUse).returning(HookTokenUse.jti)
            self._inserts[dialect] = statement
        inserted = session.connection().execute(statement, values).first()
        if inserted is None:
            raise AuthenticationError("jti replayed")
        with self._lock:
            self._uses += 1
            purge = self._uses % _PURGE_EVERY == 0
        if purge:
            session.execute(delete(HookTokenUse).where(HookTokenUse.expires_at < utcnow()))
