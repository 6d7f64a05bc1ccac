"""Orthanc forwards a study to the SCP and asks for storage commitment (real peer)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from cds.core.db.models import ImagingInstance
from tests.conftest import free_port
from tests.connectors.dicom.conftest import ListenerFactory, synthetic_instance

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("Orthanc") is None,
        reason="Orthanc not installed (apt-get install -y orthanc): real-peer test skipped",
    ),
]


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[dict[str, int]]:
    """Orthanc with its own configuration on free ports; the SCP's port is filled in later."""
    ports = {"http": free_port(), "dicom": free_port(), "scp": free_port()}
    config = {
        "Name": "cdsfusion-test",
        "StorageDirectory": str(tmp_path / "orthanc" / "storage"),
        "IndexDirectory": str(tmp_path / "orthanc" / "index"),
        "HttpPort": ports["http"],
        "DicomPort": ports["dicom"],
        "DicomAet": "ORTHANC",
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [],
        "DicomModalities": {"cds": ["CDSFUSION", "127.0.0.1", ports["scp"]]},
    }
    path = tmp_path / "orthanc.json"
    path.write_text(json.dumps(config))
    log = (tmp_path / "orthanc.log").open("wb")
    proc = subprocess.Popen(["Orthanc", str(path)], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{ports['http']}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/system", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise AssertionError("Orthanc did not start")
            time.sleep(0.2)
        yield ports
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def test_orthanc_forwards_a_study_with_storage_commitment(
    orthanc: dict[str, int], start_listener: ListenerFactory, tmp_path: Path
) -> None:
    listener = start_listener(
        dicom_port=orthanc["scp"],
        dicom_commitment_peers=(f"ORTHANC=127.0.0.1:{orthanc['dicom']}",),
    )
    base = f"http://127.0.0.1:{orthanc['http']}"
    study = generate_uid()
    for n in range(1, 4):
        path = synthetic_instance(tmp_path / "study", study_uid=study, number=n)
        assert httpx.post(f"{base}/instances", content=path.read_bytes()).status_code == 200
    studies = httpx.get(f"{base}/studies").json()
    assert len(studies) == 1
    answer = httpx.post(
        f"{base}/modalities/cds/store",
        json={"Resources": studies, "StorageCommitment": True, "Synchronous": True},
        timeout=60,
    )
    assert answer.status_code == 200, answer.text
    transaction = answer.json()["StorageCommitmentTransactionUID"]
    deadline = time.monotonic() + 30
    report: dict[str, object] = {}
    while time.monotonic() < deadline:
        report = httpx.get(f"{base}/storage-commitment/{transaction}").json()
        if report.get("Status") != "Pending":
            break
        time.sleep(0.2)
    assert report.get("Status") == "Success", report
    assert len(report["Success"]) == 3  # type: ignore[arg-type]
    with listener.ctx.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(ImagingInstance)) == 3
