"""EHR feed state: the FHIR subscriptions this engine receives notifications for."""

from __future__ import annotations

import datetime as dt
import enum
import uuid
from typing import Any

from sqlalchemy import BigInteger, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from cds.core.db.base import Base
from cds.core.db.models._columns import created_at_column, str_enum, uuid_pk
from cds.core.db.types import JsonDocument, UTCDateTime


class SubscriptionChannel(enum.StrEnum):
    """How the upstream server notifies.

    * ``rest-hook``: classic R4 ``Subscription`` (HAPI FHIR: ``PUT {endpoint}/{Type}/{id}``,
      an empty ``POST`` without payload, ``DELETE``; Medplum: the bare resource ``POST``).
    * ``backport``: Subscriptions R5 Backport IG (STU 1.1) for R4: history Bundles whose
      first entry is the SubscriptionStatus ``Parameters``, numbered events.
    """

    REST_HOOK = "rest-hook"
    BACKPORT = "backport"


class PayloadContent(enum.StrEnum):
    """What a notification carries (Backport IG ``backport-payload-content``)."""

    EMPTY = "empty"
    ID_ONLY = "id-only"
    FULL_RESOURCE = "full-resource"


class FhirSubscription(Base):
    """A subscription on an upstream FHIR server whose notifications this engine accepts.

    Attributes:
        endpoint_key: the random path segment of the notification endpoint
            (``/fhir/notify/{endpoint_key}``); a notification to an unknown key is refused.
        server_base: the upstream FHIR base URL; the namespace of the items it delivers.
        remote_id: the ``Subscription`` id on the upstream server (``$status``, ``$events``).
        queries: FHIR search queries (``Observation?category=laboratory``) that find what
            the subscription covers: run with ``_lastUpdated`` for empty notifications and
            recovery.
        last_event_number: highest Backport event number processed (0: none yet).
        last_notification_at: when the last notification of any type arrived.
        heartbeat_period_s: the period the server promised (Backport ``heartbeatPeriod``).
        recover_since: set while a gap could not be recovered yet: the time from which a
            ``_lastUpdated`` search must be run.
    """

    __tablename__ = "fhir_subscriptions"

    id: Mapped[uuid.UUID] = uuid_pk()
    endpoint_key: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    server_base: Mapped[str] = mapped_column(String(255), nullable=False)
    remote_id: Mapped[str | None] = mapped_column(String(128))
    channel: Mapped[SubscriptionChannel] = mapped_column(
        str_enum(SubscriptionChannel, "subscription_channel"), nullable=False
    )
    payload: Mapped[PayloadContent] = mapped_column(
        str_enum(PayloadContent, "payload_content"), nullable=False
    )
    topic: Mapped[str | None] = mapped_column(String(255))
    queries: Mapped[list[Any]] = mapped_column(JsonDocument, nullable=False, default=list)
    last_event_number: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    last_notification_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    heartbeat_period_s: Mapped[int | None] = mapped_column(Integer)
    recover_since: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[dt.datetime] = created_at_column()
