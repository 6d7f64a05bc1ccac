"""End-to-end latency: last instance of a study received -> its RiskAssessment over FHIR.

One run, two deployments of the same code:

* embedded: one ``cdsfusion serve`` process, SQLite, the in-process worker;
* distributed: ``cdsfusion serve`` and one ``cdsfusion worker`` on PostgreSQL and Redis.

For each synthetic patient, the labs, vitals, notes and admission go over HL7v2 MLLP, then
the chest radiograph over DICOM C-STORE; the clock starts when the last C-STORE response
arrives and stops when ``GET /fhir/RiskAssessment?patient=..`` first returns the
assessment. The study's quiet period is set short (``--quiet``). Patients are sent one at a
time. Goal (issue 10): p95 <= quiet period + 1 s.

Usage: python -m bench.end_to_end [--patients 12] [--quiet 1.0]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import httpx

from bench.pg import DEFAULT_SERVER, create_database, drop_database
from cds.core import migrate
from cds.demo.run import DEMO_SYSTEM, live_patients
from cds.demo.senders import send_patient
from tests.conftest import free_port
from tests.integration.pipeline_support import tiny_checkpoint

CLI = str(Path(sys.executable).with_name("cdsfusion"))


def _wait_ready(base: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"engine at {base} not ready")


def _latency(client: httpx.Client, patient: object, env: dict[str, str]) -> float:
    codes, statuses = send_patient(
        patient,
        host="127.0.0.1",
        mllp_port=int(env["CDSFUSION_MLLP_PORT"]),
        dicom_port=int(env["CDSFUSION_DICOM_PORT"]),
        called_ae="CDSFUSION",
    )
    received = time.perf_counter()
    if set(codes) != {"AA"} or set(statuses) != {0}:
        raise SystemExit(f"not accepted: {codes} {statuses}")
    mrn = patient.patient_id  # type: ignore[attr-defined]
    patient_id = None
    while time.perf_counter() - received < 120:
        if patient_id is None:
            found = client.post(
                "/fhir/Patient/_search", data={"identifier": f"{DEMO_SYSTEM}|{mrn}"}
            ).json()
            if found.get("entry"):
                patient_id = found["entry"][0]["resource"]["id"]
        if patient_id is not None:
            search = client.get("/fhir/RiskAssessment", params={"patient": patient_id}).json()
            if any(
                e["resource"]["resourceType"] == "RiskAssessment" for e in search.get("entry", [])
            ):
                return time.perf_counter() - received
        time.sleep(0.02)
    raise SystemExit("no RiskAssessment within 120 s")


def run_mode(name: str, env: dict[str, str], workdir: Path, n: int, seed: int) -> list[float]:
    procs = [
        subprocess.Popen(
            [CLI, "serve"],
            env=env,
            cwd=workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    if env.get("CDSFUSION_BROKER_URL"):
        procs.append(
            subprocess.Popen(
                [CLI, "worker", "--concurrency", "8"],
                env=env,
                cwd=workdir,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    base = f"http://127.0.0.1:{env['CDSFUSION_HTTP_PORT']}"
    try:
        _wait_ready(base)
        time.sleep(2 if len(procs) > 1 else 0)  # let the worker finish its warm-up
        latencies = []
        with httpx.Client(base_url=base, timeout=30) as client:
            for patient in live_patients(n, seed):
                latencies.append(_latency(client, patient, env))
        return latencies
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=12)
    parser.add_argument("--quiet", type=float, default=1.0, help="study quiet period, s")
    parser.add_argument("--broker", default="redis://127.0.0.1:6379/14")
    parser.add_argument(
        "--postgres",
        default=DEFAULT_SERVER,
    )
    args = parser.parse_args()
    name, pg_url = create_database(args.postgres, "cdsfusion_e2e")
    results: dict[str, list[float]] = {}
    try:
        migrate.upgrade(pg_url)
        with TemporaryDirectory() as tmp:
            work = Path(tmp)
            model = tiny_checkpoint(work / "model")
            common = {k: v for k, v in os.environ.items() if not k.startswith("CDSFUSION_")}
            common.update(
                CDSFUSION_MODEL_DIR=str(model),
                CDSFUSION_WORKER_DEVICE="cpu",
                CDSFUSION_DICOM_QUIET_PERIOD_S=str(args.quiet),
                CDSFUSION_LOG_LEVEL="WARNING",
            )
            modes = {
                "embedded": dict(
                    common,
                    CDSFUSION_DATA_DIR=str(work / "embedded"),
                    CDSFUSION_DATABASE_URL=f"sqlite:///{work / 'embedded' / 'cds.db'}",
                ),
                "distributed": dict(
                    common,
                    CDSFUSION_DATA_DIR=str(work / "distributed"),
                    CDSFUSION_DATABASE_URL=pg_url,
                    CDSFUSION_BROKER_URL=args.broker,
                ),
            }
            for seed, (mode, env) in enumerate(modes.items(), start=500):
                env.update(
                    CDSFUSION_HTTP_PORT=str(free_port()),
                    CDSFUSION_DICOM_PORT=str(free_port()),
                    CDSFUSION_MLLP_PORT=str(free_port()),
                )
                results[mode] = run_mode(mode, env, work, args.patients, seed)
    finally:
        drop_database(args.postgres, name)
    print(
        f"\nlast instance received -> RiskAssessment readable over FHIR, quiet period {args.quiet:.1f} s, "
        f"{args.patients} patients each (tiny model, CPU)"
    )
    for mode, values in results.items():
        q = statistics.quantiles(values, n=100, method="inclusive")
        print(
            f"  {mode:12} p50 {q[49]:.2f} s  p95 {q[94]:.2f} s  max {max(values):.2f} s  "
            f"(p95 - quiet: {q[94] - args.quiet:.2f} s; goal p95 <= quiet + 1 s)"
        )


if __name__ == "__main__":
    main()
