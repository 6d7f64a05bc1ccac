"""Sign-in with the hospital's OpenID Connect provider: authorization code flow with PKCE.

OpenID Connect Core 1.0 §3.1 (code flow), RFC 7636 (PKCE, ``S256``), OpenID Connect
Discovery 1.0 (``{issuer}/.well-known/openid-configuration``). The ``state``, ``nonce``
and PKCE verifier travel in a short-lived cookie signed with the engine's secret; the
ID token is verified with PyJWT against the provider's JWK Set: signature, ``iss``,
``aud``, ``exp``, ``iat`` and ``nonce``.

The review role comes from the claim named by ``CDSFUSION_REVIEW_OIDC_ROLE_CLAIM``
(default ``roles``; a list or a space-separated string). Values may be bare
(``clinician``) or prefixed (``cdsfusion-auditor``, ``review:admin``); when several
apply, the one granting least access to patient data wins: admin, then auditor, then
clinician. A token without any of them is refused.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt

from cds.core.db.models import ReviewRole
from cds.core.errors import CdsFusionError, ConfigurationError
from cds.core.settings import Settings
from cds.review.sessions import Signer

FLOW_COOKIE = "cdsfusion_review_oidc"
FLOW_MAX_AGE_S = 600
_ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256", "PS384"]
_ROLE_ORDER = (ReviewRole.ADMIN, ReviewRole.AUDITOR, ReviewRole.CLINICIAN)
_JWKS_TTL_S = 300.0


class OidcError(CdsFusionError):
    """The sign-in could not be completed (provider unreachable, bad token, no role)."""


@dataclass(frozen=True)
class Flow:
    """One pending sign-in: what the callback must find again."""

    state: str
    nonce: str
    verifier: str
    expires: float

    def to_cookie(self, signer: Signer) -> str:
        raw = base64.urlsafe_b64encode(json.dumps(self.__dict__).encode()).decode()
        return f"{raw}.{signer.sign('oidc-flow', raw)}"

    @classmethod
    def from_cookie(cls, signer: Signer, cookie: str | None) -> Flow | None:
        if not cookie or cookie.count(".") != 1:
            return None
        raw, signature = cookie.split(".")
        if not signer.check("oidc-flow", raw, signature):
            return None
        try:
            flow = cls(**json.loads(base64.urlsafe_b64decode(raw.encode())))
        except (ValueError, TypeError):
            return None
        return flow if flow.expires > time.time() else None


@dataclass(frozen=True)
class Identity:
    """Who signed in, from a verified ID token."""

    issuer: str
    subject: str
    username: str
    role: ReviewRole


def pkce_challenge(verifier: str) -> str:
    """RFC 7636 §4.2: BASE64URL(SHA256(verifier)) without padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def role_from_claims(claims: dict[str, Any], claim: str) -> ReviewRole:
    """The review role named in the token (least access to patient data wins).

    Raises:
        OidcError: no review role in the claim.
    """
    value = claims.get(claim)
    values = value.split() if isinstance(value, str) else value
    names = {str(v).lower() for v in values} if isinstance(values, list) else set()
    for role in _ROLE_ORDER:
        if any(n == role.value or n.endswith((f"-{role.value}", f":{role.value}")) for n in names):
            return role
    raise OidcError("the identity provider gave this account no review role")


