"""Extra receiver processes that share the SCP's port (``SO_REUSEPORT``).

One process does its Python work (PDU framing, header reads, indexing) under one GIL, so
it is bound by one core. With ``CDSFUSION_DICOM_RECEIVER_PROCESSES`` = N, the listener
starts N - 1 child processes that bind the same port; the kernel spreads incoming
connections across the N listening sockets. Every process stores and indexes on its own,
against the same store directory and database, so the durability promise is unchanged.
The primary process alone runs the stable-study detector; a child's metrics stay in the
child.

Children are started with ``spawn`` (no inherited threads or connections), stop on SIGTERM
and exit on their own when the parent process goes away.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
from multiprocessing.process import BaseProcess
from types import FrameType

from cds.core.settings import Settings

logger = logging.getLogger(__name__)

_PARENT_CHECK_S = 1.0


class ReceiverProcesses:
    """Start and stop the child receivers.

    Args:
        settings: the engine settings (passed to the children).
        port: the port the primary bound (children bind the same).
        count: how many children.
    """

    def __init__(self, *, settings: Settings, port: int, count: int) -> None:
        self.settings = settings.model_copy(update={"dicom_port": port})
        self.count = count
        self._processes: list[BaseProcess] = []

    def start(self) -> None:
        ready = multiprocessing.get_context("spawn")
        for index in range(self.count):
            process = ready.Process(
                target=run_receiver,
                args=(self.settings, os.getpid()),
                name=f"dicom-receiver-{index + 1}",
                daemon=True,
            )
            process.start()
            self._processes.append(process)

    def stop(self, timeout: float = 10.0) -> None:
        for process in self._processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        for process in self._processes:
            process.join(timeout)
            if process.is_alive():
                process.kill()
                process.join(timeout)
        self._processes.clear()


def run_receiver(settings: Settings, parent_pid: int) -> None:
    """Entry point of a child receiver process."""
    from cds.core.logging_setup import configure_logging
    from cds.core.runtime import EngineContext
    from connectors.dicom.listener import DicomListener

    configure_logging(settings.log_level, settings.log_format)
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ctx = EngineContext.build(settings)
    listener = DicomListener(ctx, primary=False)
    try:
        listener.start()
        while not stop.wait(_PARENT_CHECK_S):
            if os.getppid() != parent_pid:
                logger.warning("engine process went away; receiver stopping")
                break
    finally:
        listener.stop()
        ctx.close()
