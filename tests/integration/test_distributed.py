"""The distributed pipeline: PostgreSQL, a real broker, real ``cdsfusion`` processes.

``cdsfusion serve`` (the relay) dispatches scoring jobs through Redis or RabbitMQ to two
``cdsfusion worker`` processes. Faults on the way: a worker killed with SIGKILL mid-run,
the broker restarted, the engine killed with jobs in flight and started again. Every
bundle must end scored exactly once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from cds.core.db.models import Bundle, JobState, Prediction, ScoringJob
from cds.core.db.session import make_engine, make_session_factory, transaction
from tests.conftest import free_port
from tests.integration.pipeline_support import (
    seed_context,
    seed_study,
    synthetic_patient,
    tiny_checkpoint,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLI = str(Path(sys.executable).with_name("cdsfusion"))
COHORT = 6


def _broker_up(url: str) -> bool:
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1)
        return True
    except Exception:  # noqa: BLE001 - any failure means unreachable
        return False


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("model"))


def _purge(broker: str) -> None:
    from kombu import Connection

    with Connection(broker) as conn, contextlib.suppress(Exception):
        conn.channel().queue_purge("scoring")  # the queue may not exist yet


class Cluster:
    """The engine's processes for one test; every process is stopped at the end."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *args: str) -> None:
        log = (self.logs / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(
            [CLI, *args], env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.logs
        )

    def kill(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGKILL)
        self.procs[name].wait(30)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def log_tail(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in self.logs.glob("*.log")
        )


def _wait(check: Callable[[], bool], timeout: float, cluster: Cluster) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    raise AssertionError("timed out\n" + cluster.log_tail())


@pytest.mark.parametrize(
    ("broker", "restart"),
    [
        ("redis://127.0.0.1:6379/11", ["redis-cli", "-n", "11", "flushdb"]),
        ("amqp://guest:guest@127.0.0.1:5672//", ["rabbitmqctl", "stop_app"]),
    ],
    ids=["redis", "rabbitmq"],
)
def test_every_bundle_scored_exactly_once_through_faults(
    broker: str, restart: list[str], fresh_postgres_url: str, model_dir: Path, tmp_path: Path
) -> None:
    if not _broker_up(broker):
        pytest.skip(f"broker not reachable: {make_url(broker).drivername}")
    _purge(broker)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDSFUSION_")}
    env.update(
        CDSFUSION_DATABASE_URL=fresh_postgres_url,
        CDSFUSION_BROKER_URL=broker,
        CDSFUSION_DATA_DIR=str(tmp_path),
        CDSFUSION_MODEL_DIR=str(model_dir),
        CDSFUSION_WORKER_DEVICE="cpu",
        CDSFUSION_WORKER_BATCH_SIZE="4",
        CDSFUSION_JOB_LEASE_S="6",
        CDSFUSION_JOB_RETRY_BASE_S="0.5",
        CDSFUSION_HTTP_PORT=str(free_port()),
        CDSFUSION_DICOM_PORT="0",
        CDSFUSION_MLLP_PORT="0",
    )
    engine = make_engine(fresh_postgres_url)
    factory = make_session_factory(engine)
    cluster = Cluster(env, tmp_path)
    try:
        cluster.start("worker-a", "worker", "--concurrency", "8")
        cluster.start("worker-b", "worker", "--concurrency", "8")
        cluster.start("serve", "serve")
        with transaction(factory) as session:
            for i in range(COHORT // 2):
                patient = synthetic_patient(i, seed=900 + len(broker))
                seed_context(session, patient)
                seed_study(session, patient, tmp_path)

        def scored() -> int:
            with factory() as session:
                return session.scalar(select(func.count()).select_from(Prediction)) or 0

        _wait(lambda: scored() >= 1, 180, cluster)
        # Fault 1: a worker dies mid-run (SIGKILL), a new one takes its place.
        cluster.kill("worker-a")
        cluster.start("worker-c", "worker", "--concurrency", "8")
        # Fault 2: the engine dies with work in flight, then the second half arrives.
        cluster.kill("serve")
        with transaction(factory) as session:
            for i in range(COHORT // 2, COHORT):
                patient = synthetic_patient(i, seed=900 + len(broker))
                seed_context(session, patient)
                seed_study(session, patient, tmp_path)
        # Fault 3: the broker loses what it held (Redis flushed / RabbitMQ restarted).
        subprocess.run(restart, check=True, capture_output=True, timeout=120)
        if restart[0] == "rabbitmqctl":
            subprocess.run(
                ["rabbitmqctl", "start_app"], check=True, capture_output=True, timeout=120
            )
        cluster.start("serve-2", "serve")

        _wait(lambda: scored() >= COHORT, 300, cluster)
        time.sleep(3)  # anything scored twice would show up now
        with factory() as session:
            bundles = session.scalar(select(func.count()).select_from(Bundle))
            per_bundle = session.execute(
                select(Prediction.bundle_id, func.count()).group_by(Prediction.bundle_id)
            ).all()
            states = session.execute(
                select(ScoringJob.state, func.count()).group_by(ScoringJob.state)
            ).all()
        assert bundles == COHORT
        assert len(per_bundle) == COHORT
        assert all(count == 1 for _, count in per_bundle), per_bundle
        assert dict(states) == {JobState.DONE: COHORT}, cluster.log_tail()
    finally:
        cluster.stop_all()
        engine.dispose()
        if restart[0] == "rabbitmqctl":
            subprocess.run(
                ["rabbitmqctl", "start_app"], capture_output=True, timeout=120, check=False
            )
