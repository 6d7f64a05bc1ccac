"""docker/healthcheck.py, the images' probe, against a real HTTP server on loopback."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import free_port
from tests.deploy import composefile

SCRIPT = composefile.DOCKER_DIR / "healthcheck.py"


class _Handler(BaseHTTPRequestHandler):
    """``/readyz`` 200, ``/not-ready`` 503 (as /readyz answers before migrations), else 404."""

    def do_GET(self) -> None:
        status = {"/readyz": 200, "/not-ready": 503}.get(self.path, 404)
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, name="probe-target", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _probe(*args: str) -> subprocess.CompletedProcess[str]:
    # -I: the probe must work with nothing but the standard library.
    return subprocess.run(
        [sys.executable, "-I", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_ready_endpoint_is_healthy(server: str) -> None:
    result = _probe(f"{server}/readyz")
    assert result.returncode == 0
    assert result.stdout.startswith("healthy: HTTP 200")


@pytest.mark.parametrize("path", ["/not-ready", "/missing"])
def test_error_status_is_unhealthy(server: str, path: str) -> None:
    result = _probe(f"{server}{path}")
    assert result.returncode == 1
    assert "unhealthy: HTTP" in result.stdout


def test_nothing_listening_is_unhealthy() -> None:
    result = _probe(f"http://127.0.0.1:{free_port()}/healthz", "1")
    assert result.returncode == 1
    assert "unreachable" in result.stdout


@pytest.mark.parametrize(
    "args", [(), ("file:///etc/passwd",), ("http://127.0.0.1:1/", "soon"), ("a", "b", "c")]
)
def test_misuse_is_unhealthy_never_docker_reserved_2(args: tuple[str, ...]) -> None:
    assert _probe(*args).returncode == 1
