"""No patient data in any log line, even at DEBUG (STYLE.md habit 7).

A process configured by the entry point's own logging function, at DEBUG, takes a planted
name and MRN through ingest (new item, duplicate, conflicting duplicate logged with its
traceback, a patient merge) and through the HTTP app in paths and query strings; then
every byte it wrote is searched for them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import Engine

pytestmark = pytest.mark.integration

NAME = "Quattlebaum Zebulon"
MRN = "MRN-93417725"
ROOT = Path(__file__).resolve().parents[2]


def test_planted_name_and_mrn_never_logged(db_engine: Engine) -> None:
    url = db_engine.url.render_as_string(hide_password=False)
    result = subprocess.run(
        [sys.executable, "-m", "tests.integration.phi_scenario", url, NAME, MRN],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-2000:]
    # The scenario really logged: ingest, the duplicate, the conflict, HTTP, SQL.
    for expected in (
        "cds.core.repository.ingest",
        "duplicate hl7v2 item",
        "ConflictError",
        "GET unmatched -> 404",
        "GET /readyz -> 200",
        "SQL parameters hidden",
        "scenario complete",
    ):
        assert expected in output, f"{expected!r} not logged: the test would be blind"
    for secret in (NAME, "Quattlebaum", "Zebulon", MRN, "93417725"):
        assert secret not in output, f"{secret!r} leaked into the logs"
