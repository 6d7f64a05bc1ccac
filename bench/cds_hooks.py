"""CDS Hooks ``patient-view`` latency under load, beside a bare endpoint of the same server.

The engine's HTTP app (FHIR outputs, CDS Hooks, model card) runs with uvicorn in a separate
process, on PostgreSQL (a temporary database on ``CDSFUSION_BENCH_POSTGRES_URL``, default
the machine's test server) or, with ``--sqlite``, on a SQLite file. One patient with a
stored prediction is seeded. 50 concurrent clients (asyncio streams, one connection each)
then call, over real HTTP (kept-alive HTTP/1.1 connections, closed loop):

* ``POST /cds-services/cxr-deterioration-patient-view`` with a fresh ES384-signed JWT per
  call (the full path: verification, ``jti`` recorded, patient lookup, prediction, card);
* ``GET /healthz`` (the bare endpoint), in the same server, in the same run.

Prints p50, p99, requests/s and the server processes' CPU time per request (user + system,
from ``/proc``: what a call costs the server whatever else the machine runs) for each, and
the ratio of the p99s.
Goal (issue 8): patient-view p99 <= 50 ms and <= 3x the bare endpoint.

Usage: python -m bench.cds_hooks [--clients 50] [--requests 2000] [--sqlite] [--processes 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

SERVICE = "cxr-deterioration-patient-view"
POSTGRES = os.environ.get(
    "CDSFUSION_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
ISSUER = "https://ehr.bench.example"


def _serve(
    database_url: str, port: int, workdir: str, reuse_port: bool, ready: Any, stop: Any
) -> None:
    """The server process: the engine's HTTP app on ``port`` until ``stop`` is set."""
    import logging

    from cds.api.server import HttpServer
    from tests.cds.support import engine_context, output_app, settings_for

    logging.basicConfig(level=logging.WARNING)
    from cds.core.db.session import make_engine

    engine = make_engine(database_url, pool_size=20)
    settings = settings_for(
        engine,
        Path(workdir),
        cds_hooks_auth_disabled=False,
        cds_hooks_issuers_file=Path(workdir) / "issuers.json",
        public_base_url=f"http://127.0.0.1:{port}",
        http_port=port,
        db_pool_size=6,
    )
    server = HttpServer(
        output_app(engine_context(engine, settings)),
        host="127.0.0.1",
        port=port,
        reuse_port=reuse_port,
    )
    server.start()
    ready.set()
    stop.wait()
    server.stop()
    engine.dispose()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> int:
    """One HTTP/1.1 request on a kept-alive connection; the response's status code."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length:
        await reader.readexactly(length)
    return status


async def _load(
    host: str, port: int, make: Any, clients: int, total: int
) -> tuple[list[float], float, int]:
    """``total`` requests from ``clients`` concurrent clients; (latencies s, wall s, errors).

    Each client is one kept-alive HTTP/1.1 connection sending its next request as soon as
    the previous answer is read (closed loop). Requests are pre-built bytes and responses are
    parsed minimally, so the load generator costs tens of microseconds per call, not the
    server's share of the machine.
    """
    requests = [make() for _ in range(total)]
    latencies: list[float] = []
    errors = 0

    async def client() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while requests:
                request = requests.pop()
                started = time.perf_counter()
                status = await _exchange(reader, writer, request)
                latencies.append(time.perf_counter() - started)
                if status != 200:
                    errors += 1
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, time.perf_counter() - started, errors


def _http_request(method: str, path: str, port: int, headers: dict[str, str], body: bytes) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far (Linux ``/proc``; 0 elsewhere)."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _measure(name: str, pids: list[int], run: Any) -> float:
    """Run one load, print its figures (with the servers' CPU time per request); the p99."""
    cpu = _cpu_seconds(pids)
    latencies, wall, errors = asyncio.run(run)
    cpu_ms = (_cpu_seconds(pids) - cpu) / max(1, len(latencies)) * 1e3
    p50, p99 = _percentile(latencies, 0.50) * 1e3, _percentile(latencies, 0.99) * 1e3
    print(
        f"{name:<32} n={len(latencies):5d}  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  "
        f"{len(latencies) / wall:8.1f} req/s  server CPU {cpu_ms:5.2f} ms/req  errors {errors}"
    )
    return p99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--sqlite", action="store_true", help="SQLite instead of PostgreSQL")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="server processes on the one port (SO_REUSEPORT), as CDSFUSION_HTTP_PROCESSES",
    )
    args = parser.parse_args()

    from cds.core import migrate
    from cds.core.db.session import make_engine
    from tests.cds.support import seed_committed
    from tests.conftest import free_port

    workdir = tempfile.mkdtemp(prefix="cds-hooks-bench-")
    admin = None
    if args.sqlite:
        database_url = f"sqlite:///{workdir}/bench.db"
    else:
        name = f"cdsfusion_bench_{uuid.uuid4().hex[:10]}"
        admin = create_engine(POSTGRES, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        database_url = make_url(POSTGRES).set(database=name).render_as_string(hide_password=False)
    try:
        migrate.upgrade(database_url)
        engine = make_engine(database_url)
        seeded = seed_committed(engine)
        engine.dispose()

        key = ec.generate_private_key(ec.SECP384R1())
        public = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
        public.update(kid="bench-1", alg="ES384", use="sig")
        (Path(workdir) / "issuers.json").write_text(
            json.dumps({ISSUER: {"jwks": {"keys": [public]}}}), encoding="utf-8"
        )
        port = free_port()
        spawn = multiprocessing.get_context("spawn")
        stop = spawn.Event()
        servers = []
        for _ in range(args.processes):
            ready = spawn.Event()
            server = spawn.Process(
                target=_serve,
                args=(database_url, port, workdir, args.processes > 1, ready, stop),
            )
            server.start()
            servers.append(server)
            if not ready.wait(60):
                raise SystemExit("server did not start")
        base = f"http://127.0.0.1:{port}"
        endpoint = f"{base}/cds-services/{SERVICE}"
        body = {
            "hook": "patient-view",
            "hookInstance": str(uuid.uuid4()),
            "fhirServer": "http://ehr.example.org/fhir",
            "context": {"userId": "Practitioner/1", "patientId": seeded.fhir_patient_id},
        }
        tokens = [
            jwt.encode(
                {
                    "iss": ISSUER,
                    "sub": "bench",
                    "aud": endpoint,
                    "iat": int(time.time()),
                    "exp": int(time.time()) + 280,
                    "jti": str(uuid.uuid4()),
                },
                key,
                algorithm="ES384",
                headers={"kid": "bench-1"},
            )
            for _ in range(args.requests + 200)
        ]

        path = f"/cds-services/{SERVICE}"
        payload = json.dumps(body).encode()

        def hook_call() -> bytes:
            headers = {
                "Authorization": f"Bearer {tokens.pop()}",
                "Content-Type": "application/json",
            }
            return _http_request("POST", path, port, headers, payload)

        def bare() -> bytes:
            return _http_request("GET", "/healthz", port, {}, b"")

        check = httpx.post(
            endpoint, content=payload, headers={"Authorization": f"Bearer {tokens.pop()}"}
        )
        assert check.status_code == 200 and check.json()["cards"], check.text
        host = "127.0.0.1"
        asyncio.run(_load(host, port, hook_call, args.clients, 199))  # warm-up
        asyncio.run(_load(host, port, bare, args.clients, 200))
        print(
            f"{args.clients} concurrent clients, {args.requests} requests each endpoint, "
            f"{'SQLite' if args.sqlite else 'PostgreSQL'}, {args.processes} server process(es), "
            f"{os.cpu_count()} CPUs"
        )
        pids = [server.pid for server in servers if server.pid is not None]
        bare_p99 = _measure(
            "GET /healthz (bare)", pids, _load(host, port, bare, args.clients, args.requests)
        )
        hook_p99 = _measure(
            "POST patient-view (signed JWT)",
            pids,
            _load(host, port, hook_call, args.clients, args.requests),
        )
        print(
            f"p99 ratio patient-view / bare: {hook_p99 / bare_p99:.2f}x "
            f"(goal: p99 <= 50 ms and <= 3x)"
        )
        stop.set()
        for server in servers:
            server.join(30)
    finally:
        if admin is not None:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


if __name__ == "__main__":
    main()
