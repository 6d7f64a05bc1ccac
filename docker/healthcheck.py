"""Container health probe: exit 0 when a local HTTP URL answers 200, else exit 1.

The images run it as their HEALTHCHECK and docker/compose.yaml as each service's
``healthcheck`` (the slim images carry no curl or wget):

* api: ``/readyz`` (503 until the schema is at head and the listeners and relay run) or
  ``/healthz`` (liveness).
* worker: ``/metrics`` on ``CDSFUSION_WORKER_METRICS_PORT``, served once the model is
  loaded and warmed up.

Usage: ``python healthcheck.py URL [TIMEOUT_S]``; the timeout defaults to 3 seconds.
Standard library only, so it runs in either image before or without cdsfusion imports.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

USAGE = "usage: healthcheck.py http://HOST:PORT/PATH [TIMEOUT_S]\n"
DEFAULT_TIMEOUT_S = 3.0


def probe(url: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[bool, str]:
    """GET ``url``; healthy only on status 200.

    Args:
        url: an ``http://`` URL (the probe runs inside the container, on loopback).
        timeout_s: connect and read timeout in seconds. Defaults to 3.

    Returns:
        (healthy, a one-line reason for ``docker inspect``).
    """
    if not url.startswith("http://"):
        return False, f"not an http:// URL: {url}"
    # No proxy: a site's HTTP_PROXY must not turn a loopback probe into a remote one.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout_s) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        return False, f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return False, f"unreachable: {type(exc).__name__}"
    return status == 200, f"HTTP {status}"


def main(argv: list[str]) -> int:
    """Exit status for Docker: 0 healthy, 1 unhealthy or misused (Docker reserves 2)."""
    if len(argv) not in (1, 2):
        sys.stderr.write(USAGE)
        return 1
    try:
        timeout_s = float(argv[1]) if len(argv) == 2 else DEFAULT_TIMEOUT_S
    except ValueError:
        sys.stderr.write(USAGE)
        return 1
    healthy, reason = probe(argv[0], timeout_s)
    sys.stdout.write(f"{'healthy' if healthy else 'unhealthy'}: {reason}\n")
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
