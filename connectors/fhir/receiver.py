"""Notifications to the timeline: one transaction per notification, answered after commit.

:class:`FhirReceiver` is the I/O edge behind :mod:`connectors.fhir.routes`. Every entry
point validates the whole notification first (so a bad one stores nothing), fetches what
an ``empty`` or ``id-only`` payload only points at, recovers missed events, and then ingests
everything in one transaction together with the subscription's new event number. Recovery
(Backport IG §Handling missed notifications): ``$events`` for the missing numbers where
the server offers it, else a search by ``_lastUpdated`` over the subscription's queries;
when neither works the subscription keeps ``recover_since`` and the monitor retries.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from cds.core.clinical import ItemIn
from cds.core.db.models import (
    EventKind,
    EventStatus,
    FhirSubscription,
    SourceItem,
    TimelineEvent,
)
from cds.core.db.session import transaction
from cds.core.errors import InputError, MalformedInputError
from cds.core.settings import Settings
from connectors.fhir.client import FhirClient, FhirServerError
from connectors.fhir.metrics import FhirMetrics
from connectors.fhir.normalize import (
    Origin,
    lineage_key,
    normalize_resource,
    pseudo_patient_ref,
    retraction_item,
)
from connectors.fhir.notification import Notification, is_notification_bundle, parse_notification
from connectors.fhir.resources import (
    check_resource,
    is_resource_id,
    is_resource_type,
    parse_json,
    split_reference,
)
from connectors.fhir.store import Counts, ingest_items
from connectors.fhir.subscriptions import find_by_key
from connectors.identity import issuer_map

logger = logging.getLogger(__name__)

#: Searches by ``_lastUpdated`` start this long before the last known notification, to cover
#: clock skew between the server and this engine.
SEARCH_SKEW = dt.timedelta(minutes=2)


class UnknownSubscriptionError(InputError):
    """No subscription is served at this endpoint, or the notification names another (404)."""


class SignatureError(InputError):
    """A Medplum ``X-Signature`` is missing or does not match the body (401)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """The answer to one notification, after commit."""

    status: int
    diagnostics: str


@dataclass
class Plan:
    """What to commit for one notification."""

    items: list[ItemIn] = field(default_factory=list)
    ignored: int = 0
    advance_to: int | None = None
    recovery_failed: bool = False
    recovered: bool = False


