"""Fixtures of the DICOM connector tests: synthetic instances and an in-process SCP."""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import generate_uid
from sqlalchemy import Engine

from cds.core.runtime import EngineContext
from cds.core.settings import Settings
from connectors.dicom.listener import DicomListener
from tests.conftest import free_port

DCMTK = shutil.which("storescu") is not None and shutil.which("echoscu") is not None
needs_dcmtk = pytest.mark.skipif(
    not DCMTK, reason="DCMTK not installed (apt-get install -y dcmtk): real-peer test skipped"
)


def sample_file(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None, name
    return Path(str(path))


def split_file(path: Path) -> tuple[bytes, Dataset]:
    """(data set bytes as on the wire, file meta) of a Part 10 file."""
    raw = path.read_bytes()
    fp = io.BytesIO(raw)
    read_preamble(fp, False)
    meta = _read_file_meta_info(fp)
    return raw[fp.tell() :], meta


def synthetic_instance(
    directory: Path,
    *,
    study_uid: str,
    series_uid: str | None = None,
    patient_id: str = "MRN-0001",
    issuer: str | None = "HOSP",
    modality: str = "CT",
    body_part: str | None = "CHEST",
    number: int = 1,
    source: str = "CT_small.dcm",
    sop_instance_uid: str | None = None,
    **attributes: Any,
) -> Path:
    """A copy of a pydicom test file with fresh UIDs and the given attributes (PHI-free)."""
    ds = pydicom.dcmread(sample_file(source))
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.SOPInstanceUID = sop_instance_uid or generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = patient_id
    ds.PatientName = "Synthetic^Patient"
    if issuer is not None:
        ds.IssuerOfPatientID = issuer
    ds.Modality = modality
    if body_part is not None:
        ds.BodyPartExamined = body_part
    ds.InstanceNumber = number
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def dicom_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": f"sqlite:///{tmp_path / 'timeline.db'}",
        "data_dir": tmp_path / "var",
        "dicom_port": free_port(),
        "http_port": 0,
        "mllp_port": 0,
        "dicom_quiet_period_s": 0.5,
    }
    values.update(overrides)
    return Settings(**values)


ListenerFactory = Callable[..., DicomListener]


@pytest.fixture
def start_listener(tmp_path: Path, migrated_sqlite: Engine) -> Iterator[ListenerFactory]:
    """Start in-process DICOM listeners on the test's migrated SQLite database."""
    started: list[tuple[DicomListener, EngineContext]] = []

    def start(**overrides: Any) -> DicomListener:
        settings = dicom_settings(tmp_path, **overrides)
        ctx = EngineContext.build(settings)
        listener = DicomListener(ctx)
        listener.start()
        started.append((listener, ctx))
        return listener

    yield start
    for listener, ctx in reversed(started):
        listener.stop()
        ctx.close()


def send_files(
    port: int,
    paths: list[Path],
    *,
    calling_ae: str = "TESTSCU",
    called_ae: str = "CDSFUSION",
) -> list[int]:
    """Send Part 10 files over one association with pynetdicom, data sets as they are on
    disk (chunked mode: the bytes after the File Meta go on the wire unchanged, so broken
    files stay broken). Returns one status per file (-1 when no response came back)."""
    from pynetdicom import AE, _config

    metas = [split_file(p)[1] for p in paths]
    ae = AE(ae_title=calling_ae)
    for sop_class in {str(m.MediaStorageSOPClassUID) for m in metas}:
        syntaxes = sorted(
            {str(m.TransferSyntaxUID) for m in metas if m.MediaStorageSOPClassUID == sop_class}
        )
        ae.add_requested_context(sop_class, syntaxes)
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
        assert assoc.is_established, "association not established"
        statuses = []
        for path in paths:
            answer = assoc.send_c_store(path)
            statuses.append(int(answer.Status) if "Status" in answer else -1)
        assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
    return statuses