class OidcClient:
    """The configured provider: discovery, the authorization URL, code exchange, ID token.

    Raises:
        ConfigurationError: issuer or client id missing.
    """

    def __init__(self, settings: Settings) -> None:
        if not settings.review_oidc_issuer or not settings.review_oidc_client_id:
            raise ConfigurationError(
                "OIDC needs CDSFUSION_REVIEW_OIDC_ISSUER and CDSFUSION_REVIEW_OIDC_CLIENT_ID"
            )
        self.issuer = settings.review_oidc_issuer.rstrip("/")
        self.client_id = settings.review_oidc_client_id
        secret = settings.review_oidc_client_secret
        self._client_secret = secret.get_secret_value() if secret else None
        self._scope = settings.review_oidc_scope
        self._role_claim = settings.review_oidc_role_claim
        self._http = httpx.Client(
            timeout=settings.review_oidc_timeout_s,
            verify=str(settings.review_oidc_ca_bundle) if settings.review_oidc_ca_bundle else True,
        )
        self._lock = threading.Lock()
        self._metadata: dict[str, Any] | None = None
        self._jwks: tuple[float, dict[str, Any]] | None = None

    def close(self) -> None:
        self._http.close()

    def _get_json(self, url: str) -> dict[str, Any]:
        try:
            response = self._http.get(url, headers={"Accept": "application/json"})
            response.raise_for_status()
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise OidcError(f"identity provider unavailable ({type(exc).__name__})") from None
        if not isinstance(body, dict):
            raise OidcError("identity provider answered with something other than an object")
        return body

    def metadata(self) -> dict[str, Any]:
        """The discovery document (fetched once; its ``issuer`` must be the configured one)."""
        with self._lock:
            if self._metadata is None:
                found = self._get_json(f"{self.issuer}/.well-known/openid-configuration")
                if str(found.get("issuer", "")).rstrip("/") != self.issuer:
                    raise OidcError("discovery document names another issuer")
                for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                    if not isinstance(found.get(key), str):
                        raise OidcError(f"discovery document has no {key}")
                self._metadata = found
            return self._metadata

    def start(self, redirect_uri: str) -> tuple[str, Flow]:
        """The provider URL to send the browser to, and the flow to keep in a cookie."""
        flow = Flow(
            state=secrets.token_urlsafe(24),
            nonce=secrets.token_urlsafe(24),
            verifier=secrets.token_urlsafe(48),
            expires=time.time() + FLOW_MAX_AGE_S,
        )
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.client_id,
                "redirect_uri": redirect_uri,
                "scope": self._scope,
                "state": flow.state,
                "nonce": flow.nonce,
                "code_challenge": pkce_challenge(flow.verifier),
                "code_challenge_method": "S256",
            }
        )
        return f"{self.metadata()['authorization_endpoint']}?{query}", flow

    def finish(self, *, code: str, state: str, flow: Flow | None, redirect_uri: str) -> Identity:
        """Exchange the code and verify the ID token.

        Raises:
            OidcError: state mismatch, failed exchange, invalid token, no review role.
        """
        if flow is None or not secrets.compare_digest(flow.state, state):
            raise OidcError("sign-in state does not match (expired or forged)")
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "client_id": self.client_id,
            "code_verifier": flow.verifier,
        }
        try:
            endpoint = self.metadata()["token_endpoint"]
            if self._client_secret:  # client_secret_basic (OIDC Core §9)
                response = self._http.post(
                    endpoint, data=form, auth=(self.client_id, self._client_secret)
                )
            else:  # a public client: PKCE alone
                response = self._http.post(endpoint, data=form)
            response.raise_for_status()
            tokens = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise OidcError(f"code exchange failed ({type(exc).__name__})") from None
        id_token = tokens.get("id_token") if isinstance(tokens, dict) else None
        if not isinstance(id_token, str):
            raise OidcError("token response has no id_token")
        claims = self.verify_id_token(id_token, nonce=flow.nonce)
        username = str(claims.get("preferred_username") or claims["sub"])
        return Identity(
            issuer=self.issuer,
            subject=str(claims["sub"]),
            username=username,
            role=role_from_claims(claims, self._role_claim),
        )

    def _key(self, kid: str | None, refresh: bool) -> jwt.PyJWK:
        with self._lock:
            if refresh or self._jwks is None or time.monotonic() - self._jwks[0] > _JWKS_TTL_S:
                self._jwks = None
        if self._jwks is None:
            found = self._get_json(str(self.metadata()["jwks_uri"]))
            with self._lock:
                self._jwks = (time.monotonic(), found)
        keys = [k for k in self._jwks[1].get("keys", []) if isinstance(k, dict)]
        for key in keys:
            if kid is None or key.get("kid") == kid:
                try:
                    return jwt.PyJWK(key)
                except jwt.PyJWTError:
                    continue
        raise OidcError("no usable signing key for the ID token")

    def verify_id_token(self, token: str, *, nonce: str) -> dict[str, Any]:
        """OpenID Connect Core §3.1.3.7: signature, iss, aud, exp, iat, nonce.

        Raises:
            OidcError: any check fails.
        """
        try:
            header = jwt.get_unverified_header(token)
            kid = header.get("kid")
            try:
                key = self._key(kid, refresh=False)
            except OidcError:
                key = self._key(kid, refresh=True)  # the provider rotated its keys
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=_ALGORITHMS,
                audience=self.client_id,
                issuer=self.metadata()["issuer"],
                options={"require": ["exp", "iat", "sub", "iss", "aud"]},
                leeway=30,
            )
        except jwt.PyJWTError as exc:
            raise OidcError(f"ID token refused ({type(exc).__name__})") from None
        if not secrets.compare_digest(str(claims.get("nonce", "")), nonce):
            raise OidcError("ID token nonce does not match")
        return claims
