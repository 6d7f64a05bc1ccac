"""Scale-out on one machine: two connector processes, two workers, PostgreSQL and Redis.

A cohort goes through the real DICOM and MLLP listeners of both ``cdsfusion serve``
processes (alternating), which share the database and the DICOM store; two
``cdsfusion worker`` processes score. Every bundle must be scored exactly once, every
study completed once although both processes watch for completion, and every
RiskAssessment readable from either process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from cds.core.db.models import Bundle, JobState, Prediction, ScoringJob, SourceItem
from cds.core.db.session import make_engine
from cds.demo.run import DEMO_SYSTEM, live_patients
from cds.demo.senders import send_patient
from tests.conftest import free_port
from tests.integration.pipeline_support import tiny_checkpoint
from tests.integration.test_serve import _wait_healthy, _wait_ready

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLI = str(Path(sys.executable).with_name("cdsfusion"))
BROKER = "redis://127.0.0.1:6379/13"
COHORT = 6


def _broker_up() -> bool:
    from kombu import Connection

    try:
        with Connection(BROKER, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1)
            conn.default_channel.client.flushdb()
        return True
    except Exception:  # noqa: BLE001 - any failure means unreachable
        return False


def test_two_connectors_two_workers_score_every_bundle_once(
    fresh_postgres_url: str, tmp_path: Path
) -> None:
    if not _broker_up():
        pytest.skip("Redis not reachable at 127.0.0.1:6379")
    model = tiny_checkpoint(tmp_path / "model")
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("CDSFUSION_")}
    base_env.update(
        CDSFUSION_DATABASE_URL=fresh_postgres_url,
        CDSFUSION_BROKER_URL=BROKER,
        CDSFUSION_DATA_DIR=str(tmp_path / "store"),
        CDSFUSION_MODEL_DIR=str(model),
        CDSFUSION_WORKER_DEVICE="cpu",
        CDSFUSION_WORKER_BATCH_SIZE="4",
        CDSFUSION_DICOM_QUIET_PERIOD_S="2",
        CDSFUSION_JOB_LEASE_S="20",
    )
    nodes = []
    for name in ("a", "b"):
        env = dict(
            base_env,
            CDSFUSION_HTTP_PORT=str(free_port()),
            CDSFUSION_DICOM_PORT=str(free_port()),
            CDSFUSION_MLLP_PORT=str(free_port()),
        )
        nodes.append((name, env))
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        for name, env in nodes:
            for role, args in (("serve", ["serve"]), ("worker", ["worker", "--concurrency", "8"])):
                log = (tmp_path / f"{role}-{name}.log").open("wb")
                logs.append(log)
                procs.append(
                    subprocess.Popen([CLI, *args], env=env, stdout=log, stderr=log, cwd=tmp_path)
                )
        bases = [f"http://127.0.0.1:{env['CDSFUSION_HTTP_PORT']}" for _, env in nodes]
        for base, proc in zip(bases, procs[::2], strict=True):
            _wait_healthy(base, proc)
            _wait_ready(base)

        patients = live_patients(COHORT, seed=31337)
        for i, patient in enumerate(patients):
            env = nodes[i % 2][1]
            codes, statuses = send_patient(
                patient,
                host="127.0.0.1",
                mllp_port=int(env["CDSFUSION_MLLP_PORT"]),
                dicom_port=int(env["CDSFUSION_DICOM_PORT"]),
                called_ae="CDSFUSION",
            )
            assert set(codes) == {"AA"} and set(statuses) == {0}

        deadline = time.monotonic() + 240
        assessments: dict[str, dict[str, object]] = {}
        while len(assessments) < COHORT and time.monotonic() < deadline:
            for i, patient in enumerate(patients):
                if patient.patient_id in assessments:
                    continue
                base = bases[i % 2]
                found = httpx.post(
                    f"{base}/fhir/Patient/_search",
                    data={"identifier": f"{DEMO_SYSTEM}|{patient.patient_id}"},
                ).json()
                if not found.get("entry"):
                    continue
                pid = found["entry"][0]["resource"]["id"]
                search = httpx.get(f"{base}/fhir/RiskAssessment", params={"patient": pid}).json()
                for entry in search.get("entry", []):
                    if entry["resource"]["resourceType"] == "RiskAssessment":
                        assessments[patient.patient_id] = entry["resource"]
            time.sleep(1)
        log_tail = "\n".join(p.read_text(errors="replace")[-1500:] for p in tmp_path.glob("*.log"))
        assert len(assessments) == COHORT, log_tail

        # Each RiskAssessment is readable from the other connector process too.
        for i, patient in enumerate(patients):
            other = bases[(i + 1) % 2]
            read = httpx.get(f"{other}/fhir/RiskAssessment/{assessments[patient.patient_id]['id']}")
            assert read.status_code == 200 and read.json()["status"] == "final"

        time.sleep(2)  # a duplicate scoring would show up now
        engine = make_engine(fresh_postgres_url)
        with engine.connect() as conn:
            bundles = conn.scalar(select(func.count()).select_from(Bundle))
            per_bundle = conn.execute(
                select(Prediction.bundle_id, func.count()).group_by(Prediction.bundle_id)
            ).all()
            jobs = dict(
                conn.execute(
                    select(ScoringJob.state, func.count()).group_by(ScoringJob.state)
                ).all()
            )
            completions = conn.scalar(
                select(func.count())
                .select_from(SourceItem)
                .where(SourceItem.namespace == "dicom-study")
            )
        engine.dispose()
        assert bundles == COHORT
        assert len(per_bundle) == COHORT and all(n == 1 for _, n in per_bundle)
        assert jobs == {JobState.DONE: COHORT}
        assert completions == COHORT
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in logs:
            log.close()
