"""An EHR that calls CDS Hooks services: signs JWTs, serves its JWK Set and a FHIR Patient.

Over real HTTP on loopback (``ThreadingHTTPServer``), as an EHR does per CDS Hooks 2.0
§Trusting CDS Clients:

* keys: one ES384 (P-384) and one RS384 (RSA 2048) key, published at
  ``/.well-known/jwks.json``; a second "rogue" pair, published only at ``/rogue/jwks.json``
  (a ``jku`` an attacker would point to);
* :meth:`EhrDouble.token` signs a client JWT (``iss``, ``sub``, ``aud``, ``exp``, ``iat``,
  ``jti``, header ``kid``/``typ``, optional ``jku``) and varies any of them;
  :func:`unsigned_token` and :func:`hmac_token` make the ``none`` and HMAC forgeries;
* ``GET /fhir/Patient/{id}``: the patient, only with ``Authorization: Bearer <token>`` equal
  to :attr:`EhrDouble.access_token` (the ``fhirAuthorization`` grant); each request is
  recorded in :attr:`EhrDouble.requests`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.doubles.http import JsonHandler


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unsigned_token(claims: dict[str, Any]) -> str:
    """An ``alg: none`` token (RFC 7519 §6.1 unsecured JWT)."""
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    return f"{header}.{_b64(json.dumps(claims).encode())}."


def hmac_token(claims: dict[str, Any], secret: bytes, alg: str = "HS384") -> str:
    """An HMAC token keyed with ``secret`` (e.g. the public key: the classic confusion)."""
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384}[alg]
    header = _b64(json.dumps({"alg": alg, "typ": "JWT", "kid": "es384-1"}).encode())
    body = _b64(json.dumps(claims).encode())
    signature = hmac.new(secret, f"{header}.{body}".encode(), digest).digest()
    return f"{header}.{body}.{_b64(signature)}"


class _Keys:
    def __init__(self, prefix: str) -> None:
        self.ec = ec.generate_private_key(ec.SECP384R1())
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec_kid, self.rsa_kid = f"{prefix}es384-1", f"{prefix}rs384-1"

    def jwks(self) -> dict[str, Any]:
        ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.ec.public_key()))
        rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.rsa.public_key()))
        ec_jwk.update(kid=self.ec_kid, use="sig", alg="ES384")
        rsa_jwk.update(kid=self.rsa_kid, use="sig", alg="RS384")
        return {"keys": [ec_jwk, rsa_jwk]}


class EhrDouble:
    """The EHR side of CDS Hooks, on ``127.0.0.1:{port}``.

    Attributes:
        issuer: the ``iss`` it signs with (its base URL).
        client_id: the ``sub``.
        access_token: the bearer token its FHIR endpoint accepts.
        patients: FHIR Patient resources served, by id.
        requests: (method, path, authorization) of every FHIR request.
    """

    def __init__(self) -> None:
        self.keys = _Keys("")
        self.rogue = _Keys("rogue-")
        self.client_id = "ehr-client"
        self.access_token = uuid.uuid4().hex
        self.patients: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self.jwks_fetches = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self.issuer = f"http://127.0.0.1:{self.port}"
        self._thread: threading.Thread | None = None

    @property
    def jwks_url(self) -> str:
        return f"{self.issuer}/.well-known/jwks.json"

    @property
    def rogue_jwks_url(self) -> str:
        return f"{self.issuer}/rogue/jwks.json"

    @property
    def fhir_base(self) -> str:
        return f"{self.issuer}/fhir"

    def start(self) -> EhrDouble:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="ehr-double", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def claims(self, audience: str, /, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": self.client_id,
            "aud": audience,
            "exp": now + 120,
            "iat": now,
            "jti": str(uuid.uuid4()),
        }
        for key, value in overrides.items():
            if value is None:
                claims.pop(key, None)
            else:
                claims[key] = value
        return claims

    def token(
        self,
        audience: str,
        /,
        *,
        alg: str = "ES384",
        rogue: bool = False,
        kid: str | None = None,
        jku: str | None = None,
        **overrides: Any,
    ) -> str:
        """A signed client JWT; ``overrides`` replace claims (``None`` removes one)."""
        keys = self.rogue if rogue else self.keys
        key = keys.ec if alg == "ES384" else keys.rsa
        headers: dict[str, Any] = {
            "typ": "JWT",
            "kid": kid or (keys.ec_kid if alg == "ES384" else keys.rsa_kid),
        }
        if jku:
            headers["jku"] = jku
        return jwt.encode(self.claims(audience, **overrides), key, algorithm=alg, headers=headers)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        double = self

        class Handler(JsonHandler):
            def do_GET(self) -> None:
                if self.path == "/.well-known/jwks.json":
                    double.jwks_fetches += 1
                    self._send(200, double.keys.jwks())
                elif self.path == "/rogue/jwks.json":
                    self._send(200, double.rogue.jwks())
                elif self.path.startswith("/fhir/Patient/"):
                    auth = self.headers.get("Authorization")
                    double.requests.append(("GET", self.path, auth))
                    if auth != f"Bearer {double.access_token}":
                        self._send(401)
                        return
                    patient = double.patients.get(self.path.rsplit("/", 1)[1])
                    if patient:
                        self._send(200, patient)
                    else:
                        self._send(404)
                else:
                    self._send(404)

        return Handler
