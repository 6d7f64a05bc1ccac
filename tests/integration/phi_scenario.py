"""Run as a script by test_phi_logging: plant PHI everywhere, with entry-point logging.

Usage: python -m tests.integration.phi_scenario DATABASE_URL NAME MRN
"""

from __future__ import annotations

import datetime as dt
import logging
import sys

from fastapi.testclient import TestClient

from cds.api.app import create_app
from cds.core import migrate
from cds.core.clinical import EventIn, IdentifierIn, ItemIn, SourceItemIn
from cds.core.db.models import EventKind, Protocol
from cds.core.db.session import transaction
from cds.core.errors import ConflictError
from cds.core.logging_setup import configure_logging
from cds.core.repository.ingest import ingest_item
from cds.core.repository.patients import merge_patients
from cds.core.runtime import EngineContext
from cds.core.settings import Settings

T0 = dt.datetime(2026, 5, 4, 10, 0, tzinfo=dt.UTC)


def _adt(control_id: str, name: str, mrn: str) -> bytes:
    family, _, given = name.partition(" ")
    return (
        f"MSH|^~\\&|ADT|HOSP|CDS|HOSP|20260504100000||ADT^A01|{control_id}|P|2.5\r"
        f"PID|1||{mrn}^^^HOSP^MR||{family}^{given}||19500101|M\r"
    ).encode()


def _item(control_id: str, body: bytes, name: str, mrn: str) -> ItemIn:
    return ItemIn(
        source=SourceItemIn(
            protocol=Protocol.HL7V2,
            namespace="ADT^HOSP",
            item_id=control_id,
            content_sha256=SourceItemIn.sha256(body),
            size_bytes=len(body),
            payload=body,
            received_at=T0,
        ),
        identifiers=(IdentifierIn("HOSP", mrn, "MR"),),
        events=(
            EventIn(
                kind=EventKind.DEMOGRAPHICS,
                lineage_key=f"hl7|ADT^HOSP|{mrn}|demographics",
                effective_at=T0,
                value_text=name,
                details={"name": name, "birthDate": "1950-01-01"},
            ),
        ),
    )


def main(url: str, name: str, mrn: str) -> None:
    configure_logging("DEBUG", "text")
    migrate.upgrade(url)
    ctx = EngineContext.build(Settings(database_url=url))
    factory = ctx.session_factory
    body = _adt("PHI0001", name, mrn)
    with transaction(factory) as session:
        first = ingest_item(session=session, item=_item("PHI0001", body, name, mrn))
    with transaction(factory) as session:
        ingest_item(session=session, item=_item("PHI0001", body, name, mrn))
    try:
        with transaction(factory) as session:
            other = _adt("PHI0001", "Other Person", mrn)
            ingest_item(session=session, item=_item("PHI0001", other, name, mrn))
    except ConflictError:
        logging.getLogger("phi_scenario").exception("conflict while ingesting")
    with transaction(factory) as session:
        second = ingest_item(
            session=session,
            item=_item("PHI0002", _adt("PHI0002", name, mrn + "9"), name, mrn + "9"),
        )
        assert first.patient_id and second.patient_id
        merge_patients(
            session=session,
            surviving_id=first.patient_id,
            merged_id=second.patient_id,
            merged_at=T0,
        )
    with TestClient(create_app(ctx)) as client:
        client.get(f"/fhir/Patient?identifier=HOSP|{mrn}&name={name}")
        client.get(f"/fhir/Patient/{mrn}")
        client.get(f"/readyz?patient={mrn}")
    ctx.close()
    logging.getLogger("phi_scenario").info("scenario complete")


if __name__ == "__main__":
    main(*sys.argv[1:4])
