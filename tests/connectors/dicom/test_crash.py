"""kill -9 of ``cdsfusion serve`` during a send over several associations.

Every instance that got a success status before the kill must be stored, indexed and
byte-identical after a restart: success is only sent after fsync and commit.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE, _config
from sqlalchemy import create_engine, select

from cds.core.db.models import ImagingInstance, SourceItem
from tests.conftest import free_port
from tests.connectors.dicom.conftest import split_file, synthetic_instance

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLI = str(Path(sys.executable).with_name("cdsfusion"))
ASSOCIATIONS = 4
PER_ASSOCIATION = 25


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDSFUSION_")}
    env.update(
        CDSFUSION_DATA_DIR=str(tmp_path / "var"),
        CDSFUSION_DATABASE_URL=f"sqlite:///{tmp_path / 'var' / 'cdsfusion.db'}",
        CDSFUSION_HTTP_PORT=str(free_port()),
        CDSFUSION_DICOM_PORT=str(free_port()),
        CDSFUSION_MLLP_PORT="0",
        CDSFUSION_LOG_LEVEL="WARNING",
        CDSFUSION_DICOM_QUIET_PERIOD_S="60",
        # Jobs go to a broker nobody consumes: this test needs no model in the process.
        CDSFUSION_BROKER_URL=os.environ.get(
            "CDSFUSION_TEST_REDIS_URL", "redis://127.0.0.1:6379/15"
        ),
    )
    return env


def _start(env: dict[str, str], tmp_path: Path) -> subprocess.Popen[bytes]:
    log = (tmp_path / "serve.log").open("ab")
    proc = subprocess.Popen([CLI, "serve"], env=env, cwd=tmp_path, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{env['CDSFUSION_HTTP_PORT']}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited with {proc.returncode}; see {tmp_path}/serve.log")
        try:
            ready = httpx.get(f"{base}/readyz", timeout=1)
            if ready.status_code == 200 and ready.json()["checks"]["dicom"]["ok"]:
                return proc
        except (httpx.TransportError, KeyError, ValueError):
            pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("serve did not become ready")


def _sender(port: int, paths: list[Path], acknowledged: list[str], lock: threading.Lock) -> None:
    ae = AE(ae_title=f"SENDER{threading.get_ident() % 1000}")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="CDSFUSION")
    if not assoc.is_established:
        return
    for path in paths:
        if not assoc.is_established:
            return
        answer = assoc.send_c_store(path)
        if answer.get("Status") == 0x0000:
            with lock:
                acknowledged.append(path.stem)
    if assoc.is_established:
        assoc.release()


def test_kill_9_keeps_every_acknowledged_instance(tmp_path: Path) -> None:
    env = _env(tmp_path)
    study = generate_uid()
    batches = [
        [
            synthetic_instance(tmp_path / "send", study_uid=study, number=a * 1000 + n)
            for n in range(PER_ASSOCIATION)
        ]
        for a in range(ASSOCIATIONS)
    ]
    by_uid = {p.stem: p for batch in batches for p in batch}
    proc = _start(env, tmp_path)
    acknowledged: list[str] = []
    lock = threading.Lock()
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True  # the file's data set bytes go on the wire
    try:
        port = int(env["CDSFUSION_DICOM_PORT"])
        threads = [
            threading.Thread(target=_sender, args=(port, batch, acknowledged, lock))
            for batch in batches
        ]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while len(acknowledged) < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        for thread in threads:
            thread.join(timeout=60)
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
        if proc.poll() is None:
            proc.kill()
    assert 20 <= len(acknowledged) < len(by_uid), "the kill should land mid-send"

    restarted = _start(env, tmp_path)
    try:
        engine = create_engine(env["CDSFUSION_DATABASE_URL"])
        with engine.connect() as conn:
            stored = {
                row.item_id: row
                for row in conn.execute(
                    select(
                        SourceItem.item_id, SourceItem.storage_key, SourceItem.content_sha256
                    ).join(ImagingInstance, ImagingInstance.source_item_id == SourceItem.id)
                )
            }
        engine.dispose()
        for uid in acknowledged:
            assert uid in stored, "acknowledged instance lost"
            data = (tmp_path / "var" / stored[uid].storage_key).read_bytes()
            assert hashlib.sha256(data).hexdigest() == stored[uid].content_sha256
            sent, _ = split_file(by_uid[uid])
            assert data.endswith(sent), "stored data set differs from the bytes sent"
    finally:
        restarted.send_signal(signal.SIGTERM)
        restarted.wait(timeout=60)
    assert restarted.returncode == 0