class FhirReceiver:
    """Handles notifications for the subscriptions recorded in ``fhir_subscriptions``.

    Args:
        session_factory: sessions on the timeline database.
        settings: the engine settings (site time zone, issuer map, webhook secret).
        client_factory: builds the upstream client for a server base. Defaults to
            :meth:`FhirClient.from_settings`.
        metrics: Prometheus metrics; ``None`` records nothing.
    """

    def __init__(
        self,
        *,
        session_factory: sessionmaker[Session],
        settings: Settings,
        client_factory: Callable[[str], FhirClient] | None = None,
        metrics: FhirMetrics | None = None,
    ) -> None:
        self.session_factory = session_factory
        self._tz = ZoneInfo(settings.site_timezone)
        self._issuer_map = issuer_map(settings)
        self._secret = settings.fhir_webhook_secret
        self._factory = client_factory or (
            lambda base: FhirClient.from_settings(settings, base=base)
        )
        self._clients: dict[str, FhirClient] = {}
        self._clients_lock = threading.Lock()
        self.metrics = metrics

    def close(self) -> None:
        with self._clients_lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()

    def client(self, base: str) -> FhirClient:
        """The (cached) upstream client for ``base``; tokens are reused across calls."""
        with self._clients_lock:
            if base not in self._clients:
                self._clients[base] = self._factory(base)
            return self._clients[base]

    # -- entry points ---------------------------------------------------------------------

    def put(
        self, key: str, resource_type: str, resource_id: str, body: bytes, sender: str
    ) -> Outcome:
        """HAPI rest-hook with payload: ``PUT {endpoint}/{Type}/{id}``."""
        sub = self._subscription(key)
        resource = check_resource(
            parse_json(body), expected_type=resource_type, expected_id=resource_id
        )
        plan = self._plan_resources(sub, [resource], sender)
        counts = self.commit(sub, plan)
        return Outcome(200, counts.describe())

    def delete(self, key: str, resource_type: str, resource_id: str, sender: str) -> Outcome:
        """HAPI ``DELETE {endpoint}/{Type}/{id}`` or Medplum's delete: retract the resource."""
        sub = self._subscription(key)
        if not is_resource_type(resource_type) or not is_resource_id(resource_id):
            raise MalformedInputError("resource type or id in the URL is invalid")
        origin = self._origin(sub, sender)
        with transaction(self.session_factory) as session:
            current, patient_ref = _current_events(
                session, lineage_key(origin.base, resource_type, resource_id)
            )
            if resource_type == "Patient":
                patient_ref = pseudo_patient_ref(origin.base, resource_id)
            counts = Counts()
            if current:
                item = retraction_item(
                    resource_type=resource_type,
                    resource_id=resource_id,
                    current=current,
                    patient_ref=patient_ref,
                    origin=origin,
                )
                ingest_items(
                    session=session, items=[item], counts=counts, issuer_map=self._issuer_map
                )
            self._touch(session, sub.endpoint_key, Plan())
        return Outcome(200, f"{len(current)} events retracted")

    def post(self, key: str, body: bytes, headers: Mapping[str, str], sender: str) -> Outcome:
        """Empty POST (HAPI without payload), a Backport Bundle, or a bare resource (Medplum)."""
        sub = self._subscription(key)
        deleted = headers.get("x-medplum-deleted-resource")
        if deleted:
            self._verify_signature(body, headers, required=True)
            resource_type, _, resource_id = deleted.partition("/")
            return self.delete(key, resource_type, resource_id, sender)
        if not body.strip():
            plan = self._plan_search(sub, sender)
            counts = self.commit(sub, plan)
            return Outcome(200, f"changes fetched by search: {counts.describe()}")
        parsed = parse_json(body)
        if is_notification_bundle(parsed):
            return self._backport(sub, parse_notification(parsed), sender)
        self._verify_signature(body, headers, required=True)
        resource = check_resource(parsed)
        plan = self._plan_resources(sub, [resource], sender)
        counts = self.commit(sub, plan)
        return Outcome(200, counts.describe())

    # -- Backport IG ----------------------------------------------------------------------

    def _backport(self, sub: FhirSubscription, note: Notification, sender: str) -> Outcome:
        if sub.remote_id and _reference_id(note.status.subscription) != sub.remote_id:
            raise UnknownSubscriptionError("notification names another subscription")
        kind = note.status.type
        last = sub.last_event_number
        if kind == "handshake":
            self.commit(sub, Plan())
            return Outcome(200, "handshake")
        if kind in ("heartbeat", "query-status"):
            plan = Plan()
            since = note.status.events_since_start
            if since is not None and since > last:
                plan = self.plan_recovery(sub, last + 1, since, sender)
                plan.advance_to = since
            counts = self.commit(sub, plan)
            return Outcome(200, f"heartbeat: {counts.describe()}")
        numbers = note.numbers
        fresh = [n for n in numbers if n > last]
        if numbers and not fresh:
            self.commit(sub, Plan())
            self._count("duplicate")
            return Outcome(200, "duplicate notification ignored")
        plan = self._plan_notification(sub, note, sender)
        if fresh and fresh[0] > last + 1:
            recovery = self.plan_recovery(sub, last + 1, fresh[0] - 1, sender)
            plan.items = recovery.items + plan.items
            plan.recovery_failed = recovery.recovery_failed
            plan.recovered = recovery.recovered
        plan.advance_to = max(numbers) if numbers else None
        counts = self.commit(sub, plan)
        return Outcome(200, f"events {numbers or '-'}: {counts.describe()}")

    def _plan_notification(self, sub: FhirSubscription, note: Notification, sender: str) -> Plan:
        resources = [check_resource(r) for r in note.resources]
        if note.references:
            resources += self._read_all(sub, note.references)
        elif not resources and note.status.events:
            return self._plan_search(sub, sender)
        return self._plan_resources(sub, resources, sender)

    def plan_recovery(self, sub: FhirSubscription, first: int, last: int, sender: str) -> Plan:
        """Items for events ``first..last`` that never arrived: ``$events``, else search."""
        if sub.remote_id:
            try:
                bundle = self.client(sub.server_base).operation(
                    f"Subscription/{sub.remote_id}/$events",
                    {
                        "eventsSinceNumber": str(first),
                        "eventsUntilNumber": str(last),
                        "content": "full-resource",
                    },
                )
                note = parse_notification(bundle)
                resources = list(note.resources) + self._read_all(sub, note.references)
                plan = self._plan_resources(sub, [r for r in resources if _valid(r)], sender)
                plan.recovered = True
                self._count_recovery("events", "ok")
                logger.info("recovered events %d-%d by $events", first, last)
                return plan
            except (FhirServerError, MalformedInputError) as exc:
                self._count_recovery("events", "failed")
                logger.info(
                    "$events unavailable (%s): searching by _lastUpdated", type(exc).__name__
                )
        since = sub.recover_since or sub.last_notification_at or sub.created_at
        return self.plan_search_since(sub, since, sender)

    # -- planning -------------------------------------------------------------------------

    def _plan_search(self, sub: FhirSubscription, sender: str) -> Plan:
        since = sub.last_notification_at or sub.created_at
        plan = self.plan_search_since(sub, since, sender)
        if plan.recovery_failed:
            raise FhirServerError("changes could not be fetched from the FHIR server")
        return plan

    def plan_search_since(self, sub: FhirSubscription, since: dt.datetime, sender: str) -> Plan:
        """Resources of the subscription's queries updated since ``since`` (minus skew)."""
        if not sub.queries:
            logger.warning("subscription %s has no search queries: cannot recover", sub.id)
            return Plan(recovery_failed=True)
        stamp = (since - SEARCH_SKEW).astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            client = self.client(sub.server_base)
            resources = [
                r
                for query in sub.queries
                for r in client.search(str(query), {"_lastUpdated": f"ge{stamp}"})
                if _valid(r)
            ]
        except FhirServerError:
            self._count_recovery("search", "failed")
            logger.warning("search by _lastUpdated failed for subscription %s", sub.id)
            return Plan(recovery_failed=True)
        self._count_recovery("search", "ok")
        plan = self._plan_resources(sub, resources, sender)
        plan.recovered = True
        return plan

    def _read_all(self, sub: FhirSubscription, references: Iterable[str]) -> list[dict[str, Any]]:
        client = self.client(sub.server_base)
        wanted: dict[tuple[str, str], None] = {}
        for reference in references:
            parts = split_reference(reference, sub.server_base)
            if parts is None:
                raise MalformedInputError("notification reference is not resolvable")
            wanted[parts] = None
        found = []
        for resource_type, resource_id in wanted:
            resource = client.read(resource_type, resource_id)
            if resource is not None:
                found.append(check_resource(resource))
        return found

    def _plan_resources(
        self, sub: FhirSubscription, resources: Sequence[dict[str, Any]], sender: str
    ) -> Plan:
        origin = self._origin(sub, sender)
        plan = Plan()
        for resource in resources:
            item = normalize_resource(resource, origin)
            if item is None:
                plan.ignored += 1
            else:
                plan.items.append(item)
        return plan

    # -- committing -----------------------------------------------------------------------

    def commit(self, sub: FhirSubscription, plan: Plan) -> Counts:
        counts = Counts(ignored=plan.ignored)
        with transaction(self.session_factory) as session:
            ingest_items(
                session=session, items=plan.items, counts=counts, issuer_map=self._issuer_map
            )
            self._touch(session, sub.endpoint_key, plan)
        if self.metrics is not None:
            for result in ("stored", "duplicates", "ignored", "conflicts"):
                self.metrics.resources.labels(result).inc(getattr(counts, result))
        return counts

    def _touch(self, session: Session, key: str, plan: Plan) -> None:
        row = find_by_key(session=session, key=key, lock=True)
        if row is None:
            raise UnknownSubscriptionError("subscription removed")
        now = dt.datetime.now(dt.UTC)
        if plan.recovery_failed and row.recover_since is None:
            row.recover_since = row.last_notification_at or now
        elif plan.recovered:
            row.recover_since = None
        row.last_notification_at = now
        if plan.advance_to is not None and plan.advance_to > row.last_event_number:
            row.last_event_number = plan.advance_to

    # -- helpers --------------------------------------------------------------------------

    def _subscription(self, key: str) -> FhirSubscription:
        with self.session_factory() as session:
            row = find_by_key(session=session, key=key)
        if row is None:
            raise UnknownSubscriptionError("no subscription at this endpoint")
        return row

    def _origin(self, sub: FhirSubscription, sender: str) -> Origin:
        return Origin(
            base=sub.server_base, tz=self._tz, received_at=dt.datetime.now(dt.UTC), sender=sender
        )

    def _verify_signature(self, body: bytes, headers: Mapping[str, str], *, required: bool) -> None:
        """Medplum: ``X-Signature`` is the hex HMAC-SHA256 of the raw body with the secret."""
        if self._secret is None:
            return
        given = headers.get("x-signature")
        if not given:
            if required:
                raise SignatureError("X-Signature required")
            return
        expected = hmac.new(
            self._secret.get_secret_value().encode(), body, hashlib.sha256
        ).hexdigest()
        if not hmac.compare_digest(given.strip().lower(), expected):
            raise SignatureError("X-Signature does not match the body")

    def _count(self, result: str) -> None:
        if self.metrics is not None:
            self.metrics.notifications.labels(result).inc()

    def _count_recovery(self, method: str, result: str) -> None:
        if self.metrics is not None:
            self.metrics.recoveries.labels(method, result).inc()


def _valid(resource: Any) -> bool:
    """Resources fetched during recovery: invalid ones are skipped (logged), not fatal."""
    try:
        check_resource(resource)
    except InputError:
        logger.warning("skipped an invalid resource returned by the FHIR server")
        return False
    return True


def _reference_id(reference: str) -> str:
    return reference.rstrip("/").split("/_history/")[0].rsplit("/", 1)[-1]


def _current_events(session: Session, key: str) -> tuple[list[tuple[str, EventKind]], str | None]:
    rows = session.execute(
        select(TimelineEvent.lineage_key, TimelineEvent.kind, SourceItem.patient_ref)
        .join(SourceItem, SourceItem.id == TimelineEvent.source_item_id)
        .where(
            or_(TimelineEvent.lineage_key == key, TimelineEvent.lineage_key.like(f"{key}#%")),
            TimelineEvent.status == EventStatus.CURRENT,
        )
    ).all()
    patient_ref = next((r.patient_ref for r in rows if r.patient_ref), None)
    return [(r.lineage_key, r.kind) for r in rows], patient_ref
