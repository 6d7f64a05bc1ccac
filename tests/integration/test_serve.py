"""``cdsfusion serve`` as a real process: health, readiness, clean exit on SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port
from tests.integration.pipeline_support import tiny_checkpoint

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLI = str(Path(sys.executable).with_name("cdsfusion"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("model"))


@pytest.fixture
def env(tmp_path: Path, model_dir: Path) -> dict[str, str]:
    return _env(tmp_path, CDSFUSION_MODEL_DIR=str(model_dir), CDSFUSION_WORKER_DEVICE="cpu")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDSFUSION_")}
    env.update(
        CDSFUSION_DATA_DIR=str(tmp_path / "var"),
        CDSFUSION_DATABASE_URL=f"sqlite:///{tmp_path / 'var' / 'cdsfusion.db'}",
        CDSFUSION_HTTP_PORT=str(free_port()),
        CDSFUSION_DICOM_PORT=str(free_port()),
        CDSFUSION_MLLP_PORT=str(free_port()),
    )
    env.update(extra)
    return env


def _wait_healthy(base: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited early with {proc.returncode}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError("serve did not become healthy")


def _wait_ready(base: str, timeout: float = 120) -> httpx.Response:
    """Readiness comes after liveness: the model loads once HTTP is up."""
    deadline = time.monotonic() + timeout
    while True:
        ready = httpx.get(f"{base}/readyz", timeout=5)
        if ready.status_code == 200 or time.monotonic() > deadline:
            assert ready.status_code == 200, ready.text
            return ready
        assert ready.status_code == 503
        time.sleep(0.2)


def test_serve_answers_health_and_stops_cleanly_on_sigterm(
    tmp_path: Path, env: dict[str, str]
) -> None:
    base = f"http://127.0.0.1:{env['CDSFUSION_HTTP_PORT']}"
    proc = subprocess.Popen([CLI, "serve"], env=env, cwd=tmp_path, stderr=subprocess.PIPE)
    try:
        _wait_healthy(base, proc)
        assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
        ready = _wait_ready(base)
        checks = ready.json()["checks"]
        assert checks["database"]["ok"] is True
        assert checks["model"] == {
            "ok": True,
            "detail": "cdsfusion-tiny-synthetic 0.0.1-pipeline-test",
        }
        assert checks["outbox-relay"]["ok"] is True
        metrics = httpx.get(f"{base}/metrics").text
        assert 'cdsfusion_http_requests_total{method="GET",route="/readyz",status="200"}' in metrics
        assert httpx.get(f"{base}/openapi.json").status_code == 200
        missing = httpx.get(f"{base}/fhir/Nothing/here")
        assert missing.status_code == 404
        assert missing.json()["resourceType"] == "OperationOutcome"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr.decode()
    assert b"stopped http" in stderr
    assert b"stopped embedded-worker" in stderr


def test_missing_model_fails_start_up_clearly(tmp_path: Path) -> None:
    env = _env(tmp_path, CDSFUSION_MODEL_DIR=str(tmp_path / "no-model"))
    result = subprocess.run(
        [CLI, "serve"], env=env, cwd=tmp_path, capture_output=True, timeout=120, check=False
    )
    assert result.returncode == 1
    assert b"start-up failed" in result.stderr


def test_sigint_stops_cleanly_too(tmp_path: Path, env: dict[str, str]) -> None:
    proc = subprocess.Popen([CLI, "serve"], env=env, cwd=tmp_path, stderr=subprocess.PIPE)
    _wait_healthy(f"http://127.0.0.1:{env['CDSFUSION_HTTP_PORT']}", proc)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode == 0


def test_production_mode_refuses_the_default_secret(tmp_path: Path) -> None:
    env = _env(tmp_path, CDSFUSION_MODE="production")
    result = subprocess.run(
        [CLI, "serve"], env=env, cwd=tmp_path, capture_output=True, timeout=60, check=False
    )
    assert result.returncode != 0
    assert b"CDSFUSION_SECRET_KEY" in result.stderr


def test_not_ready_when_schema_is_behind(tmp_path: Path) -> None:
    env = _env(tmp_path)
    result = subprocess.run(
        [CLI, "serve", "--no-migrate"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert b"cdsfusion db upgrade" in result.stderr


def _serving(base: str) -> bool:
    try:
        httpx.get(f"{base}/healthz", timeout=1)
    except httpx.TransportError:
        return False
    return True


def _answering_processes(base: str, attempts: int = 60) -> set[str]:
    """Which kinds of process answer /readyz on fresh connections (main or extra)."""
    kinds: set[str] = set()
    for _ in range(attempts):
        with httpx.Client() as fresh:  # a new connection each time: the kernel picks anew
            checks = fresh.get(f"{base}/readyz", timeout=5).json()["checks"]
        kinds.add("extra" if "main-process" in checks else "main")
    return kinds


@pytest.mark.parametrize("stop", ["sigterm", "kill"])
def test_several_http_processes_share_the_port_and_stop_with_the_engine(
    tmp_path: Path, env: dict[str, str], stop: str
) -> None:
    env["CDSFUSION_HTTP_PROCESSES"] = "3"
    base = f"http://127.0.0.1:{env['CDSFUSION_HTTP_PORT']}"
    proc = subprocess.Popen([CLI, "serve"], env=env, cwd=tmp_path, stderr=subprocess.PIPE)
    try:
        _wait_healthy(base, proc)
        _wait_ready(base)
        assert _answering_processes(base) == {"main", "extra"}
    finally:
        if stop == "kill":  # the extra processes notice and stop by themselves
            proc.kill()
        else:
            proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=60)
    if stop == "sigterm":
        assert proc.returncode == 0
    deadline = time.monotonic() + 15
    while _serving(base) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _serving(base), "an HTTP process outlived the engine"
