"""Subscriptions R5 Backport IG (STU 1.1) notification Bundles for R4, read purely.

A notification is a ``history`` Bundle (R4B/R5 servers: ``subscription-notification``) whose
first entry is the SubscriptionStatus: in R4 a ``Parameters`` resource with the profile
``backport-subscription-status-r4`` (parameters ``subscription``, ``topic``, ``status``,
``type``, ``events-since-subscription-start``, repeated ``notification-event`` with parts
``event-number``, ``timestamp``, ``focus``, ``additional-context``); R4B servers send a
``SubscriptionStatus`` resource with the same content. The other entries carry the
payload: full resources, or only ``fullUrl`` for ``id-only``, or nothing for ``empty``.
``$status`` answers a Bundle of the same shape (type ``query-status``), ``$events`` one of
type ``query-event`` (IG §Operations).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cds.core.errors import MalformedInputError

NOTIFICATION_TYPES = frozenset(
    {"handshake", "heartbeat", "event-notification", "query-status", "query-event"}
)


@dataclass(frozen=True, slots=True)
class NotificationEvent:
    """One triggered event: its number and the resource it is about."""

    number: int | None
    timestamp: str | None
    focus: str | None


@dataclass(frozen=True, slots=True)
class SubscriptionStatus:
    """The status entry of a notification."""

    subscription: str
    topic: str | None
    status: str | None
    type: str
    events_since_start: int | None
    events: tuple[NotificationEvent, ...]


@dataclass(frozen=True, slots=True)
class Notification:
    """A parsed notification Bundle.

    Attributes:
        status: the SubscriptionStatus.
        resources: full resources carried (``full-resource`` payload).
        references: resource references without content (``id-only``: entry ``fullUrl``s
            and event ``focus`` references not already carried in full).
    """

    status: SubscriptionStatus
    resources: tuple[dict[str, Any], ...]
    references: tuple[str, ...]

    @property
    def numbers(self) -> tuple[int, ...]:
        return tuple(sorted(e.number for e in self.status.events if e.number is not None))


def is_notification_bundle(body: Any) -> bool:
    """True for a Bundle whose first entry is a SubscriptionStatus (Parameters or R4B)."""
    if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
        return False
    entries = body.get("entry") or []
    if not entries or not isinstance(entries[0], dict):
        return False
    first = entries[0].get("resource") or {}
    return isinstance(first, dict) and first.get("resourceType") in (
        "Parameters",
        "SubscriptionStatus",
    )


def parse_notification(bundle: dict[str, Any]) -> Notification:
    """Read a notification Bundle.

    Raises:
        MalformedInputError: wrong Bundle type, missing or invalid status entry.
    """
    if bundle.get("type") not in ("history", "subscription-notification", "searchset"):
        raise MalformedInputError("notification Bundle.type must be history")
    entries = [e for e in bundle.get("entry") or () if isinstance(e, dict)]
    if not entries:
        raise MalformedInputError("notification Bundle has no status entry")
    first = entries[0].get("resource")
    if not isinstance(first, dict):
        raise MalformedInputError("notification status entry has no resource")
    if first.get("resourceType") == "Parameters":
        status = _from_parameters(first)
    elif first.get("resourceType") == "SubscriptionStatus":
        status = _from_r4b(first)
    else:
        raise MalformedInputError("first entry is not a SubscriptionStatus")
    resources: list[dict[str, Any]] = []
    references: list[str] = []
    for entry in entries[1:]:
        resource = entry.get("resource")
        if isinstance(resource, dict):
            resources.append(resource)
        elif isinstance(entry.get("fullUrl"), str):
            references.append(entry["fullUrl"])
    carried = {f"{r.get('resourceType')}/{r.get('id')}" for r in resources}
    for event in status.events:
        focus = event.focus
        if focus and focus not in references and not any(focus.endswith(c) for c in carried):
            references.append(focus)
    return Notification(status=status, resources=tuple(resources), references=tuple(references))


def _number(value: Any) -> int | None:
    if value is None:
        return None
    try:
        number = int(str(value))
    except ValueError as exc:
        raise MalformedInputError("event number is not an integer") from exc
    if number < 0:
        raise MalformedInputError("event number is negative")
    return number


def _value(param: dict[str, Any]) -> Any:
    for key, value in param.items():
        if key.startswith("value"):
            if isinstance(value, dict) and "reference" in value:
                return value["reference"]
            return value
    return None


def _from_parameters(parameters: dict[str, Any]) -> SubscriptionStatus:
    values: dict[str, Any] = {}
    events: list[NotificationEvent] = []
    for param in parameters.get("parameter") or ():
        if not isinstance(param, dict):
            continue
        name = param.get("name")
        if name == "notification-event":
            parts = {
                p.get("name"): _value(p) for p in param.get("part") or () if isinstance(p, dict)
            }
            events.append(
                NotificationEvent(
                    number=_number(parts.get("event-number")),
                    timestamp=parts.get("timestamp"),
                    focus=parts.get("focus"),
                )
            )
        elif isinstance(name, str):
            values[name] = _value(param)
    return _status(
        subscription=values.get("subscription"),
        topic=values.get("topic"),
        status=values.get("status"),
        kind=values.get("type"),
        since=values.get("events-since-subscription-start"),
        events=events,
    )


def _from_r4b(resource: dict[str, Any]) -> SubscriptionStatus:
    events = [
        NotificationEvent(
            number=_number(e.get("eventNumber")),
            timestamp=e.get("timestamp"),
            focus=(e.get("focus") or {}).get("reference"),
        )
        for e in resource.get("notificationEvent") or ()
        if isinstance(e, dict)
    ]
    return _status(
        subscription=(resource.get("subscription") or {}).get("reference"),
        topic=resource.get("topic"),
        status=resource.get("status"),
        kind=resource.get("type"),
        since=resource.get("eventsSinceSubscriptionStart"),
        events=events,
    )


def _status(
    *,
    subscription: Any,
    topic: Any,
    status: Any,
    kind: Any,
    since: Any,
    events: list[NotificationEvent],
) -> SubscriptionStatus:
    if not isinstance(subscription, str) or not subscription:
        raise MalformedInputError("SubscriptionStatus has no subscription reference")
    if kind not in NOTIFICATION_TYPES:
        raise MalformedInputError("SubscriptionStatus type is missing or unknown")
    return SubscriptionStatus(
        subscription=subscription,
        topic=topic if isinstance(topic, str) else None,
        status=status if isinstance(status, str) else None,
        type=kind,
        events_since_start=_number(since),
        events=tuple(events),
    )
