"""The outbox relay: delivers outbox messages to their topic handlers, and sweeps jobs.

One relay runs in every ``cdsfusion serve`` process. On PostgreSQL several relays share
the work (``FOR UPDATE SKIP LOCKED``); on SQLite the single embedded process runs one.
A message is marked delivered in the same transaction as its handler's effects; a failing
handler's message is retried with backoff and ends ``dead`` (visible in the outbox table)
after ``max_attempts``.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import uuid

from prometheus_client import Counter, Gauge
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cds.core.db.models import OutboxMessage, OutboxState
from cds.core.db.session import read_only, transaction
from cds.core.db.types import utcnow
from cds.core.pipeline.handlers import Handler
from cds.core.pipeline.jobs import RetryPolicy, sweep
from cds.core.runtime import EngineContext

logger = logging.getLogger(__name__)


class OutboxRelay:
    """A background thread that drains the outbox.

    Args:
        ctx: the process context.
        handlers: topic -> handler; topics without a handler are left for other processes.
        policy: retry policy for jobs (the sweep) and for outbox messages.
        poll_interval_s: how often to look for due messages. Defaults to 0.1 s.
        sweep_interval_s: how often to sweep jobs. Defaults to 5 s.
    """

    name = "outbox-relay"

    def __init__(
        self,
        ctx: EngineContext,
        handlers: dict[str, Handler],
        *,
        policy: RetryPolicy | None = None,
        poll_interval_s: float = 0.1,
        sweep_interval_s: float = 5.0,
        batch_size: int = 50,
    ) -> None:
        self._ctx = ctx
        self._handlers = handlers
        self._policy = policy or RetryPolicy()
        self._poll = poll_interval_s
        self._sweep_every = sweep_interval_s
        self._batch = batch_size
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._delivered = Counter(
            "cdsfusion_outbox_delivered_total",
            "Outbox messages delivered, by topic",
            ["topic"],
            registry=ctx.metrics,
        )
        self._failed = Counter(
            "cdsfusion_outbox_failures_total",
            "Outbox delivery failures, by topic",
            ["topic"],
            registry=ctx.metrics,
        )
        self._pending = Gauge(
            "cdsfusion_outbox_pending", "Outbox messages waiting", registry=ctx.metrics
        )
        ctx.readiness["outbox-relay"] = self._ready

    def _ready(self) -> tuple[bool, str]:
        alive = self._thread is not None and self._thread.is_alive()
        return alive, "running" if alive else "not running"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="outbox-relay", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None

    def wake(self) -> None:
        """Look at the outbox now rather than at the next poll."""
        self._wake.set()

    def _run(self) -> None:
        next_sweep = 0.0
        while not self._stop.is_set():
            try:
                now = utcnow().timestamp()
                if now >= next_sweep:
                    with transaction(self._ctx.session_factory) as session:
                        swept = sweep(session=session, policy=self._policy)
                    if swept:
                        logger.info("re-dispatched %d jobs", swept)
                    next_sweep = now + self._sweep_every
                if self.drain() == 0:
                    self._wake.wait(self._poll)
                    self._wake.clear()
            except Exception as exc:  # noqa: BLE001 - the relay must outlive a bad cycle
                logger.error("outbox relay cycle failed: %s", type(exc).__name__)
                self._stop.wait(1.0)

    def drain(self) -> int:
        """Deliver due messages once; returns how many were handled."""
        topics = list(self._handlers)
        with read_only(self._ctx.session_factory) as session:
            ids = list(
                session.scalars(
                    select(OutboxMessage.id)
                    .where(
                        OutboxMessage.state == OutboxState.PENDING,
                        OutboxMessage.topic.in_(topics),
                        OutboxMessage.next_attempt_at <= utcnow(),
                    )
                    .order_by(OutboxMessage.created_at)
                    .limit(self._batch)
                )
            )
            self._pending.set(
                session.scalar(
                    select(func.count())
                    .select_from(OutboxMessage)
                    .where(OutboxMessage.state == OutboxState.PENDING)
                )
                or 0
            )
        for message_id in ids:
            self._deliver(message_id)
        return len(ids)

    def _deliver(self, message_id: uuid.UUID) -> None:
        with transaction(self._ctx.session_factory) as session:
            message = session.scalar(
                select(OutboxMessage)
                .where(OutboxMessage.id == message_id)
                .with_for_update(skip_locked=True)
            )
            if message is None or message.state is not OutboxState.PENDING:
                return  # another relay took it
            try:
                with session.begin_nested():
                    self._handlers[message.topic](session, message)
            except Exception as exc:  # noqa: BLE001 - recorded on the row, retried
                self._record_failure(session, message, exc)
                return
            message.state = OutboxState.DELIVERED
            message.delivered_at = utcnow()
            self._delivered.labels(message.topic).inc()

    def _record_failure(self, session: Session, message: OutboxMessage, exc: Exception) -> None:
        message.attempts += 1
        message.last_error = type(exc).__name__
        self._failed.labels(message.topic).inc()
        if message.attempts >= self._policy.max_attempts:
            message.state = OutboxState.DEAD
            logger.error("outbox message %s (%s) is dead", message.id, message.topic)
        else:
            message.next_attempt_at = utcnow() + dt.timedelta(
                seconds=min(60.0, 0.5 * 2**message.attempts)
            )
            logger.warning(
                "outbox message %s (%s) failed with %s; attempt %d",
                message.id,
                message.topic,
                type(exc).__name__,
                message.attempts,
            )
