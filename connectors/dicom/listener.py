"""The DICOM connector as an engine component: SCP, stable-study detector, commitment.

``cdsfusion serve`` starts :class:`DicomListener` when ``CDSFUSION_DICOM_PORT`` is not 0.
It binds the SCP, then runs three threads: the association server (one asyncio loop for
every association, :mod:`.ul`; C-STORE work on that loop, N-ACTION in its thread pool),
the stable-study detector (:mod:`.stable`, one pass at start-up completes what became due
while the engine was down) and the storage commitment reporter (:mod:`.commitment`). With
``CDSFUSION_DICOM_RECEIVER_PROCESSES`` > 1 it also starts that many minus one receiver
processes (:mod:`.receivers`) that accept associations on the same port
(``SO_REUSEPORT``).

Readiness check ``dicom``: the server's loop thread is serving and the store directory is
writable.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from cds.core.db.models import SourceItem
from cds.core.db.session import read_only
from cds.core.db.types import utcnow
from cds.core.runtime import EngineContext
from connectors.dicom.batch import BatchIndexer
from connectors.dicom.commitment import CommitmentReporter, parse_peers
from connectors.dicom.index import StudyTiming
from connectors.dicom.metrics import DicomMetrics
from connectors.dicom.receive import InstanceReceiver
from connectors.dicom.receivers import ReceiverProcesses
from connectors.dicom.routing import RoutingRules
from connectors.dicom.scp import StorageSCP
from connectors.dicom.security import AccessPolicy, server_tls_context
from connectors.dicom.stable import complete_due_studies, next_due_at
from connectors.dicom.store import ContentStore
from connectors.dicom.ul import UpperLayerServer
from connectors.dicom.writer import IndexWriter

logger = logging.getLogger(__name__)

#: Longest sleep of the detector between passes, in seconds.
DETECTOR_MAX_SLEEP_S = 1.0
#: Files unreferenced for this long are removed by the start-up cleanup.
ORPHAN_GRACE = dt.timedelta(hours=1)
#: Under CDSFUSION_DATA_DIR: the receiver processes' writers take turns on it (SQLite only).
WRITER_LOCK_FILE = "dicom-index-writer.lock"


class DicomListener:
    """The DICOM SCP component of one engine process.

    Args:
        ctx: the process's engine context.
        primary: the engine's own listener (default), which runs the stable-study
            detector and starts the extra receiver processes; ``False`` in those children.
    """

    name = "dicom"

    def __init__(self, ctx: EngineContext, *, primary: bool = True) -> None:
        self.ctx = ctx
        settings = ctx.settings
        self.metrics = DicomMetrics(ctx.metrics)
        self.store = ContentStore(settings.data_dir)
        self.rules = RoutingRules.load(settings.dicom_routing_rules_file)
        self.policy = AccessPolicy.from_settings(settings)
        self.timing = StudyTiming(
            quiet_period_s=settings.dicom_quiet_period_s,
            hard_cap_s=settings.dicom_study_hard_cap_s,
            rules=self.rules,
            site_zone=ZoneInfo(settings.site_timezone),
        )
        self.writer = IndexWriter(
            ctx.session_factory,
            BatchIndexer(
                timing=self.timing,
                policy=settings.dicom_duplicate_policy,
                issuer_map=dict(settings.issuer_map or {}),
            ),
            lock_path=(
                settings.data_dir / WRITER_LOCK_FILE
                if settings.is_sqlite and settings.dicom_receiver_processes > 1
                else None
            ),
        )
        self.receiver = InstanceReceiver(store=self.store, writer=self.writer, metrics=self.metrics)
        self.reporter = CommitmentReporter(
            ae_title=settings.dicom_ae_title,
            peers=parse_peers(settings.dicom_commitment_peers),
            session_factory=ctx.session_factory,
            store=self.store,
            on_result=lambda result: self.metrics.commitments.labels(result=result).inc(),
        )
        self.scp = StorageSCP(
            settings=settings,
            receiver=self.receiver,
            reporter=self.reporter,
            policy=self.policy,
            metrics=self.metrics,
        )
        self.primary = primary
        self.server: UpperLayerServer | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._receivers: ReceiverProcesses | None = None
        ctx.readiness["dicom"] = self.ready

    @property
    def port(self) -> int:
        """The bound port (useful with port 0 in tests)."""
        assert self.server is not None
        return int(self.server.server_address[1])

    def start(self) -> None:
        """Bind the port, start serving and detecting; returns once listening.

        Raises:
            OSError: the port cannot be bound.
        """
        settings = self.ctx.settings
        self.store.prepare()
        extra = settings.dicom_receiver_processes - 1 if self.primary else 0
        self.server = self.scp.make_server(
            (settings.bind_host, settings.dicom_port),
            ssl_context=server_tls_context(settings),
            reuse_port=settings.dicom_receiver_processes > 1,
        )
        self._stopping.clear()
        self.writer.start()
        self.reporter.start()
        try:
            self.server.start()
        except OSError:
            self.server = None
            self.reporter.stop()
            self.writer.stop()
            raise
        if self.primary:
            self._spawn("dicom-stable-study", self._detect)
        if extra > 0:
            receivers = ReceiverProcesses(settings=settings, port=self.port, count=extra)
            receivers.start()
            self._receivers = receivers
        logger.info(
            "DICOM SCP listening on port %d (%d receiver processes)",
            self.port,
            settings.dicom_receiver_processes,
        )

    def stop(self) -> None:
        """Stop accepting, let in-flight messages answer, abort the associations, stop the
        threads; idempotent."""
        self._stopping.set()
        receivers = self._receivers
        self._receivers = None
        if receivers is not None:
            receivers.stop()
        server, self.server = self.server, None
        if server is not None:
            server.stop(timeout=self.ctx.settings.shutdown_timeout_s)
        self.reporter.stop()
        self.writer.stop()
        for thread in self._threads:
            thread.join(timeout=self.ctx.settings.shutdown_timeout_s)
        self._threads.clear()

    def ready(self) -> tuple[bool, str]:
        """Readiness: serving, and the store accepts writes."""
        if self.server is None or not self.server.serving:
            return False, "DICOM SCP not serving"
        if not os.access(self.store.root, os.W_OK):
            return False, "DICOM store not writable"
        return True, f"listening on port {self.port}"

    def detect_once(self) -> int:
        """One stable-study pass; returns the number of studies completed."""
        completed = complete_due_studies(
            session_factory=self.ctx.session_factory,
            now=utcnow(),
            rules=self.rules,
            issuer_map=self.ctx.settings.issuer_map,
        )
        for study in completed:
            self.metrics.completions.labels(anchor=str(study.anchor).lower()).inc()
        return len(completed)

    def remove_orphans(self) -> int:
        """Delete store files older than :data:`ORPHAN_GRACE` that no source item references.

        Only safe while no receiver shares the store: a receiver that finds an orphan's
        bytes again reuses the file and commits a reference to it, which a concurrent
        cleanup could delete. Run it as maintenance, not alongside serving processes.
        """
        removed = 0
        try:
            with self.ctx.session_factory() as session:
                for key in self.store.orphans(older_than=ORPHAN_GRACE):
                    referenced = session.scalar(
                        select(SourceItem.id).where(SourceItem.storage_key == key).limit(1)
                    )
                    if referenced is None:
                        self.store.remove(key)
                        removed += 1
        except (SQLAlchemyError, OSError) as exc:
            logger.warning("orphan cleanup skipped (%s)", type(exc).__name__)
        if removed:
            logger.info("removed %d unreferenced files from the DICOM store", removed)
        return removed

    def _spawn(self, name: str, target: object) -> None:
        assert callable(target)
        thread = threading.Thread(target=target, name=name, daemon=False)
        thread.start()
        self._threads.append(thread)

    def _detect(self) -> None:
        while not self._stopping.is_set():
            delay = DETECTOR_MAX_SLEEP_S
            try:
                self.detect_once()
                with read_only(self.ctx.session_factory) as session:
                    due = next_due_at(session=session)
                if due is not None:
                    delay = min(delay, max((due - utcnow()).total_seconds(), 0.05))
            except Exception as exc:  # the detector keeps running; the next pass retries
                logger.exception("stable-study pass failed (%s)", type(exc).__name__)
            self._stopping.wait(delay)
