"""One patient across sources: the configured mapping between issuers and systems.

DICOM IssuerOfPatientID, HL7 PID-3.4 assigning authority and FHIR ``Patient.identifier.system``
name registers in three vocabularies. ``CDSFUSION_ISSUER_MAP`` (a JSON object) maps each
source spelling to one canonical system, e.g.::

    CDSFUSION_ISSUER_MAP='{"HOSP": "urn:oid:1.2.840.99999.1", "http://hospital.example/mrn":
    "urn:oid:1.2.840.99999.1"}'

so that PID-3 ``12345^^^HOSP^MR``, DICOM PatientID ``12345`` with IssuerOfPatientID ``HOSP``
and FHIR ``{"system": "http://hospital.example/mrn", "value": "12345"}`` are one patient.
Unmapped systems are used as given; an empty issuer becomes
:data:`cds.core.repository.patients.UNQUALIFIED_SYSTEM`. The mapping is applied by
:func:`cds.core.repository.patients.canonical_system` inside ingest; connectors pass it as
``issuer_map``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from cds.core.settings import Settings


def issuer_map(settings: Settings) -> Mapping[str, str]:
    """The configured issuer -> canonical system mapping (read-only, keys stripped)."""
    return MappingProxyType(
        {key.strip(): value.strip() for key, value in settings.issuer_map.items() if key.strip()}
    )
