"""The engine process: shared context, components with start/stop, signal handling.

``cdsfusion serve`` builds one :class:`EngineContext` and starts every component in it
(HTTP API, DICOM SCP, MLLP listener, the embedded worker), then waits for SIGINT or SIGTERM
and stops them in reverse order.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Protocol

from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from cds.core import migrate
from cds.core.db.session import make_engine, make_session_factory
from cds.core.settings import Settings

logger = logging.getLogger(__name__)


class Component(Protocol):
    """A long-running part of the engine process."""

    name: str

    def start(self) -> None:
        """Start serving; return once it is listening (raise if it cannot)."""

    def stop(self) -> None:
        """Stop and release resources; idempotent."""


ReadinessCheck = Callable[[], tuple[bool, str]]


@dataclass
class EngineContext:
    """What every component of one process shares, built once from settings.

    Attributes:
        settings: the one settings object.
        engine: SQLAlchemy engine of the timeline database.
        session_factory: sessions bound to ``engine``.
        metrics: the process's Prometheus registry (no global registry).
        readiness: named checks that /readyz runs; components add their own.
    """

    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    metrics: CollectorRegistry = field(default_factory=CollectorRegistry)
    readiness: dict[str, ReadinessCheck] = field(default_factory=dict)

    @classmethod
    def build(cls, settings: Settings) -> EngineContext:
        engine = make_engine(settings.database_url, pool_size=settings.db_pool_size)
        ctx = cls(settings=settings, engine=engine, session_factory=make_session_factory(engine))
        ctx.readiness["database"] = ctx.database_ready
        return ctx

    def database_ready(self) -> tuple[bool, str]:
        """The database answers and its schema is at this code's head revision."""
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            current = migrate.current_revision(self.engine)
        except Exception as exc:  # noqa: BLE001 - any driver error means "not ready"
            return False, f"database unreachable ({type(exc).__name__})"
        head = migrate.head_revision()
        if current != head:
            return False, f"schema at {current}, code expects {head}: run `cdsfusion db upgrade`"
        return True, f"schema at {current}"

    def close(self) -> None:
        self.engine.dispose()


class Supervisor:
    """Starts components in order, stops them in reverse, on a signal or on failure."""

    def __init__(self, components: Sequence[Component]) -> None:
        self._components = list(components)
        self._started: list[Component] = []
        self.stop_requested = threading.Event()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        logger.info("received %s, stopping", signal.Signals(signum).name)
        self.stop_requested.set()

    def run(self) -> int:
        """Run until SIGINT/SIGTERM; returns the process exit code."""
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            for component in self._components:
                logger.info("starting %s", component.name)
                component.start()
                self._started.append(component)
            logger.info("engine started: %s", ", ".join(c.name for c in self._started))
            self.stop_requested.wait()
            return 0
        except Exception:
            logger.exception("start-up failed")
            return 1
        finally:
            self.stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def stop_all(self) -> None:
        while self._started:
            component = self._started.pop()
            try:
                component.stop()
                logger.info("stopped %s", component.name)
            except Exception:
                logger.exception("error stopping %s", component.name)
