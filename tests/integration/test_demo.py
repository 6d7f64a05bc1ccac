"""``cdsfusion demo`` against a real ``cdsfusion serve``: listeners, pipeline, outputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.pipeline_support import tiny_checkpoint
from tests.integration.test_serve import _env, _wait_healthy, _wait_ready

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLI = str(Path(sys.executable).with_name("cdsfusion"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("model"))


def test_demo_prints_a_risk_assessment_a_card_and_the_review_page(
    tmp_path: Path, model_dir: Path
) -> None:
    env = _env(
        tmp_path,
        CDSFUSION_MODEL_DIR=str(model_dir),
        CDSFUSION_WORKER_DEVICE="cpu",
        CDSFUSION_DICOM_QUIET_PERIOD_S="2",
        CDSFUSION_CDS_HOOKS_AUTH_DISABLED="true",
    )
    base = f"http://127.0.0.1:{env['CDSFUSION_HTTP_PORT']}"
    engine = subprocess.Popen([CLI, "serve"], env=env, cwd=tmp_path, stderr=subprocess.PIPE)
    try:
        _wait_healthy(base, engine)
        _wait_ready(base)
        result = subprocess.run(
            [CLI, "demo", "--patients", "2", "--seed", "4242", "--timeout", "120"],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        engine.send_signal(signal.SIGTERM)
        engine.communicate(timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert out.count("RiskAssessment (FHIR R4):") == 2
    assert out.count("CDS Hooks card (patient-view):") == 2
    first = out.split("RiskAssessment (FHIR R4):\n", 1)[1].split("\n\nCDS Hooks card", 1)[0]
    assessment = json.loads(first)
    assert assessment["resourceType"] == "RiskAssessment"
    assert 0 <= assessment["prediction"][0]["probabilityDecimal"] <= 1
    assert "synthetic" in assessment["note"][0]["text"]
    assert f"Review page: {base}/audit/predictions/{assessment['id']}" in out
    assert "acknowledged AA" in result.stderr and "instance(s) stored" in result.stderr


def test_demo_names_the_failing_step(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDSFUSION_")}
    env["CDSFUSION_HTTP_PORT"] = "9"  # nothing listens there
    result = subprocess.run(
        [CLI, "demo"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "the engine is not answering" in result.stderr
