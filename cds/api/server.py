"""The HTTP listener as an engine component (uvicorn in a thread)."""

from __future__ import annotations

import logging
import socket
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
        reuse_port: bind with ``SO_REUSEPORT`` so that several processes listen on one
            port and the kernel spreads connections across them (Linux, BSD).
    """

    name = "http"

    def __init__(
        self,
        app: FastAPI,
        *,
        host: str,
        port: int,
        shutdown_timeout_s: float = 10.0,
        reuse_port: bool = False,
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
        self._reuse_port = reuse_port
        self._shutdown_timeout_s = shutdown_timeout_s

    def start(self) -> None:
        # uvicorn installs signal handlers only on the main thread; the supervisor owns them.
        sockets = [self._bind_reusing_port()] if self._reuse_port else None
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": sockets}, name="http", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"HTTP listener failed to start on {self._host}:{self._port}")
            if time.monotonic() > deadline:
                raise RuntimeError("HTTP listener did not start within 30 s")
            time.sleep(0.02)
        logger.info("HTTP listening on %s:%d", self._host, self._port)

    def _bind_reusing_port(self) -> socket.socket:
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((self._host, self._port))
        sock.listen(2048)
        return sock

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(self._shutdown_timeout_s + 5)
            self._thread = None
