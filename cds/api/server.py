"""The HTTP listener as an engine component (uvicorn in a thread)."""

from __future__ import annotations

import logging
import threading
import time

import uvicorn
from fastapi import FastAPI

logger = logging.getLogger(__name__)


class HttpServer:
    """Serves the FastAPI app on ``host:port`` until stopped.

    Args:
        app: the ASGI application.
        host: interface to bind.
        port: TCP port.
        shutdown_timeout_s: how long stop() waits for in-flight requests. Defaults to 10.
    """

    name = "http"

    def __init__(
        self, app: FastAPI, *, host: str, port: int, shutdown_timeout_s: float = 10.0
    ) -> None:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            access_log=False,
            log_config=None,
            lifespan="on",
            timeout_graceful_shutdown=int(shutdown_timeout_s),
        )
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None
        self._host, self._port = host, port
        self._shutdown_timeout_s = shutdown_timeout_s

    def start(self) -> None:
        # uvicorn installs signal handlers only on the main thread; the supervisor owns them.
        self._thread = threading.Thread(target=self._server.run, name="http", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"HTTP listener failed to start on {self._host}:{self._port}")
            if time.monotonic() > deadline:
                raise RuntimeError("HTTP listener did not start within 30 s")
            time.sleep(0.02)
        logger.info("HTTP listening on %s:%d", self._host, self._port)

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(self._shutdown_timeout_s + 5)
            self._thread = None
