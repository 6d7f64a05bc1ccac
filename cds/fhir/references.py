"""Where a reference in an outbound resource points: the engine's views or the EHR's server.

Served by the engine (``target_base`` ``None``), the engine's own resources are relative
(``Observation/{uuid}``, resolved against ``/fhir``) and inputs that came from a FHIR
server are absolute URLs on that server. Written to an upstream server, references to
that server's own resources are relative (``Observation/123``), inputs from other servers
absolute, and the engine's views absolute (``{public base}/fhir/...``) so the EHR can
follow them back. FHIR R4 §2.3.0 (References) allows both forms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cds.fhir.assessment import InputRef, PatientRef


def _strip(base: str) -> str:
    return base.rstrip("/")


@dataclass(frozen=True)
class ReferenceStyle:
    """How to write references for one destination.

    Attributes:
        engine_fhir_base: absolute base of the engine's FHIR views.
        target_base: the upstream server's base; ``None`` when the engine serves the
            resource itself.
    """

    engine_fhir_base: str
    target_base: str | None = None

    def engine(self, local: str) -> dict[str, Any]:
        """A resource the engine serves (a view, or an output it also writes upstream)."""
        if self.target_base is None:
            return {"reference": local}
        return {"reference": f"{_strip(self.engine_fhir_base)}/{local}"}

    def output(self, local: str) -> dict[str, Any]:
        """One of the outputs (RiskAssessment, Device, Provenance), written with the rest."""
        return {"reference": local}

    def origin(self, base: str, ref: str) -> dict[str, Any]:
        """A resource on a FHIR server the engine received it from."""
        if self.target_base is not None and _strip(base) == _strip(self.target_base):
            return {"reference": ref}
        return {"reference": f"{_strip(base)}/{ref}"}

    def input(self, item: InputRef) -> dict[str, Any] | None:
        """An input: at its origin when it came from FHIR, else the engine's view."""
        if item.origin_base and item.origin_ref:
            return self.origin(item.origin_base, item.origin_ref)
        if item.local:
            return self.engine(item.local)
        return None

    def patient(self, patient: PatientRef) -> dict[str, Any]:
        """The subject: the engine's Patient view, or on the target, its id or identifier.

        Upstream, a patient known there by id is ``Patient/{id}``; otherwise a logical
        reference by its first business identifier (R4 Reference.identifier), and only
        without any identifier the engine's absolute Patient view.
        """
        if self.target_base is None:
            return {"reference": f"Patient/{patient.id}"}
        known = patient.fhir_ids.get(_strip(self.target_base))
        if known:
            return {"reference": known}
        for system, value, type_code in patient.identifiers:
            identifier: dict[str, Any] = {"system": system, "value": value}
            if type_code:
                identifier["type"] = {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                            "code": type_code,
                        }
                    ]
                }
            return {"type": "Patient", "identifier": identifier}
        return self.engine(f"Patient/{patient.id}")
