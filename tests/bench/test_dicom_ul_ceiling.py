"""The ceilings of ``bench.dicom_ingest`` do the work they claim, over a real association.

``ul-files`` stands for what DCMTK ``storescp -od`` does: one file per instance, File Meta
and the data set as received. If it stored less (or nothing), the bench would compare the
engine against a ceiling that is too high.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from bench.dicom_ul_ceiling import AE_TITLE, CeilingService, make_server
from tests.connectors.dicom.conftest import send_files

pytestmark = pytest.mark.integration


def test_files_mode_writes_each_instance_as_received(tmp_path: Path) -> None:
    sources = [Path(str(get_testdata_file(name))) for name in ("CT_small.dcm", "MR_small.dcm")]
    service = CeilingService(tmp_path / "files")
    (tmp_path / "files").mkdir()
    server = make_server(service, port=0)
    server.start()
    try:
        statuses = send_files(server.server_address[1], sources, called_ae=AE_TITLE)
    finally:
        server.stop()
    assert statuses == [0x0000, 0x0000]
    written = sorted((tmp_path / "files").iterdir())
    assert len(written) == 2
    for source, path in zip(sources, written, strict=True):
        received, sent = pydicom.dcmread(path), pydicom.dcmread(source)
        assert received.SOPInstanceUID == sent.SOPInstanceUID
        assert received.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
        assert received.PixelData == sent.PixelData


def test_null_mode_answers_success_and_writes_nothing(tmp_path: Path) -> None:
    service = CeilingService(None)
    server = make_server(service, port=0)
    server.start()
    try:
        statuses = send_files(
            server.server_address[1],
            [Path(str(get_testdata_file("CT_small.dcm")))],
            called_ae=AE_TITLE,
        )
    finally:
        server.stop()
    assert statuses == [0x0000]
    assert service.count == 1
    assert list(tmp_path.iterdir()) == []
