"""Pulling one patient's resources in a time window by search (``cdsfusion fhir backfill``).

For subscriptions that started late, and for the aligner when a bundle lacks recent data:
the Patient is read, then each type is searched with ``patient=`` and a date window
(``date``; ImagingStudy ``started``), and every page is ingested like a notification
(same dedup: a version already on the timeline is a duplicate).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session, sessionmaker

from cds.core.db.session import transaction
from cds.core.errors import InputError
from connectors.fhir.client import FhirClient
from connectors.fhir.normalize import Origin, normalize_resource
from connectors.fhir.resources import check_resource
from connectors.fhir.store import Counts, ingest_items

logger = logging.getLogger(__name__)

DEFAULT_TYPES = (
    "Encounter",
    "Observation",
    "DiagnosticReport",
    "DocumentReference",
    "ImagingStudy",
)
DATE_PARAMETER = {
    "Encounter": "date",
    "Observation": "date",
    "DiagnosticReport": "date",
    "DocumentReference": "date",
    "ImagingStudy": "started",
}


class PatientNotFoundError(InputError):
    """The patient named for backfill does not exist on the server (or is ambiguous)."""


def resolve_patient_id(client: FhirClient, patient: str) -> str:
    """``Patient/123`` or ``123`` as is; ``system|value`` by an identifier search."""
    if "|" in patient:
        matches = list(client.search("Patient", {"identifier": patient}))
        if len(matches) != 1:
            raise PatientNotFoundError(f"identifier matches {len(matches)} patients")
        return str(matches[0]["id"])
    return patient.removeprefix("Patient/")


def backfill_patient(
    *,
    client: FhirClient,
    session_factory: sessionmaker[Session],
    tz: ZoneInfo,
    patient: str,
    since: dt.datetime,
    until: dt.datetime | None = None,
    types: Sequence[str] = DEFAULT_TYPES,
    issuer_map: Mapping[str, str] | None = None,
) -> Counts:
    """Ingest the patient and their resources of ``types`` dated in ``[since, until]``.

    Raises:
        PatientNotFoundError: the patient is not on the server.
        FhirServerError: the server failed (what was committed before stays).
    """
    patient_id = resolve_patient_id(client, patient)
    origin = Origin(base=client.base, tz=tz, received_at=dt.datetime.now(dt.UTC), sender="backfill")
    counts = Counts()
    found = client.read("Patient", patient_id)
    if found is None:
        raise PatientNotFoundError("patient not found on the server")
    _ingest_page(session_factory, [found], origin, counts, issuer_map)
    for resource_type in types:
        window = [f"ge{since.isoformat()}"] + ([f"le{until.isoformat()}"] if until else [])
        params: dict[str, str | list[str]] = {
            "patient": f"Patient/{patient_id}",
            DATE_PARAMETER.get(resource_type, "date"): window,
            "_count": "100",
        }
        _ingest_page(
            session_factory, list(client.search(resource_type, params)), origin, counts, issuer_map
        )
    logger.info("backfill: %s", counts.describe())
    return counts


def _ingest_page(
    session_factory: sessionmaker[Session],
    resources: list[dict[str, object]],
    origin: Origin,
    counts: Counts,
    issuer_map: Mapping[str, str] | None,
) -> None:
    items = []
    for resource in resources:
        try:
            item = normalize_resource(check_resource(resource), origin)
        except InputError:
            logger.warning("backfill skipped an invalid resource")
            counts.ignored += 1
            continue
        if item is None:
            counts.ignored += 1
        else:
            items.append(item)
    with transaction(session_factory) as session:
        ingest_items(session=session, items=items, counts=counts, issuer_map=issuer_map)
