"""Observations per second through the EHR feeds, beside a direct SQLAlchemy baseline.

For each database (SQLite file, PostgreSQL database created for the run), the same number
of laboratory observations is stored four ways, each committed one item at a time as an
acknowledging connector must:

* ``baseline``: the same rows (one source item, one timeline event) inserted directly with
  SQLAlchemy, one transaction each;
* ``fhir``: HAPI-style ``PUT /fhir/notify/{key}/Observation/{id}`` notifications over HTTP,
  one client;
* ``mllp x1`` / ``mllp x8``: ORU^R01 messages (one OBX each) over 1 and 8 MLLP connections.

Usage::

    .venv/bin/python bench/ehr_ingest.py [--count 400] [--postgres URL] [--no-postgres]

The ratio column is throughput relative to the baseline of the same database.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import socket
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cds.api.app import create_app
from cds.api.server import HttpServer
from cds.core import migrate
from cds.core.clinical import (
    IdentifierIn,
    SourceItemIn,
)
from cds.core.db.models import (
    EventKind,
    PayloadContent,
    Protocol,
    SourceItem,
    SubscriptionChannel,
    TimelineEvent,
)
from cds.core.db.session import make_engine, make_session_factory, transaction
from cds.core.repository.patients import resolve_patient
from cds.core.runtime import EngineContext
from cds.core.settings import Settings
from connectors.fhir.routes import install
from connectors.fhir.subscriptions import create_subscription
from connectors.hl7.listener import MllpListener
from connectors.hl7.mllp import frame

DEFAULT_PG = os.environ.get(
    "CDSFUSION_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def observation(n: int, patient_id: str) -> dict[str, object]:
    return {
        "resourceType": "Observation",
        "id": f"bench-{n}",
        "meta": {"versionId": "1"},
        "status": "final",
        "category": [{"coding": [{"code": "laboratory"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "2524-7"}]},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": "2024-06-01T09:30:00+00:00",
        "valueQuantity": {
            "value": 1 + n % 7,
            "system": "http://unitsofmeasure.org",
            "code": "mmol/L",
        },
    }


def oru(n: int, facility: str) -> bytes:
    segments = [
        f"MSH|^~\\&|LIS|{facility}|CDS|{facility}|20240601101500||ORU^R01^ORU_R01|M{n}|P|2.5.1",
        f"PID|1||BENCH1^^^{facility}^MR||Bench^Patient||19600101|F",
        f"OBR|1||F{n}^LIS|2524-7^Lactate^LN|||20240601093000",
        f"OBX|1|NM|2524-7^Lactate^LN||{1 + n % 7}|mmol/L^mmol/L^UCUM|||||F|||20240601093000",
    ]
    return "\r".join(segments).encode()


def timed(run: Callable[[], None], count: int) -> float:
    started = time.perf_counter()
    run()
    return count / (time.perf_counter() - started)


def bench_baseline(ctx: EngineContext, count: int) -> float:
    with transaction(ctx.session_factory) as session:
        patient_id = resolve_patient(
            session=session, identifiers=[IdentifierIn(system="bench", value=uuid.uuid4().hex)]
        )
    namespace = f"baseline-{uuid.uuid4().hex[:8]}"
    now = dt.datetime.now(dt.UTC)

    def run() -> None:
        for n in range(count):
            payload = json.dumps(observation(n, "x")).encode()
            with transaction(ctx.session_factory) as session:
                item = SourceItem(
                    protocol=Protocol.FHIR,
                    namespace=namespace,
                    item_id=f"Observation/{n}",
                    item_version="1",
                    content_sha256=SourceItemIn.sha256(payload),
                    size_bytes=len(payload),
                    payload=payload,
                    received_at=now,
                    patient_id=patient_id,
                )
                session.add(item)
                session.flush()
                session.add(
                    TimelineEvent(
                        patient_id=patient_id,
                        source_item_id=item.id,
                        lineage_key=f"{namespace}|{n}",
                        kind=EventKind.OBSERVATION,
                        effective_at=now,
                        category="laboratory",
                        code_system="http://loinc.org",
                        code="2524-7",
                        value_num=float(n % 7),
                        unit="mmol/L",
                    )
                )

    return timed(run, count)


def bench_fhir(ctx: EngineContext, count: int) -> float:
    port = free_port()
    server = HttpServer(create_app(ctx, installers=[install]), host="127.0.0.1", port=port)
    server.start()
    base = f"https://bench-{uuid.uuid4().hex[:8]}.example/fhir"
    with transaction(ctx.session_factory) as session:
        key = create_subscription(
            session=session,
            server_base=base,
            channel=SubscriptionChannel.REST_HOOK,
            payload=PayloadContent.FULL_RESOURCE,
            queries=["Observation"],
            now=dt.datetime.now(dt.UTC),
        ).endpoint_key
    url = f"http://127.0.0.1:{port}/fhir/notify/{key}"
    try:
        with httpx.Client(timeout=60) as client:
            patient = {"resourceType": "Patient", "id": "bench", "gender": "female"}
            client.put(f"{url}/Patient/bench", json=patient).raise_for_status()

            def run() -> None:
                for n in range(count):
                    body = observation(n, "bench")
                    client.put(f"{url}/Observation/{body['id']}", json=body).raise_for_status()

            return timed(run, count)
    finally:
        server.stop()


def bench_mllp(ctx: EngineContext, count: int, connections: int) -> float:
    listener = MllpListener(ctx, host="127.0.0.1", port=0)
    listener.start()
    facility = f"B{uuid.uuid4().hex[:8].upper()}"
    per = count // connections

    def sender(offset: int) -> None:
        with socket.create_connection(("127.0.0.1", listener.port)) as sock:
            buffer = b""
            for n in range(offset, offset + per):
                sock.sendall(frame(oru(n, facility)))
                while b"\x1c\r" not in buffer:
                    buffer += sock.recv(65536)
                ack, _, buffer = buffer.partition(b"\x1c\r")
                if b"MSA|AA|" not in ack:
                    raise RuntimeError("message not accepted")

    def run() -> None:
        threads = [threading.Thread(target=sender, args=(i * per,)) for i in range(connections)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    try:
        return timed(run, per * connections)
    finally:
        listener.stop()


def contexts(args: argparse.Namespace) -> list[tuple[str, str, Callable[[], None]]]:
    found: list[tuple[str, str, Callable[[], None]]] = []
    folder = tempfile.mkdtemp(prefix="ehr-bench-")
    found.append(("sqlite", f"sqlite:///{folder}/bench.db", lambda: None))
    if not args.no_postgres:
        admin_url = args.postgres
        name = f"cdsfusion_bench_{uuid.uuid4().hex[:8]}"
        admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        except Exception as exc:  # noqa: BLE001 - report and go on with SQLite only
            print(f"PostgreSQL skipped: {type(exc).__name__}")
            return found

        def drop() -> None:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()

        url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        found.append(("postgresql", url, drop))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=400, help="observations per case")
    parser.add_argument("--postgres", default=DEFAULT_PG)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    print(f"{'database':<11} {'path':<9} {'obs/s':>8} {'x baseline':>11}")
    for label, url, cleanup in contexts(args):
        try:
            migrate.upgrade(url)
            engine = make_engine(url)
            settings = Settings(database_url=url, mllp_port=0, mllp_workers=8)
            results: list[tuple[str, float]] = []
            cases: list[tuple[str, Callable[[EngineContext], float]]] = [
                ("baseline", lambda c: bench_baseline(c, args.count)),
                ("fhir", lambda c: bench_fhir(c, args.count)),
                ("mllp x1", lambda c: bench_mllp(c, args.count, 1)),
                ("mllp x8", lambda c: bench_mllp(c, args.count, 8)),
            ]
            for name, case in cases:
                ctx = EngineContext(
                    settings=settings, engine=engine, session_factory=make_session_factory(engine)
                )
                results.append((name, case(ctx)))
            engine.dispose()
            baseline = results[0][1]
            for name, rate in results:
                print(f"{label:<11} {name:<9} {rate:>8.1f} {rate / baseline:>11.3f}")
        finally:
            cleanup()


if __name__ == "__main__":
    main()
