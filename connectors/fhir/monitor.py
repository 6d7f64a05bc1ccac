"""Missed heartbeats and pending recoveries of Backport subscriptions (a background thread).

Backport IG §Heartbeats: a server promises a notification at least every
``heartbeatPeriod`` seconds. After ``CDSFUSION_FHIR_MISSED_HEARTBEATS`` periods of silence
the monitor asks ``$status`` how many events the server has sent; when it is ahead of the
last event processed, the missing events are recovered (``$events``, else search). A
subscription left with ``recover_since`` by an earlier failure is retried the same way.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading

from cds.core.db.models import FhirSubscription
from connectors.fhir.client import FhirServerError
from connectors.fhir.notification import parse_notification
from connectors.fhir.receiver import FhirReceiver, Plan
from connectors.fhir.subscriptions import backport_subscriptions

logger = logging.getLogger(__name__)


class HeartbeatMonitor:
    """Checks every Backport subscription each ``interval_s`` seconds.

    Args:
        receiver: does the recovery and the commits.
        missed: silent heartbeat periods tolerated before recovery. Defaults to 2.
        interval_s: time between checks. Defaults to 30.
    """

    def __init__(self, receiver: FhirReceiver, *, missed: int = 2, interval_s: float = 30.0):
        self._receiver = receiver
        self._missed = missed
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="fhir-heartbeats", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.run_once(dt.datetime.now(dt.UTC))
            except Exception as exc:  # noqa: BLE001 - the monitor must outlive one bad round
                logger.error("heartbeat check failed: %s", type(exc).__name__)

    def run_once(self, now: dt.datetime) -> int:
        """Check every Backport subscription once; returns how many were recovered."""
        with self._receiver.session_factory() as session:
            subscriptions = backport_subscriptions(session=session)
        return sum(1 for sub in subscriptions if self._check(sub, now))

    def _check(self, sub: FhirSubscription, now: dt.datetime) -> bool:
        overdue = (
            sub.heartbeat_period_s is not None
            and sub.last_notification_at is not None
            and now - sub.last_notification_at
            > dt.timedelta(seconds=sub.heartbeat_period_s * self._missed)
        )
        if not overdue and sub.recover_since is None:
            return False
        logger.info("subscription %s: heartbeat overdue or recovery pending", sub.id)
        plan = self._plan(sub)
        self._receiver.commit(sub, plan)
        return plan.recovered

    def _plan(self, sub: FhirSubscription) -> Plan:
        receiver = self._receiver
        if sub.remote_id:
            try:
                bundle = receiver.client(sub.server_base).operation(
                    f"Subscription/{sub.remote_id}/$status"
                )
                status = parse_notification(bundle).status
            except FhirServerError as exc:
                logger.info("$status unavailable (HTTP %d): searching instead", exc.status)
            else:
                since = status.events_since_start
                if since is None or since <= sub.last_event_number:
                    return Plan(recovered=sub.recover_since is None)
                plan = receiver.plan_recovery(sub, sub.last_event_number + 1, since, "")
                plan.advance_to = since
                return plan
        start = sub.recover_since or sub.last_notification_at or sub.created_at
        return receiver.plan_search_since(sub, start, "")
