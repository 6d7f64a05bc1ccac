"""Creating Subscription resources upstream (``cdsfusion fhir subscribe``).

The local row (with its random endpoint key) is committed first, so a handshake the server
sends while creating the Subscription already finds its endpoint.

* classic R4 (R4 §Subscription; HAPI FHIR, Medplum): one Subscription per criteria,
  ``channel.type = rest-hook``, ``channel.payload = application/fhir+json`` (omitted for
  ``empty``: HAPI then POSTs without body); Medplum's ``subscription-secret`` extension
  carries the HMAC secret when one is configured.
* Backport IG (STU 1.1, profile ``backport-subscription``): ``criteria`` is the topic
  canonical, ``backport-filter-criteria`` extensions the filters, channel extensions the
  heartbeat period, timeout and max count, ``backport-payload-content`` the payload.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from cds.core.db.models import FhirSubscription, PayloadContent, SubscriptionChannel
from cds.core.db.session import transaction
from connectors.fhir.client import FhirClient
from connectors.fhir.routes import PREFIX
from connectors.fhir.subscriptions import create_subscription, find_by_key

logger = logging.getLogger(__name__)

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
MEDPLUM = "https://www.medplum.com/fhir/StructureDefinition"


def classic_subscription(
    *, criteria: str, endpoint: str, payload: PayloadContent, secret: str | None
) -> dict[str, Any]:
    """An R4 rest-hook Subscription resource."""
    channel: dict[str, Any] = {"type": "rest-hook", "endpoint": endpoint}
    if payload is not PayloadContent.EMPTY:
        channel["payload"] = "application/fhir+json"
    resource: dict[str, Any] = {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "cdsfusion patient timeline",
        "criteria": criteria,
        "channel": channel,
    }
    if secret:
        resource["extension"] = [{"url": f"{MEDPLUM}/subscription-secret", "valueString": secret}]
    return resource


def backport_subscription(
    *,
    topic: str,
    filters: Sequence[str],
    endpoint: str,
    payload: PayloadContent,
    heartbeat_period_s: int,
) -> dict[str, Any]:
    """A Backport IG R4 Subscription resource (topic-based)."""
    return {
        "resourceType": "Subscription",
        "meta": {"profile": [f"{BACKPORT}/backport-subscription"]},
        "status": "requested",
        "reason": "cdsfusion patient timeline",
        "criteria": topic,
        "_criteria": {
            "extension": [
                {"url": f"{BACKPORT}/backport-filter-criteria", "valueString": f} for f in filters
            ]
        },
        "channel": {
            "extension": [
                {
                    "url": f"{BACKPORT}/backport-heartbeat-period",
                    "valueUnsignedInt": heartbeat_period_s,
                },
                {"url": f"{BACKPORT}/backport-timeout", "valueUnsignedInt": 30},
                {"url": f"{BACKPORT}/backport-max-count", "valuePositiveInt": 50},
            ],
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": "application/fhir+json",
            "_payload": {
                "extension": [
                    {"url": f"{BACKPORT}/backport-payload-content", "valueCode": payload.value}
                ]
            },
        },
    }


def subscribe(
    *,
    session_factory: sessionmaker[Session],
    client: FhirClient,
    notify_base: str,
    channel: SubscriptionChannel,
    payload: PayloadContent,
    criteria: Sequence[str] = (),
    topic: str | None = None,
    queries: Sequence[str] = (),
    heartbeat_period_s: int = 60,
    secret: str | None = None,
) -> list[FhirSubscription]:
    """Create the upstream Subscription(s) and record them locally.

    Args:
        notify_base: this engine's public base URL as the server reaches it.
        criteria: classic: one Subscription per search criteria; backport: filters.
        topic: the SubscriptionTopic canonical (backport only).
        queries: searches for empty payloads and recovery (classic: the criteria).

    Raises:
        FhirServerError: the server refused a Subscription (rows already created for
            earlier criteria stay, with their upstream ids).
    """
    now = dt.datetime.now(dt.UTC)
    created: list[FhirSubscription] = []
    plans: list[tuple[list[str], str | None]] = (
        [([c], None) for c in criteria]
        if channel is SubscriptionChannel.REST_HOOK
        else [(list(queries) or list(criteria), topic)]
    )
    for plan_queries, plan_topic in plans:
        with transaction(session_factory) as session:
            row = create_subscription(
                session=session,
                server_base=client.base,
                channel=channel,
                payload=payload,
                queries=plan_queries,
                topic=plan_topic,
                heartbeat_period_s=heartbeat_period_s if plan_topic else None,
                now=now,
            )
            key = row.endpoint_key
        endpoint = f"{notify_base.rstrip('/')}{PREFIX}/{key}"
        if channel is SubscriptionChannel.REST_HOOK:
            resource = classic_subscription(
                criteria=plan_queries[0], endpoint=endpoint, payload=payload, secret=secret
            )
        else:
            assert plan_topic is not None
            resource = backport_subscription(
                topic=plan_topic,
                filters=list(criteria),
                endpoint=endpoint,
                payload=payload,
                heartbeat_period_s=heartbeat_period_s,
            )
        stored = client.create(resource)
        with transaction(session_factory) as session:
            found = find_by_key(session=session, key=key, lock=True)
            assert found is not None
            found.remote_id = str(stored.get("id") or "") or None
            created.append(found)
        logger.info("subscription %s created upstream", created[-1].id)
    return created
