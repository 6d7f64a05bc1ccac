"""The CDS Client's JWT on every call: a test-double EHR signs, serves its JWK Set over HTTP,
and varies iss, aud, exp, iat, jti, alg, kid, jku and the signature; each bad one is a bare 401.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from cds.api.server import HttpServer
from tests.cds.support import EHR_BASE, engine_context, output_app, seed_committed, settings_for
from tests.conftest import free_port
from tests.doubles.ehr import EhrDouble, hmac_token, unsigned_token

pytestmark = pytest.mark.integration

SERVICE = "cxr-deterioration-patient-view"
AUD = f"https://cds.example.org/cds-services/{SERVICE}"


@pytest.fixture
def ehr() -> Iterator[EhrDouble]:
    double = EhrDouble().start()
    yield double
    double.stop()


def _client(engine: Engine, tmp_path: Path, issuers: dict[str, Any]) -> TestClient:
    path = tmp_path / "issuers.json"
    path.write_text(json.dumps(issuers), encoding="utf-8")
    settings = settings_for(
        engine, tmp_path, cds_hooks_auth_disabled=False, cds_hooks_issuers_file=path
    )
    return TestClient(output_app(engine_context(engine, settings)))


@pytest.fixture
def client(migrated_sqlite: Engine, tmp_path: Path, ehr: EhrDouble) -> Iterator[TestClient]:
    with _client(migrated_sqlite, tmp_path, {ehr.issuer: {"jwks_url": ehr.jwks_url}}) as c:
        yield c


@pytest.fixture
def body(migrated_sqlite: Engine) -> dict[str, Any]:
    seeded = seed_committed(migrated_sqlite)
    return {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "fhirServer": EHR_BASE,
        "context": {"userId": "Practitioner/1", "patientId": seeded.fhir_patient_id},
    }


def _call(client: TestClient, body: dict[str, Any], token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return client.post(f"/cds-services/{SERVICE}", json=body, headers=headers)


def _assert_bare_401(response: httpx.Response) -> None:
    assert response.status_code == 401
    assert response.content == b""
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("alg", ["ES384", "RS384"])
def test_signed_token_is_accepted(
    client: TestClient, body: dict[str, Any], ehr: EhrDouble, alg: str
) -> None:
    response = _call(client, body, ehr.token(AUD, alg=alg))
    assert response.status_code == 200
    assert response.json()["cards"][0]["indicator"] == "critical"


def _now() -> int:
    return int(time.time())


BAD_CLAIMS: dict[str, dict[str, Any]] = {
    "untrusted iss": {"iss": "https://intruder.example"},
    "other aud": {"aud": "https://cds.example.org/cds-services/another-service"},
    "no aud": {"aud": None},
    "expired": {"exp": _now() - 600},
    "lifetime over 5 min": {"exp": _now() + 3600},
    "no exp": {"exp": None},
    "iat in the future": {"iat": _now() + 600},
    "no iat": {"iat": None},
    "no jti": {"jti": None},
}


@pytest.mark.parametrize("case", sorted(BAD_CLAIMS))
def test_bad_claims_are_refused(
    client: TestClient, body: dict[str, Any], ehr: EhrDouble, case: str
) -> None:
    _assert_bare_401(_call(client, body, ehr.token(AUD, **BAD_CLAIMS[case])))


def test_replayed_jti_is_refused(client: TestClient, body: dict[str, Any], ehr: EhrDouble) -> None:
    token = ehr.token(AUD)
    assert _call(client, body, token).status_code == 200
    _assert_bare_401(_call(client, body, token))
    same_jti = ehr.token(AUD, jti=json.loads(_segment(token, 1))["jti"])
    _assert_bare_401(_call(client, body, same_jti))


def _segment(token: str, index: int) -> bytes:
    part = token.split(".")[index]
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def _public_pem(ehr: EhrDouble) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return ehr.keys.ec.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_forged_algorithms_and_signatures_are_refused(
    client: TestClient, body: dict[str, Any], ehr: EhrDouble
) -> None:
    claims = ehr.claims(AUD)
    forged = {
        "alg none": unsigned_token(claims),
        "HS384 keyed with the public key": hmac_token(ehr.claims(AUD), _public_pem(ehr)),
        "HS256": hmac_token(ehr.claims(AUD), b"secret", alg="HS256"),
        "RS256 (not accepted)": __import__("jwt").encode(
            ehr.claims(AUD), ehr.keys.rsa, algorithm="RS256", headers={"kid": "rs384-1"}
        ),
        "other key, real kid": ehr.token(AUD, rogue=True, kid="es384-1"),
        "other key, its own kid": ehr.token(AUD, rogue=True),
        "jku not allowed": ehr.token(AUD, rogue=True, jku=ehr.rogue_jwks_url),
        "garbage": "not.a.jwt",
    }
    good = ehr.token(AUD)
    head, _, signature = good.split(".")
    tampered = json.loads(_segment(good, 1))
    tampered["sub"] = "someone-else"
    forged["payload changed after signing"] = ".".join(
        [
            head,
            base64.urlsafe_b64encode(json.dumps(tampered).encode()).decode().rstrip("="),
            signature,
        ]
    )
    for name, token in forged.items():
        response = _call(client, body, token)
        assert response.status_code == 401, name
        assert response.content == b"", name


def test_missing_or_other_scheme_is_refused(client: TestClient, body: dict[str, Any]) -> None:
    _assert_bare_401(_call(client, body, None))
    response = client.post(
        f"/cds-services/{SERVICE}", json=body, headers={"Authorization": "Basic dXNlcjpwYXNz"}
    )
    _assert_bare_401(response)


def test_authentication_comes_before_the_body_is_read(client: TestClient) -> None:
    response = client.post(f"/cds-services/{SERVICE}", content=b"{not json")
    _assert_bare_401(response)


def test_feedback_needs_a_valid_token_too(client: TestClient, ehr: EhrDouble) -> None:
    feedback = {"feedback": []}
    url = f"/cds-services/{SERVICE}/feedback"
    _assert_bare_401(client.post(url, json=feedback))
    ok = client.post(url, json=feedback, headers={"Authorization": f"Bearer {ehr.token(AUD)}"})
    assert ok.status_code == 200


def test_jwks_is_cached(client: TestClient, body: dict[str, Any], ehr: EhrDouble) -> None:
    for _ in range(3):
        assert _call(client, body, ehr.token(AUD)).status_code == 200
    assert ehr.jwks_fetches == 1


def test_jku_is_used_only_where_allowed_for_the_issuer(
    migrated_sqlite: Engine, tmp_path: Path, ehr: EhrDouble, body: dict[str, Any]
) -> None:
    issuers = {
        ehr.issuer: {
            "jwks_url": ehr.jwks_url,
            "jku_allowed": True,
            "jku_urls": [ehr.rogue_jwks_url],
        }
    }
    with _client(migrated_sqlite, tmp_path, issuers) as client:
        allowed = ehr.token(AUD, rogue=True, jku=ehr.rogue_jwks_url)
        assert _call(client, body, allowed).status_code == 200
        elsewhere = ehr.token(AUD, rogue=True, jku="http://127.0.0.1:9/other.json")
        _assert_bare_401(_call(client, body, elsewhere))


def test_over_real_http(
    migrated_sqlite: Engine, tmp_path: Path, ehr: EhrDouble, body: dict[str, Any]
) -> None:
    path = tmp_path / "issuers.yaml"
    path.write_text(f'"{ehr.issuer}":\n  jwks_url: "{ehr.jwks_url}"\n', encoding="utf-8")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = settings_for(
        migrated_sqlite,
        tmp_path,
        cds_hooks_auth_disabled=False,
        cds_hooks_issuers_file=path,
        public_base_url=base,
        http_port=port,
    )
    server = HttpServer(
        output_app(engine_context(migrated_sqlite, settings)), host="127.0.0.1", port=port
    )
    server.start()
    try:
        url = f"{base}/cds-services/{SERVICE}"
        ok = httpx.post(url, json=body, headers={"Authorization": f"Bearer {ehr.token(url)}"})
        assert ok.status_code == 200 and ok.json()["cards"]
        wrong = httpx.post(url, json=body, headers={"Authorization": f"Bearer {ehr.token(AUD)}"})
        _assert_bare_401(wrong)
    finally:
        server.stop()
