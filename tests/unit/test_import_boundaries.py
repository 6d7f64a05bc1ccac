"""Import boundaries (STYLE.md habit 8), checked in fresh interpreters."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _modules_after_import(statement: str) -> set[str]:
    code = f"{statement}\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return set(out.stdout.split())


def _top_level(modules: set[str]) -> set[str]:
    return {m.partition(".")[0] for m in modules}


def test_web_process_does_not_import_torch() -> None:
    loaded = _top_level(
        _modules_after_import(
            "import cds.api.app, cds.api.server, cds.core.cli.serve, cds.core.runtime"
        )
    )
    assert "torch" not in loaded
    assert "transformers" not in loaded


def test_cli_help_imports_nothing_heavy() -> None:
    loaded = _top_level(_modules_after_import("import cds.core.cli"))
    assert not loaded & {"torch", "transformers", "fastapi", "sqlalchemy"}


@pytest.mark.parametrize("forbidden", ["sqlalchemy", "celery", "fastapi", "starlette", "httpx"])
def test_fusion_imports_no_database_broker_or_web(forbidden: str) -> None:
    import pkgutil

    import fusion

    names = ["fusion"] + [
        m.name for m in pkgutil.walk_packages(fusion.__path__, "fusion.") if "tests" not in m.name
    ]
    statement = "\n".join(f"import {name}" for name in names)
    assert forbidden not in _top_level(_modules_after_import(statement))
