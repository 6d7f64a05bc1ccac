"""CDS Hooks 2.0.1 wire objects (pydantic), named as in the specification.

Every model allows and keeps fields it does not know (``extra="allow"``), so requests and
responses carrying the 3.0 ballot's additions (``Action.resourceId``, ``Suggestion`` and
``Link`` extensions, ``FhirAuthorization.patient``, ...) pass through and round-trip.
Outgoing objects are serialised with :func:`dump` (``None`` fields left out).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: CDS Hooks 2.0 §Card: "summary ... SHOULD be under 140 characters".
SUMMARY_MAX = 140


class Wire(BaseModel):
    """Base of the wire objects: unknown fields kept, values validated."""

    model_config = ConfigDict(extra="allow")


def dump(model: BaseModel) -> dict[str, Any]:
    """JSON-ready dict without ``None`` fields (absent in CDS Hooks JSON)."""
    return model.model_dump(mode="json", exclude_none=True)


class Coding(Wire):
    """CDS Hooks 2.0 §Coding."""

    code: str
    system: str | None = None
    display: str | None = None


class Source(Wire):
    """CDS Hooks 2.0 §Source: who the card comes from."""

    label: str
    url: str | None = None
    icon: str | None = None
    topic: Coding | None = None


class Action(Wire):
    """CDS Hooks 2.0 §Action (``resourceId`` from 3.0 kept as given)."""

    type: Literal["create", "update", "delete"]
    description: str
    resource: dict[str, Any] | None = None
    resourceId: str | list[str] | None = None  # noqa: N815 - the standard's name


class Suggestion(Wire):
    """CDS Hooks 2.0 §Suggestion."""

    label: str
    uuid: str | None = None
    isRecommended: bool | None = None  # noqa: N815 - the standard's name
    actions: list[Action] | None = None


class Link(Wire):
    """CDS Hooks 2.0 §Link: ``absolute`` (a web page) or ``smart`` (a SMART app launch)."""

    label: str
    url: str
    type: Literal["absolute", "smart"]
    appContext: str | None = None  # noqa: N815 - the standard's name


class Card(Wire):
    """CDS Hooks 2.0 §Card."""

    uuid: str | None = None
    summary: str = Field(max_length=SUMMARY_MAX)
    detail: str | None = None
    indicator: Literal["info", "warning", "critical"]
    source: Source
    suggestions: list[Suggestion] | None = None
    selectionBehavior: Literal["at-most-one", "any"] | None = None  # noqa: N815
    overrideReasons: list[Coding] | None = None  # noqa: N815 - the standard's name
    links: list[Link] | None = None


class CdsServiceResponse(Wire):
    """CDS Hooks 2.0 §CDS Service Response."""

    cards: list[Card]
    systemActions: list[Action] | None = None  # noqa: N815 - the standard's name


class FhirAuthorization(Wire):
    """CDS Hooks 2.0 §Passing the Access Token to the CDS Service."""

    access_token: str
    token_type: str
    expires_in: int
    scope: str
    subject: str
    patient: str | None = None


class CdsServiceRequest(Wire):
    """CDS Hooks 2.0 §HTTP Request (the body of ``POST /cds-services/{id}``)."""

    hook: str
    hookInstance: str  # noqa: N815 - the standard's name
    fhirServer: str | None = None  # noqa: N815 - the standard's name
    fhirAuthorization: FhirAuthorization | None = None  # noqa: N815
    context: dict[str, Any]
    prefetch: dict[str, Any] | None = None


class CdsService(Wire):
    """CDS Hooks 2.0 §Discovery: one service."""

    hook: str
    title: str | None = None
    description: str
    id: str
    prefetch: dict[str, str] | None = None
    usageRequirements: str | None = None  # noqa: N815 - the standard's name


class Discovery(Wire):
    """CDS Hooks 2.0 §Discovery response."""

    services: list[CdsService]


class AcceptedSuggestion(Wire):
    id: str


class OverrideReason(Wire):
    """CDS Hooks 2.0 §Overridden guidance: the chosen reason and a free-text comment."""

    reason: Coding | None = None
    userComment: str | None = None  # noqa: N815 - the standard's name


class FeedbackItem(Wire):
    """CDS Hooks 2.0 §Feedback: what the user did with one card."""

    card: str
    outcome: Literal["accepted", "overridden"]
    acceptedSuggestions: list[AcceptedSuggestion] | None = None  # noqa: N815
    overrideReason: OverrideReason | None = None  # noqa: N815 - the standard's name
    outcomeTimestamp: str  # noqa: N815 - the standard's name


class Feedback(Wire):
    """CDS Hooks 2.0 §Feedback request body."""

    feedback: list[FeedbackItem]
