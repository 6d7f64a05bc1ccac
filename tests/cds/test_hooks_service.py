"""CDS Hooks calls end to end over the app: prefetch, FHIR reads, 412, cards, CORS, feedback.

Verification is switched off here (the embedded demo switch); ``test_hooks_auth.py`` covers
the JWT. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from cds.core.clinical import EventIn, IdentifierIn
from cds.core.db.models import (
    AuditEntry,
    Bundle,
    BundleStatus,
    EventKind,
    Prediction,
    Protocol,
)
from cds.core.db.models import PredictionStatus as Status
from cds.core.db.session import make_session_factory, transaction
from cds.core.errors import ConfigurationError
from cds.core.settings import Mode
from tests.cds.support import (
    EHR_BASE,
    MRN_SYSTEM,
    Seeded,
    _ingest,
    engine_context,
    make_prediction,
    output_app,
    seed_committed,
    settings_for,
)
from tests.doubles.ehr import EhrDouble

pytestmark = pytest.mark.integration

PATIENT_VIEW = "/cds-services/cxr-deterioration-patient-view"


@pytest.fixture
def client(db_engine: Engine, tmp_path: Path) -> Iterator[TestClient]:
    ctx = engine_context(db_engine, settings_for(db_engine, tmp_path))
    with TestClient(output_app(ctx)) as test_client:
        yield test_client


def request(
    patient_id: str, *, hook: str = "patient-view", server: str = EHR_BASE, **extra: Any
) -> dict[str, Any]:
    return {
        "hook": hook,
        "hookInstance": str(uuid.uuid4()),
        "fhirServer": server,
        "context": {"userId": "Practitioner/1", "patientId": patient_id},
        **extra,
    }


def cards(response: Any) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    return list(response.json()["cards"])


def test_patient_known_by_fhir_id_needs_no_prefetch(client: TestClient, db_engine: Engine) -> None:
    seeded = seed_committed(db_engine)
    (card,) = cards(client.post(PATIENT_VIEW, json=request(seeded.fhir_patient_id)))
    assert card["uuid"] == str(seeded.prediction_id)
    assert card["indicator"] == "critical" and "62%" in card["summary"]


def test_prefetched_patient_identifies_the_patient(client: TestClient, db_engine: Engine) -> None:
    seeded = seed_committed(db_engine)
    prefetch = {
        "patient": {
            "resourceType": "Patient",
            "id": "elsewhere-1",
            "identifier": [{"system": MRN_SYSTEM, "value": seeded.mrn}],
        }
    }
    body = request("elsewhere-1", server="http://other-ehr.example/fhir", prefetch=prefetch)
    (card,) = cards(client.post(PATIENT_VIEW, json=body))
    assert card["uuid"] == str(seeded.prediction_id)


def test_without_prefetch_the_fhir_server_is_read_with_fhir_authorization(
    client: TestClient, db_engine: Engine
) -> None:
    seeded = seed_committed(db_engine)
    ehr = EhrDouble().start()
    try:
        ehr.patients["p-9"] = {
            "resourceType": "Patient",
            "id": "p-9",
            "identifier": [{"system": MRN_SYSTEM, "value": seeded.mrn}],
        }
        grant = {
            "access_token": ehr.access_token,
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "user/Patient.read",
            "subject": "cds-service",
        }
        body = request("p-9", server=ehr.fhir_base, fhirAuthorization=grant)
        (card,) = cards(client.post(PATIENT_VIEW, json=body))
        assert card["uuid"] == str(seeded.prediction_id)
        assert ehr.requests == [("GET", "/fhir/Patient/p-9", f"Bearer {ehr.access_token}")]

        grant["access_token"] = "revoked"
        refused = client.post(
            PATIENT_VIEW, json=request("p-9", server=ehr.fhir_base, fhirAuthorization=grant)
        )
        assert refused.status_code == 412
    finally:
        ehr.stop()


def test_412_when_required_data_cannot_be_had(client: TestClient) -> None:
    body = request("unknown-7", prefetch={"patient": None})
    response = client.post(PATIENT_VIEW, json=body)
    assert response.status_code == 412
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "required data unavailable" in outcome["issue"][0]["diagnostics"]
    down = request(
        "unknown-7",
        server="http://127.0.0.1:9/fhir",
        fhirAuthorization={
            "access_token": "t",
            "token_type": "Bearer",
            "expires_in": 60,
            "scope": "s",
            "subject": "c",
        },
    )
    assert client.post(PATIENT_VIEW, json=down).status_code == 412


def test_a_patient_the_engine_does_not_know_gets_no_cards(client: TestClient) -> None:
    prefetch = {
        "patient": {
            "resourceType": "Patient",
            "identifier": [{"system": MRN_SYSTEM, "value": "nobody"}],
        }
    }
    assert cards(client.post(PATIENT_VIEW, json=request("x", prefetch=prefetch))) == []


def test_not_enough_data_card(client: TestClient, db_engine: Engine) -> None:
    seeded = seed_committed(
        db_engine, status=Status.INSUFFICIENT_DATA, bundle_status=BundleStatus.INSUFFICIENT
    )
    (card,) = cards(client.post(PATIENT_VIEW, json=request(seeded.fhir_patient_id)))
    assert card["indicator"] == "info"
    assert card["summary"].startswith("Not enough data for") and card["summary"].endswith(
        "missing image"
    )
    assert "%" not in card["summary"] + card["detail"]


def test_pending_card_while_scoring(client: TestClient, db_engine: Engine) -> None:
    seeded = seed_committed(db_engine, with_prediction=False, bundle_status=BundleStatus.QUEUED)
    (card,) = cards(client.post(PATIENT_VIEW, json=request(seeded.fhir_patient_id)))
    assert card["indicator"] == "info" and "pending" in card["summary"]


def test_waiting_card_before_any_anchor(client: TestClient, db_engine: Engine) -> None:
    tag = uuid.uuid4().hex[:8]
    with transaction(make_session_factory(db_engine)) as session:
        _ingest(
            session,
            protocol=Protocol.FHIR,
            namespace=EHR_BASE,
            item_id=f"Observation/o-{tag}",
            identifiers=(IdentifierIn(f"urn:cdsfusion:fhir:{EHR_BASE}", f"Patient/w-{tag}"),),
            received=dt.datetime.now(dt.UTC),
            events=(
                EventIn(
                    kind=EventKind.OBSERVATION,
                    lineage_key=f"fhir|{EHR_BASE}|Observation/o-{tag}",
                    effective_at=dt.datetime.now(dt.UTC),
                ),
            ),
        )
    (card,) = cards(client.post(PATIENT_VIEW, json=request(f"w-{tag}")))
    assert card["summary"].endswith("waiting for a CR/DX study of the chest")


def supersede(db_engine: Engine, seeded: Seeded) -> uuid.UUID:
    """A newer prediction (30 %, model 1.3.0) supersedes the seeded one; its id."""
    newer = uuid.uuid4()
    with transaction(make_session_factory(db_engine)) as session:
        bundle = session.get(Bundle, seeded.bundle_id)
        old = session.get(Prediction, seeded.prediction_id)
        assert bundle is not None and old is not None
        newest = make_prediction(
            newer, bundle, probability=0.3, created_at=old.created_at + dt.timedelta(hours=1)
        )
        newest.model_version = "1.3.0"
        session.add(newest)
        session.flush()
        old.status, old.superseded_by_id = Status.SUPERSEDED, newer
    return newer


def test_newest_prediction_is_shown_after_supersession(
    client: TestClient, db_engine: Engine
) -> None:
    seeded = seed_committed(db_engine)
    newer = supersede(db_engine, seeded)
    (card,) = cards(client.post(PATIENT_VIEW, json=request(seeded.fhir_patient_id)))
    assert card["uuid"] == str(newer) and card["indicator"] == "warning"


def test_cards_follow_the_stored_state_from_call_to_call(
    client: TestClient, db_engine: Engine
) -> None:
    """Each call reflects what is stored now: a served card is never replayed stale."""
    seeded = seed_committed(db_engine)
    body = request(seeded.fhir_patient_id)
    (first,) = cards(client.post(PATIENT_VIEW, json=body))
    assert first["uuid"] == str(seeded.prediction_id) and first["indicator"] == "critical"
    assert cards(client.post(PATIENT_VIEW, json=body)) == [first]
    factory = make_session_factory(db_engine)
    newer = supersede(db_engine, seeded)
    (second,) = cards(client.post(PATIENT_VIEW, json=body))
    assert second["uuid"] == str(newer) and second["indicator"] == "warning"
    with transaction(factory) as session:
        bundle = session.get(Bundle, seeded.bundle_id)
        assert bundle is not None
        later = Bundle(
            **{
                column: getattr(bundle, column)
                for column in ("task_id", "task_version", "patient_id", "anchor_event_id")
            },
            anchor_key=f"{bundle.anchor_key}|later",
            anchor_at=bundle.anchor_at + dt.timedelta(days=1),
            window_start=bundle.window_start + dt.timedelta(days=1),
            window_end=bundle.window_end + dt.timedelta(days=1),
            content_hash="c" * 64,
            status=BundleStatus.QUEUED,
            late_until=bundle.late_until + dt.timedelta(days=1),
        )
        session.add(later)
    (third,) = cards(client.post(PATIENT_VIEW, json=body))
    assert "pending" in third["summary"]
    with transaction(factory) as session:
        session.add(make_prediction(uuid.uuid4(), later, status=Status.INSUFFICIENT_DATA))
        queued = session.get(Bundle, later.id)
        assert queued is not None
        queued.status = BundleStatus.INSUFFICIENT
    (fourth,) = cards(client.post(PATIENT_VIEW, json=body))
    assert fourth["summary"].startswith("Not enough data for")


@pytest.mark.parametrize("hook", ["order-select", "order-sign"])
def test_order_hooks(client: TestClient, db_engine: Engine, hook: str) -> None:
    seeded = seed_committed(db_engine)
    body = request(seeded.fhir_patient_id, hook=hook)
    body["context"]["draftOrders"] = {"resourceType": "Bundle", "type": "collection", "entry": []}
    (card,) = cards(client.post(f"/cds-services/cxr-deterioration-{hook}", json=body))
    assert card["uuid"] == str(seeded.prediction_id)
    wrong = client.post(PATIENT_VIEW, json=body)
    assert wrong.status_code == 400


def test_bad_requests(client: TestClient) -> None:
    assert client.post("/cds-services/no-such-service", json=request("x")).status_code == 404
    assert client.post(PATIENT_VIEW, content=b"{oops").status_code == 400
    no_patient = request("x")
    no_patient["context"] = {"userId": "Practitioner/1"}
    assert client.post(PATIENT_VIEW, json=no_patient).status_code == 400


def test_cors_for_browser_based_ehrs_on_cds_paths_only(
    client: TestClient, db_engine: Engine
) -> None:
    origin = {"Origin": "https://ehr-app.example"}
    preflight = client.options(
        PATIENT_VIEW,
        headers={
            **origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "*"
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    discovery = client.get("/cds-services", headers=origin)
    assert discovery.headers["access-control-allow-origin"] == "*"
    assert "access-control-allow-origin" not in client.get("/healthz", headers=origin).headers


def test_feedback_goes_into_the_audit_log(client: TestClient, db_engine: Engine) -> None:
    seeded: Seeded = seed_committed(db_engine)
    card_uuid = str(seeded.prediction_id)
    body = {
        "feedback": [
            {
                "card": card_uuid,
                "outcome": "overridden",
                "overrideReason": {
                    "reason": {
                        "code": "already-addressed",
                        "system": "urn:cdsfusion:override-reason",
                    },
                    "userComment": "Seen by the rapid response team.",
                },
                "outcomeTimestamp": "2026-03-02T10:05:00Z",
            }
        ]
    }
    response = client.post(f"{PATIENT_VIEW}/feedback", json=body)
    assert response.status_code == 200
    with make_session_factory(db_engine)() as session:
        entry = session.scalar(
            select(AuditEntry).where(
                AuditEntry.action == "cds.feedback", AuditEntry.entity_id == card_uuid
            )
        )
    assert entry is not None and entry.entity_type == "card"
    assert entry.details["prediction_id"] == card_uuid
    assert entry.details["outcome"] == "overridden"
    assert entry.details["override_reason"]["code"] == "already-addressed"
    assert entry.details["has_user_comment"] is True
    assert "rapid response" not in str(entry.details)


def test_disabled_verification_is_refused_outside_embedded_mode(
    db_engine: Engine, tmp_path: Path
) -> None:
    settings = settings_for(db_engine, tmp_path, mode=Mode.PRODUCTION, secret_key="x" * 40)
    with pytest.raises(ConfigurationError):
        output_app(engine_context(db_engine, settings))


def test_disabled_verification_says_so_loudly(
    db_engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="cds.hooks.routes"):
        output_app(engine_context(db_engine, settings_for(db_engine, tmp_path)))
    assert any("verification is OFF" in r.getMessage() for r in caplog.records)


def test_model_card_page_and_icon(client: TestClient) -> None:
    page = client.get("/models/cxr-fusion-demo/1.2.0")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "&lt;only&gt;" in page.text  # the card's text is escaped
    markdown = client.get("/models/cxr-fusion-demo/1.2.0", headers={"Accept": "text/markdown"})
    assert markdown.text.startswith("# Model card")
    assert client.get("/models/cxr-fusion-demo/0.0.9").status_code == 404
    icon = client.get("/models/icon.png")
    assert icon.content.startswith(b"\x89PNG") and icon.headers["content-type"] == "image/png"
