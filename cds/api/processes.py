"""More HTTP processes on the engine's port (``CDSFUSION_HTTP_PROCESSES``).

One Python process serves HTTP on one core. With ``CDSFUSION_HTTP_PROCESSES=N`` (N > 1),
``cdsfusion serve`` binds the HTTP port with ``SO_REUSEPORT`` and starts N - 1 more
processes that serve the same app on the same port; the kernel spreads connections across
all N. The extra processes run HTTP only (the DICOM and MLLP listeners, the relay and the
embedded worker stay in the main process) and share nothing with it but the database,
which every route already treats as the source of truth. They stop with the main process,
and stop by themselves if it disappears.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from multiprocessing.context import SpawnProcess
from multiprocessing.synchronize import Event

logger = logging.getLogger(__name__)

#: How long one extra process may take to start serving.
START_TIMEOUT_S = 60.0


def _serve_http(parent: int, ready: Event, stop: Event) -> None:
    """An extra HTTP process: the engine's app on the shared port until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group: the parent leads
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    from cds.api.app import create_app
    from cds.api.server import HttpServer
    from cds.core.cli.common import load_settings
    from cds.core.cli.serve import http_installers
    from cds.core.runtime import EngineContext

    settings = load_settings()
    ctx = EngineContext.build(settings)
    ctx.readiness["main-process"] = lambda: (
        (True, "running") if os.getppid() == parent else (False, "main process gone")
    )
    server = HttpServer(
        create_app(ctx, installers=http_installers()),
        host=settings.bind_host,
        port=settings.http_port,
        shutdown_timeout_s=settings.shutdown_timeout_s,
        reuse_port=True,
    )
    try:
        server.start()
        ready.set()
        while not stop.wait(1.0):
            if os.getppid() != parent:
                logger.warning("main process gone: HTTP process %d stops", os.getpid())
                break
    finally:
        server.stop()
        ctx.close()


class HttpProcesses:
    """The extra HTTP processes as one engine component.

    Args:
        count: how many to start besides the main process.
        shutdown_timeout_s: how long each may take to finish its requests when stopped.
    """

    name = "http-processes"

    def __init__(self, count: int, *, shutdown_timeout_s: float) -> None:
        self._count = count
        self._timeout = shutdown_timeout_s
        self._context = multiprocessing.get_context("spawn")
        self._stop = self._context.Event()
        self._processes: list[SpawnProcess] = []

    def start(self) -> None:
        """Start them all and wait until each serves.

        Raises:
            RuntimeError: one did not start within :data:`START_TIMEOUT_S`.
        """
        for number in range(self._count):
            ready = self._context.Event()
            process = self._context.Process(
                target=_serve_http,
                args=(os.getpid(), ready, self._stop),
                name=f"cdsfusion-http-{number + 1}",
                daemon=True,
            )
            process.start()
            self._processes.append(process)
            if not ready.wait(START_TIMEOUT_S) or not process.is_alive():
                raise RuntimeError(f"HTTP process {number + 1} did not start")
        logger.info("%d more HTTP processes serving", self._count)

    def stop(self) -> None:
        self._stop.set()
        for process in self._processes:
            process.join(self._timeout + 5)
            if process.is_alive():
                logger.warning("HTTP process %s did not stop in time: terminated", process.pid)
                process.terminate()
                process.join(5)
        self._processes.clear()

    def pids(self) -> list[int]:
        """The extra processes' ids (for tests and logs)."""
        return [p.pid for p in self._processes if p.pid is not None]
