"""Repository of the FHIR subscriptions whose notifications this engine accepts."""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from cds.core.db.models import FhirSubscription, PayloadContent, SubscriptionChannel


def create_subscription(
    *,
    session: Session,
    server_base: str,
    channel: SubscriptionChannel,
    payload: PayloadContent,
    queries: Sequence[str],
    topic: str | None = None,
    heartbeat_period_s: int | None = None,
    now: dt.datetime,
) -> FhirSubscription:
    """Record a new subscription with a fresh random endpoint key (its notification path)."""
    row = FhirSubscription(
        endpoint_key=secrets.token_urlsafe(24),
        server_base=server_base.rstrip("/"),
        channel=channel,
        payload=payload,
        topic=topic,
        queries=list(queries),
        heartbeat_period_s=heartbeat_period_s,
        last_event_number=0,
        last_notification_at=now,
    )
    session.add(row)
    session.flush()
    return row


def find_by_key(*, session: Session, key: str, lock: bool = False) -> FhirSubscription | None:
    """The subscription served at ``/fhir/notify/{key}``; ``lock`` takes a row lock."""
    statement = select(FhirSubscription).where(FhirSubscription.endpoint_key == key)
    if lock:
        statement = statement.with_for_update()
    return session.scalars(statement).one_or_none()


def backport_subscriptions(*, session: Session) -> list[FhirSubscription]:
    """Subscriptions whose heartbeats and event numbers are watched."""
    return list(
        session.scalars(
            select(FhirSubscription).where(FhirSubscription.channel == SubscriptionChannel.BACKPORT)
        )
    )
