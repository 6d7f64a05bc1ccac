"""Golden JSON fixtures: compare, or rewrite with ``CDSFUSION_REGEN_GOLDEN=1``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def load(relative: str) -> Any:
    return json.loads((FIXTURES / relative).read_text(encoding="utf-8"))


def assert_golden(relative: str, value: Any) -> None:
    """``value`` equals the fixture (after a JSON round trip of ``value``)."""
    path = FIXTURES / relative
    text = json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False) + "\n"
    if os.environ.get("CDSFUSION_REGEN_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    assert json.loads(text) == load(relative), f"{relative} differs from the built object"


def fixture_names(folder: str) -> list[str]:
    return sorted(p.name for p in (FIXTURES / folder).glob("*.json"))
