"""The engine's HTTP app with the FHIR receiver, and the FHIR server double, on loopback."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import SecretStr
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from cds.api.app import create_app
from cds.api.server import HttpServer
from cds.core.db.models import (
    FhirSubscription,
    PayloadContent,
    SourceItem,
    SubscriptionChannel,
    TimelineEvent,
)
from cds.core.db.session import make_session_factory
from cds.core.runtime import EngineContext
from cds.core.settings import Settings
from connectors.fhir.client import FhirClient
from connectors.fhir.routes import install
from connectors.fhir.subscribe import subscribe
from tests.conftest import free_port
from tests.doubles.fhir_server import FhirServerDouble

WEBHOOK_SECRET = "medplum-test-secret-0123456789"


@dataclass
class Harness:
    """One engine HTTP app and one upstream double."""

    double: FhirServerDouble
    ctx: EngineContext
    url: str
    session_factory: sessionmaker[Session]

    def subscribe(
        self, channel: SubscriptionChannel, payload: PayloadContent, **kwargs: Any
    ) -> FhirSubscription:
        with FhirClient(self.double.base) as client:
            rows = subscribe(
                session_factory=self.session_factory,
                client=client,
                notify_base=self.url,
                channel=channel,
                payload=payload,
                **kwargs,
            )
        return rows[0]

    def events(self, *, current_only: bool = False) -> list[TimelineEvent]:
        """Timeline events of items from this double's namespace."""
        with self.session_factory() as session:
            query = (
                select(TimelineEvent)
                .join(SourceItem, SourceItem.id == TimelineEvent.source_item_id)
                .where(SourceItem.namespace == self.double.base)
            )
            rows = list(session.scalars(query))
        return [e for e in rows if not current_only or e.status.value == "current"]

    def items(self) -> list[SourceItem]:
        with self.session_factory() as session:
            return list(
                session.scalars(select(SourceItem).where(SourceItem.namespace == self.double.base))
            )

    def subscription(self, key: str) -> FhirSubscription:
        with self.session_factory() as session:
            row = session.scalars(
                select(FhirSubscription).where(FhirSubscription.endpoint_key == key)
            ).one()
        return row


@pytest.fixture
def make_harness(db_engine: Engine) -> Iterator[Callable[..., Harness]]:
    started: list[tuple[HttpServer, FhirServerDouble]] = []

    def make(double: FhirServerDouble | None = None, **settings: Any) -> Harness:
        upstream = (double or FhirServerDouble()).start()
        values: dict[str, Any] = {
            "fhir_server_url": upstream.base,
            "site_timezone": "Europe/Paris",
            "fhir_notify_max_bytes": 1_000_000,
            "fhir_webhook_secret": SecretStr(WEBHOOK_SECRET),
        }
        values.update(settings)
        ctx = EngineContext(
            settings=Settings(**values),
            engine=db_engine,
            session_factory=make_session_factory(db_engine),
        )
        port = free_port()
        server = HttpServer(create_app(ctx, installers=[install]), host="127.0.0.1", port=port)
        server.start()
        started.append((server, upstream))
        return Harness(
            double=upstream,
            ctx=ctx,
            url=f"http://127.0.0.1:{port}",
            session_factory=ctx.session_factory,
        )

    yield make
    for server, upstream in started:
        server.stop()
        upstream.stop()


def patient(mrn: str | None = None, pid: str | None = None) -> dict[str, Any]:
    """A synthetic Patient (no real person)."""
    return {
        "resourceType": "Patient",
        "id": pid or uuid.uuid4().hex[:16],
        "identifier": [
            {"system": "http://hospital.example/mrn", "value": mrn or uuid.uuid4().hex[:10]}
        ],
        "name": [{"family": "Fictitious", "given": ["Robin"]}],
        "gender": "female",
        "birthDate": "1961-07-04",
    }


def observation(
    patient_id: str, *, oid: str | None = None, value: float = 4.1, code: str = "2524-7"
) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": oid or uuid.uuid4().hex[:16],
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": "Lactate"}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": "2024-06-01T09:30:00",
        "valueQuantity": {
            "value": value,
            "unit": "mmol/L",
            "system": "http://unitsofmeasure.org",
            "code": "mmol/L",
        },
    }
