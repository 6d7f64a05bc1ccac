"""The web process serves stored predictions: it never imports torch (STYLE.md habit 8)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

HEAVY = {"torch", "transformers", "worker", "fusion"}


def _top_level_modules_after(code: str) -> set[str]:
    script = textwrap.dedent(code) + "\nimport sys\nprint('\\n'.join(sorted(sys.modules)))\n"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    return {name.partition(".")[0] for name in out.stdout.split()}


def test_cds_outputs_import_no_model_code() -> None:
    loaded = _top_level_modules_after(
        """
        import pkgutil, importlib
        import cds.fhir, cds.hooks, cds.modelcard
        for package in (cds.fhir, cds.hooks, cds.modelcard):
            for module in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
                importlib.import_module(module.name)
        """
    )
    assert not loaded & HEAVY


def test_the_served_app_with_cds_outputs_imports_no_torch(tmp_path: object) -> None:
    loaded = _top_level_modules_after(
        f"""
        from cds.api.app import create_app
        from cds.core.cli.serve import http_installers
        from cds.core.runtime import EngineContext
        from cds.core.settings import Settings
        from fastapi.testclient import TestClient
        settings = Settings(database_url="sqlite:///{tmp_path}/web.db", data_dir="{tmp_path}")
        ctx = EngineContext.build(settings)
        client = TestClient(create_app(ctx, installers=http_installers()))
        assert client.get("/cds-services").status_code == 200
        """
    )
    assert "torch" not in loaded and "transformers" not in loaded
