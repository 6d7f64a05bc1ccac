"""FHIR R4 OperationOutcome responses for every HTTP error.

FHIR R4 §3.1.0.4 (RESTful API): errors are returned with an OperationOutcome body.
``issue.code`` values come from the IssueType value set (http://hl7.org/fhir/R4/valueset-issue-type.html).
Diagnostics never quote the request body.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi.responses import JSONResponse

FHIR_JSON = "application/fhir+json"

#: HTTP status -> FHIR IssueType code.
_ISSUE_CODE = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    409: "conflict",
    410: "deleted",
    412: "processing",
    413: "too-costly",
    415: "not-supported",
    422: "processing",
    429: "throttled",
    503: "transient",
}


def operation_outcome(
    status_code: int, diagnostics: str, *, code: str | None = None, severity: str = "error"
) -> dict[str, Any]:
    """An OperationOutcome resource as a JSON-ready dict."""
    issue_code = code or _ISSUE_CODE.get(status_code, "exception")
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": issue_code, "diagnostics": diagnostics}],
    }


def outcome_response(
    status_code: int,
    diagnostics: str,
    *,
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """A JSON response carrying an OperationOutcome, ``application/fhir+json``."""
    return JSONResponse(
        operation_outcome(status_code, diagnostics, code=code),
        status_code=status_code,
        media_type=FHIR_JSON,
        headers=headers,
    )
