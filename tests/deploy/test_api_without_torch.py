"""The api image has no torch: ``serve`` with a broker must build and answer without it.

The import-boundary unit test checks module imports; this one goes further, in a fresh
interpreter where importing torch or transformers fails as it would in the image: it
builds what ``cdsfusion serve`` builds (every HTTP router, the listeners, the pipeline
components) with the compose file's broker setting, and requests the main endpoints.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROBE = """
import importlib.abc, sys

class NotInTheApiImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] in {"torch", "transformers"}:
            raise ImportError(f"{name} is not installed in the api image")
        return None

sys.meta_path.insert(0, NotInTheApiImage())

from starlette.testclient import TestClient

from cds.api.app import create_app
from cds.core import migrate
from cds.core.cli.serve import http_installers, listeners
from cds.core.pipeline.compose import pipeline_components
from cds.core.runtime import EngineContext
from cds.core.settings import Settings

settings = Settings()
assert settings.broker_url
migrate.upgrade(settings.database_url)
ctx = EngineContext.build(settings)
app = create_app(ctx, installers=http_installers())
components = [*listeners(ctx), *pipeline_components(ctx)]
print("components", " ".join(type(c).__name__ for c in components))
with TestClient(app) as client:
    for path in ("/healthz", "/cds-services", "/fhir/RiskAssessment?patient=p", "/metrics"):
        print("GET", path, client.get(path).status_code)
ctx.close()
print("torch loaded", "torch" in sys.modules)
"""


def test_serve_with_a_broker_builds_and_answers_without_torch(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDSFUSION_")}
    env |= {
        "CDSFUSION_BROKER_URL": "redis://127.0.0.1:1/0",  # never contacted while building
        "CDSFUSION_DATABASE_URL": f"sqlite:///{tmp_path / 'cds.db'}",
        "CDSFUSION_DATA_DIR": str(tmp_path / "var"),
        "CDSFUSION_LOG_LEVEL": "WARNING",
    }
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    (components,) = [line.split()[1:] for line in lines if line.startswith("components")]
    assert {"DicomListener", "MllpListener", "OutboxRelay"} <= set(components)
    assert "EmbeddedWorker" not in components, "with a broker, serve scores nothing itself"
    for path in ("/healthz", "/cds-services", "/fhir/RiskAssessment?patient=p", "/metrics"):
        assert f"GET {path} 200" in lines, result.stdout
    assert lines[-1] == "torch loaded False"
