"""SMART Backend Services and bearer auth against the double's token endpoint."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import SecretStr

from cds.core.settings import Settings
from connectors.fhir.auth import AuthorizationError, SmartBackendServices
from connectors.fhir.client import FhirClient, FhirServerError
from tests.doubles.fhir_server import FhirServerDouble

pytestmark = pytest.mark.integration


def _keypair(algorithm: str) -> tuple[bytes, bytes]:
    key = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if algorithm == "RS384"
        else ec.generate_private_key(ec.SECP384R1())
    )
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


@pytest.fixture
def double_factory() -> Iterator[list[FhirServerDouble]]:
    started: list[FhirServerDouble] = []
    yield started
    for double in started:
        double.stop()


@pytest.mark.parametrize("algorithm", ["RS384", "ES384"])
def test_backend_services_token_is_obtained_once_and_reused(
    algorithm: str, tmp_path: Path, double_factory: list[FhirServerDouble]
) -> None:
    private, public = _keypair(algorithm)
    double = FhirServerDouble(require_auth=True, public_keys={"k1": public}).start()
    double_factory.append(double)
    double.store({"resourceType": "Patient", "id": "p1", "gender": "other"})
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(private)
    settings = Settings(
        fhir_server_url=double.base,
        fhir_client_id="cdsfusion",
        fhir_private_key_file=key_file,
        fhir_private_key_id="k1",
        fhir_jwt_algorithm=algorithm,
    )
    with FhirClient.from_settings(settings) as client:
        assert client.read("Patient", "p1") is not None
        assert list(client.search("Patient")) != []
    assert double.token_requests == 1


def test_refused_assertion_and_missing_token(
    tmp_path: Path, double_factory: list[FhirServerDouble]
) -> None:
    private, _ = _keypair("RS384")
    _, other_public = _keypair("RS384")
    double = FhirServerDouble(require_auth=True, public_keys={"k1": other_public}).start()
    double_factory.append(double)
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(private)
    settings = Settings(
        fhir_server_url=double.base,
        fhir_client_id="c",
        fhir_private_key_file=key_file,
        fhir_private_key_id="k1",
    )
    with FhirClient.from_settings(settings) as client, pytest.raises(AuthorizationError):
        client.read("Patient", "p1")
    with FhirClient(double.base) as anonymous, pytest.raises(FhirServerError) as info:
        anonymous.operation("Patient/p1")
    assert info.value.status == 401


def test_static_bearer_token(double_factory: list[FhirServerDouble]) -> None:
    double = FhirServerDouble(require_auth=True, static_token="s3cr3t-token").start()
    double_factory.append(double)
    double.store({"resourceType": "Patient", "id": "p1"})
    settings = Settings(fhir_server_url=double.base, fhir_bearer_token=SecretStr("s3cr3t-token"))
    with FhirClient.from_settings(settings) as client:
        assert client.read("Patient", "p1") is not None


def test_expired_token_is_renewed(tmp_path: Path, double_factory: list[FhirServerDouble]) -> None:
    private, public = _keypair("ES384")
    double = FhirServerDouble(
        require_auth=True, public_keys={"k1": public}, token_lifetime_s=10
    ).start()
    double_factory.append(double)
    double.store({"resourceType": "Patient", "id": "p1"})
    import httpx

    with httpx.Client() as http:
        auth = SmartBackendServices(
            http=http,
            fhir_base=double.base,
            client_id="c",
            private_key_pem=private,
            key_id="k1",
            algorithm="ES384",
            scope="system/*.read",
        )
        client = FhirClient(double.base, authorization=auth, http=http)
        client.read("Patient", "p1")
        client.read("Patient", "p1")  # 10 s lifetime minus the 30 s margin: renewed each time
    assert auth.tokens_issued == 2 and double.token_requests == 2
