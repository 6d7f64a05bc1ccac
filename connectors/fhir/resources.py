"""Checking inbound FHIR R4 JSON before it is normalized: shape, type, id, content.

Resources are validated with fhir.resources' R4B models (identical to R4 for the resource
types taken here: Patient, Encounter, Observation, DiagnosticReport, DocumentReference,
ImagingStudy). Diagnostics name the problem, never the offending values.
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import cache
from typing import Any

from cds.core.errors import MalformedInputError, UnsupportedInputError

#: Resource types placed on the timeline; other valid types are acknowledged and ignored.
TIMELINE_TYPES = frozenset(
    {"Patient", "Encounter", "Observation", "DiagnosticReport", "DocumentReference", "ImagingStudy"}
)

_ZONELESS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?$")
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_TYPE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
_ABSTRACT = frozenset({"Resource", "DomainResource", "Element", "BackboneElement"})


def parse_json(body: bytes) -> Any:
    """Decode a JSON body.

    Raises:
        MalformedInputError: not UTF-8 JSON.
    """
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise MalformedInputError("body is not valid JSON") from exc


def canonical_json(resource: dict[str, Any]) -> bytes:
    """Stable bytes of a resource (sorted keys, no whitespace): the stored payload."""
    return json.dumps(resource, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def content_hash(resource: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(resource)).hexdigest()


@cache
def _model(resource_type: str) -> Any:
    from fhir.resources.R4B import get_fhir_model_class

    return get_fhir_model_class(resource_type)


def is_resource_type(name: str) -> bool:
    """True for a concrete FHIR resource type name."""
    if not _TYPE.match(name) or name in _ABSTRACT:
        return False
    try:
        _model(name)
    except (KeyError, ValueError, ImportError, AttributeError):
        return False
    return True


def is_resource_id(value: str) -> bool:
    """True for a valid FHIR logical id (R4 §2.24.0.1 ``id``: 1-64 of ``[A-Za-z0-9-.]``)."""
    return bool(_ID.match(value))


def check_resource(
    value: Any, *, expected_type: str | None = None, expected_id: str | None = None
) -> dict[str, Any]:
    """A resource dict whose type, id and (for timeline types) content are valid.

    Raises:
        MalformedInputError: not an object, missing/invalid resourceType or id, or content
            that does not validate.
        UnsupportedInputError: ``resourceType`` is not a FHIR resource type, or differs from
            the type in the URL.
    """
    if not isinstance(value, dict):
        raise MalformedInputError("body is not a FHIR resource object")
    resource_type = value.get("resourceType")
    if not isinstance(resource_type, str) or not resource_type:
        raise MalformedInputError("resourceType missing")
    if not is_resource_type(resource_type):
        raise UnsupportedInputError("resourceType is not a FHIR R4 resource type")
    if expected_type is not None and resource_type != expected_type:
        raise UnsupportedInputError("resourceType does not match the URL")
    resource_id = value.get("id")
    if not isinstance(resource_id, str) or not _ID.match(resource_id):
        raise MalformedInputError("resource id missing or invalid")
    if expected_id is not None and resource_id != expected_id:
        raise MalformedInputError("resource id does not match the URL")
    if resource_type in TIMELINE_TYPES:
        validate_content(value)
    return value


def validate_content(resource: dict[str, Any]) -> None:
    """Validate against the R4B model of its type.

    Raises:
        MalformedInputError: the resource does not conform (the first problem's location).
    """
    from pydantic import ValidationError

    try:
        _model(resource["resourceType"]).model_validate(resource)
    except ValidationError as exc:
        # Servers do send dateTimes with a time but no zone (R4 requires one); they are
        # read as site-local time (connectors.fhir.dates), not refused.
        errors = [e for e in exc.errors() if not _ZONELESS.match(str(e.get("input", "")))]
        if not errors:
            return
        where = ".".join(str(p) for p in errors[0].get("loc", ())) if errors else "?"
        raise MalformedInputError(f"invalid {resource['resourceType']} at {where}") from exc
    except (ValueError, TypeError) as exc:
        raise MalformedInputError(f"invalid {resource['resourceType']}") from exc


def split_reference(reference: str, base: str) -> tuple[str, str] | None:
    """``(Type, id)`` of a literal reference, relative or absolute on ``base``.

    A version suffix (``/_history/2``) is dropped; references to other servers, contained
    resources (``#x``) and ``urn:uuid:`` references give ``None``.
    """
    ref = reference.strip()
    if ref.startswith(base + "/"):
        ref = ref[len(base) + 1 :]
    if "://" in ref or ref.startswith(("#", "urn:")):
        return None
    parts = ref.split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) != 2 or not _TYPE.match(parts[0]) or not _ID.match(parts[1]):
        return None
    return parts[0], parts[1]
