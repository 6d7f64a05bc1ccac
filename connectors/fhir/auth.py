"""Authorization to the upstream FHIR server.

* SMART Backend Services (SMART App Launch 2.0 §Backend Services): ``client_credentials``
  grant with a ``private_key_jwt`` client assertion (RFC 7523) signed RS384 or ES384, the
  token cached until shortly before ``expires_in`` runs out.
* A static bearer token (``CDSFUSION_FHIR_BEARER_TOKEN``).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Protocol

import httpx

from cds.core.errors import ConfigurationError, StorageError
from cds.core.settings import Settings

logger = logging.getLogger(__name__)

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: Tokens are renewed this many seconds before they expire.
EXPIRY_MARGIN_S = 30.0
#: Lifetime of a client assertion; SMART Backend Services allows at most five minutes.
ASSERTION_LIFETIME_S = 300


class AuthorizationError(StorageError):
    """The authorization server refused or could not be reached (answer 503, retry later)."""


class Authorization(Protocol):
    """Gives the ``Authorization`` header value for the next request."""

    def header(self) -> str | None: ...


class StaticBearer:
    """A fixed bearer token."""

    def __init__(self, token: str) -> None:
        self._token = token

    def header(self) -> str:
        return f"Bearer {self._token}"


class SmartBackendServices:
    """client_credentials with a signed JWT assertion; the access token is cached.

    Args:
        http: client used for discovery and the token request (TLS verification on).
        fhir_base: the FHIR base, for ``.well-known/smart-configuration`` discovery.
        client_id: the registered client id (``iss`` and ``sub`` of the assertion).
        private_key_pem: PEM private key (RSA for RS384, P-384 EC for ES384).
        key_id: ``kid`` of the key in the client's registered JWKS.
        algorithm: ``RS384`` or ``ES384``.
        scope: requested scopes, e.g. ``system/*.read``.
        token_url: the token endpoint; discovered from the server when ``None``.
    """

    def __init__(
        self,
        *,
        http: httpx.Client,
        fhir_base: str,
        client_id: str,
        private_key_pem: bytes,
        key_id: str | None,
        algorithm: str,
        scope: str,
        token_url: str | None = None,
    ) -> None:
        if algorithm not in ("RS384", "ES384"):
            raise ConfigurationError("SMART Backend Services needs RS384 or ES384")
        self._http = http
        self._fhir_base = fhir_base.rstrip("/")
        self._client_id = client_id
        self._key = private_key_pem
        self._key_id = key_id
        self._algorithm = algorithm
        self._scope = scope
        self._token_url = token_url
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0
        self.tokens_issued = 0

    def header(self) -> str:
        with self._lock:
            if self._token is None or time.monotonic() >= self._expires_at - EXPIRY_MARGIN_S:
                self._token, lifetime = self._request_token()
                self._expires_at = time.monotonic() + lifetime
                self.tokens_issued += 1
            return f"Bearer {self._token}"

    def _discover(self) -> str:
        if self._token_url:
            return self._token_url
        try:
            response = self._http.get(f"{self._fhir_base}/.well-known/smart-configuration")
            response.raise_for_status()
            endpoint = response.json().get("token_endpoint")
        except (httpx.HTTPError, ValueError) as exc:
            raise AuthorizationError("SMART configuration discovery failed") from exc
        if not isinstance(endpoint, str) or not endpoint:
            raise AuthorizationError("SMART configuration has no token_endpoint")
        self._token_url = endpoint
        return endpoint

    def assertion(self, token_url: str) -> str:
        """The signed client assertion (RFC 7523 §3)."""
        import jwt

        now = int(time.time())
        claims = {
            "iss": self._client_id,
            "sub": self._client_id,
            "aud": token_url,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_S,
            "jti": uuid.uuid4().hex,
        }
        headers = {"typ": "JWT"}
        if self._key_id:
            headers["kid"] = self._key_id
        return jwt.encode(claims, self._key, algorithm=self._algorithm, headers=headers)

    def _request_token(self) -> tuple[str, float]:
        token_url = self._discover()
        form = {
            "grant_type": "client_credentials",
            "scope": self._scope,
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": self.assertion(token_url),
        }
        try:
            response = self._http.post(token_url, data=form)
        except httpx.HTTPError as exc:
            raise AuthorizationError("token endpoint unreachable") from exc
        if response.status_code != 200:
            logger.warning("token request refused with HTTP %d", response.status_code)
            raise AuthorizationError(f"token request refused (HTTP {response.status_code})")
        try:
            body = response.json()
            token = body["access_token"]
            lifetime = float(body.get("expires_in", 300))
        except (ValueError, KeyError, TypeError) as exc:
            raise AuthorizationError("token response malformed") from exc
        logger.info("obtained upstream access token valid %.0f s", lifetime)
        return str(token), lifetime


def authorization_from_settings(
    settings: Settings, http: httpx.Client, *, server: str
) -> Authorization | None:
    """The upstream FHIR server's auth from settings: SMART Backend Services when a client
    id and private key are configured, else a static bearer token, else none.

    Raises:
        ConfigurationError: the private key file cannot be read.
    """
    if settings.fhir_client_id and settings.fhir_private_key_file:
        try:
            key = settings.fhir_private_key_file.read_bytes()
        except OSError as exc:
            raise ConfigurationError("CDSFUSION_FHIR_PRIVATE_KEY_FILE unreadable") from exc
        return SmartBackendServices(
            http=http,
            fhir_base=server,
            client_id=settings.fhir_client_id,
            private_key_pem=key,
            key_id=settings.fhir_private_key_id,
            algorithm=settings.fhir_jwt_algorithm,
            scope=settings.fhir_scope,
            token_url=settings.fhir_token_url,
        )
    if settings.fhir_bearer_token is not None:
        return StaticBearer(settings.fhir_bearer_token.get_secret_value())
    return None
