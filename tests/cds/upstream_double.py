"""A minimal upstream FHIR server for the writer's tests: PUT and GET, down and up again.

Real HTTP on a fixed loopback port, so it can be stopped (the engine then sees connection
refused) and started again on the same port. It keeps the latest body per ``Type/id``
with a version counter, answers 201 on create and 200 on update (R4 §3.1.0.4.3), and
records each request's method, path and ``Authorization`` header.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.conftest import free_port
from tests.doubles.http import JsonHandler


class UpstreamFhirDouble:
    """Start with :meth:`up`, stop with :meth:`down`; ``fail_with`` makes PUTs fail."""

    def __init__(self) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/fhir"
        self.store: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, int] = {}
        self.requests: list[tuple[str, str, str | None]] = []
        self.fail_with: int | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def up(self) -> UpstreamFhirDouble:
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="upstream-fhir", daemon=True
        )
        self._thread.start()
        return self

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        double = self

        class Handler(JsonHandler):
            content_type = "application/fhir+json"

            def do_PUT(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                key = self.path.removeprefix("/fhir/")
                with double._lock:
                    double.requests.append(("PUT", key, self.headers.get("Authorization")))
                    if double.fail_with is not None:
                        self._send(double.fail_with)
                        return
                    created = key not in double.store
                    double.store[key] = body
                    double.versions[key] = double.versions.get(key, 0) + 1
                self._send(201 if created else 200, body)

            def do_GET(self) -> None:
                key = self.path.removeprefix("/fhir/")
                with double._lock:
                    found = double.store.get(key)
                if found is None:
                    self._send(404)
                else:
                    self._send(200, found)

        return Handler
