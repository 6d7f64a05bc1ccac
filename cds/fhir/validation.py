"""Validation of outbound resources against the FHIR R4 models of ``fhir.resources``.

``fhir.resources`` ships R4B models; for RiskAssessment, Provenance, Device, Bundle,
Patient, Observation, ImagingStudy, DocumentReference and OperationOutcome they match R4.
"""

from __future__ import annotations

import importlib
from typing import Any

from cds.core.errors import CdsFusionError


class InvalidResourceError(CdsFusionError):
    """A built resource does not validate: a bug in a builder, never the caller's fault."""


def validate(resource: dict[str, Any]) -> dict[str, Any]:
    """Validate ``resource`` with its ``fhir.resources`` R4B model; returns it unchanged.

    Raises:
        InvalidResourceError: naming the resource type and the failing elements only.
    """
    resource_type = str(resource.get("resourceType", ""))
    if not resource_type.isalpha():
        raise InvalidResourceError("resource without a valid resourceType")
    module = importlib.import_module(f"fhir.resources.R4B.{resource_type.lower()}")
    model = getattr(module, resource_type)
    try:
        model.model_validate(resource)
    except ValueError as exc:
        locations = sorted(
            {".".join(str(p) for p in err.get("loc", ())) for err in getattr(exc, "errors", list)()}
        )
        raise InvalidResourceError(
            f"{resource_type} failed validation at {', '.join(locations) or 'unknown'}"
        ) from None
    return resource
