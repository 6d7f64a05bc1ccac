"""Which engine patient a CDS Hooks call is about (CDS Hooks 2.0 §Providing FHIR Resources).

In order:

1. ``context.patientId`` on ``fhirServer`` is already known to the engine (the FHIR
   connector records ``Patient/{id}`` per server): no FHIR data is needed.
2. The prefetched ``patient`` (template ``Patient/{{context.patientId}}``): its
   identifiers are looked up after the issuer mapping (``CDSFUSION_ISSUER_MAP``).
3. Without it, the Patient is read from ``fhirServer`` with the ``fhirAuthorization``
   bearer token (CDS Hooks 2.0 §FHIR Resource Access), within
   ``CDSFUSION_CDS_HOOKS_FHIR_TIMEOUT_S``.
4. Otherwise the data cannot be had: :class:`PrefetchUnavailableError` (HTTP 412,
   CDS Hooks 2.0 §HTTP Response).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from typing import Any

import httpx
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from cds.core.clinical import IdentifierIn
from cds.core.db.models import Patient, PatientIdentifier
from cds.core.errors import InputError
from cds.core.repository.patients import find_patient, surviving_patient_id
from cds.fhir.assessment import FHIR_PATIENT_SYSTEM_PREFIX
from cds.hooks.auth import Principal
from cds.hooks.models import CdsServiceRequest

logger = logging.getLogger(__name__)


class PrefetchUnavailableError(InputError):
    """Required data was neither prefetched nor readable from the FHIR server (412).

    The message starts "required data unavailable" and names the cause, never the data.
    """

    def __init__(self, cause: str) -> None:
        super().__init__(f"required data unavailable: {cause}")


def patient_id_of(request: CdsServiceRequest) -> str:
    """``context.patientId`` (every hook served here has one).

    Raises:
        InputError: the context has no patient id.
    """
    value = request.context.get("patientId")
    if not isinstance(value, str) or not value.strip():
        raise InputError("context.patientId is required")
    return value.strip()


#: On every CDS Hooks call: built once, run as Core (bound ``system`` and ``value``).
_KNOWN = (
    select(PatientIdentifier.patient_id, Patient.merged_into_id)
    .join(Patient, Patient.id == PatientIdentifier.patient_id)
    .where(
        PatientIdentifier.system == bindparam("system"),
        PatientIdentifier.value == bindparam("value"),
    )
)


def known_by_fhir_id(
    *, session: Session, fhir_server: str | None, patient_id: str
) -> uuid.UUID | None:
    """Step 1: the engine patient known as ``Patient/{patient_id}`` on ``fhir_server``."""
    if not fhir_server:
        return None
    row = (
        session.connection()
        .execute(
            _KNOWN,
            {
                "system": FHIR_PATIENT_SYSTEM_PREFIX + fhir_server.rstrip("/"),
                "value": f"Patient/{patient_id}",
            },
        )
        .first()
    )
    if row is None:
        return None
    found, merged_into = row
    # One query for a patient never merged (the usual case); otherwise follow the merges.
    return found if merged_into is None else surviving_patient_id(session=session, patient_id=found)


def _prefetched_patient(request: CdsServiceRequest, patient_id: str) -> dict[str, Any] | None:
    resource = (request.prefetch or {}).get("patient")
    if (
        isinstance(resource, dict)
        and resource.get("resourceType") == "Patient"
        and resource.get("id") in (None, patient_id)
    ):
        return resource
    return None


def _fetch_patient(
    request: CdsServiceRequest, patient_id: str, principal: Principal, timeout_s: float
) -> dict[str, Any]:
    server, grant = request.fhirServer, request.fhirAuthorization
    if not server or grant is None:
        raise PrefetchUnavailableError("patient not prefetched and no fhirAuthorization given")
    if principal.trusted is not None and not principal.trusted.allows_fhir_server(server):
        raise PrefetchUnavailableError("fhirServer not allowed for this issuer")
    url = f"{server.rstrip('/')}/Patient/{patient_id}"
    try:
        response = httpx.get(
            url,
            headers={
                "Authorization": f"Bearer {grant.access_token}",
                "Accept": "application/fhir+json",
            },
            timeout=timeout_s,
        )
    except httpx.HTTPError as exc:
        logger.warning("FHIR server unreachable for a hook call: %s", type(exc).__name__)
        raise PrefetchUnavailableError("FHIR server unreachable") from None
    if response.status_code != 200:
        raise PrefetchUnavailableError(f"FHIR server answered HTTP {response.status_code}")
    try:
        body = response.json()
    except ValueError:
        raise PrefetchUnavailableError("FHIR server answered with invalid JSON") from None
    if not isinstance(body, dict) or body.get("resourceType") != "Patient":
        raise PrefetchUnavailableError("FHIR server did not return a Patient")
    return body


def patient_resource(
    request: CdsServiceRequest, patient_id: str, principal: Principal, *, timeout_s: float
) -> dict[str, Any]:
    """Steps 2 and 3: the prefetched Patient, else the one read from the FHIR server.

    Raises:
        PrefetchUnavailableError: neither is available.
    """
    return _prefetched_patient(request, patient_id) or _fetch_patient(
        request, patient_id, principal, timeout_s
    )


def identifiers_of(resource: Mapping[str, Any]) -> list[IdentifierIn]:
    """The business identifiers of a FHIR Patient."""
    found = []
    for item in resource.get("identifier") or ():
        if isinstance(item, dict) and isinstance(item.get("value"), str):
            found.append(IdentifierIn(str(item.get("system") or ""), item["value"]))
    return found


def find_by_identifiers(
    *, session: Session, resource: Mapping[str, Any], issuer_map: Mapping[str, str]
) -> uuid.UUID | None:
    """The engine patient owning any of the Patient's identifiers."""
    return find_patient(
        session=session, identifiers=identifiers_of(resource), issuer_map=issuer_map
    )
