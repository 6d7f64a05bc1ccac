"""``cdsfusion fhir subscribe`` and ``fhir backfill`` against the double (SQLite)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from cds.core import migrate
from cds.core.db.models import FhirSubscription, SourceItem, TimelineEvent
from cds.core.db.session import make_engine, make_session_factory
from connectors.fhir.cli import fhir
from tests.doubles.fhir_server import FhirServerDouble

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).parents[2] / "fixtures" / "fhir"


@pytest.fixture
def double() -> Iterator[FhirServerDouble]:
    server = FhirServerDouble().start()
    yield server
    server.stop()


@pytest.fixture
def env(double: FhirServerDouble, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    migrate.upgrade(sqlite_url)
    monkeypatch.setenv("CDSFUSION_DATABASE_URL", sqlite_url)
    monkeypatch.setenv("CDSFUSION_FHIR_SERVER_URL", double.base)
    monkeypatch.setenv("CDSFUSION_FHIR_NOTIFY_BASE_URL", "https://engine.example.org")
    return sqlite_url


def test_subscribe_creates_classic_and_backport_subscriptions(
    double: FhirServerDouble, env: str
) -> None:
    runner = CliRunner()
    classic = runner.invoke(
        fhir,
        ["subscribe", "--criteria", "Observation?category=laboratory", "--criteria", "Encounter"],
    )
    assert classic.exit_code == 0, classic.output
    assert classic.output.count("https://engine.example.org/fhir/notify/") == 2
    backport = runner.invoke(
        fhir,
        [
            "subscribe",
            "--channel",
            "backport",
            "--topic",
            "http://example.org/topic/labs",
            "--payload",
            "id-only",
            "--query",
            "Observation",
        ],
    )
    assert backport.exit_code == 0, backport.output
    created = [s.resource for s in double.subscriptions.values()]
    assert sorted(r["criteria"] for r in created) == [
        "Encounter",
        "Observation?category=laboratory",
        "http://example.org/topic/labs",
    ]
    topic = next(r for r in created if r["criteria"].startswith("http"))
    assert topic["channel"]["_payload"]["extension"][0]["valueCode"] == "id-only"
    engine = make_engine(env)
    with make_session_factory(engine)() as session:
        assert session.scalar(select(func.count()).select_from(FhirSubscription)) == 3
    engine.dispose()
    assert runner.invoke(fhir, ["subscribe"]).exit_code == 2


def test_backfill_pulls_a_patient_window(double: FhirServerDouble, env: str) -> None:
    bundle = json.loads((FIXTURES / "synthea_patient_bundle.json").read_text())
    for entry in bundle["entry"]:
        double.store(entry["resource"])
    pat = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    mrn = next(
        i for i in pat["identifier"] if i.get("system") == "http://hospital.smarthealthit.org"
    )
    result = CliRunner().invoke(
        fhir, ["backfill", "--patient", f"{mrn['system']}|{mrn['value']}", "--since", "2000-01-01"]
    )
    assert result.exit_code == 0, result.output
    assert "stored" in result.output
    engine = make_engine(env)
    with make_session_factory(engine)() as session:
        items = session.scalar(select(func.count()).select_from(SourceItem))
        events = session.scalar(select(func.count()).select_from(TimelineEvent))
    engine.dispose()
    assert items == 1 + 78 + 8 + 3 + 3 + 2 and events > 90
    again = CliRunner().invoke(
        fhir, ["backfill", "--patient", f"Patient/{pat['id']}", "--since", "2000-01-01"]
    )
    assert again.exit_code == 0 and "0 stored" in again.output
