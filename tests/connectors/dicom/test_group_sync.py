"""Group durability through the SCP: files flushed before their rows commit, or A700."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from cds.core.db.models import SourceItem
from connectors.dicom import batch as batch_module
from connectors.dicom import status
from connectors.dicom import store as store_module
from connectors.dicom.listener import DicomListener
from connectors.dicom.receive import _file_meta_bytes_pydicom, file_meta_bytes
from tests.connectors.dicom.conftest import ListenerFactory, send_files, synthetic_instance

pytestmark = pytest.mark.integration


def source_items(listener: DicomListener) -> int:
    with listener.ctx.session_factory() as session:
        return int(session.scalar(select(func.count()).select_from(SourceItem)) or 0)


def committed_source_items(listener: DicomListener) -> int:
    """Rows committed so far, read without a write lock (a session here would queue
    behind the writer's transaction, which waits for the flush that calls this)."""
    raw = listener.ctx.engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute(f"SELECT count(*) FROM {SourceItem.__tablename__}")
        (count,) = cursor.fetchone()
        cursor.close()
        raw.rollback()
        return int(count)
    finally:
        raw.close()


def test_files_are_flushed_before_their_rows_commit(
    start_listener: ListenerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    listener = start_listener()
    study = generate_uid()
    paths = [synthetic_instance(tmp_path / f"i{n}", study_uid=study) for n in range(3)]
    seen: list[tuple[list[Path], int]] = []
    real = batch_module.make_durable

    def recording(files: Iterable[Path]) -> None:
        flushed = list(files)
        seen.append((flushed, committed_source_items(listener)))
        real(flushed)

    monkeypatch.setattr(batch_module, "make_durable", recording)
    assert send_files(listener.port, paths) == [status.SUCCESS] * 3
    flushed = [p for group, _ in seen for p in group]
    stored = sorted((listener.store.root).glob("*/*.dcm"))
    assert sorted(flushed) == stored and len(stored) == 3
    # Each group was flushed while none of its rows was committed yet.
    assert [committed for _, committed in seen] == [0, 1, 2]


def test_a_failed_flush_is_out_of_resources_and_commits_nothing(
    start_listener: ListenerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    listener = start_listener()
    path = synthetic_instance(tmp_path, study_uid=generate_uid())

    def eio(_path: Path) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(store_module, "_syncfs", None)
    monkeypatch.setattr(store_module, "_fsync_path", eio)
    assert send_files(listener.port, [path]) == [status.OUT_OF_RESOURCES_STORAGE]
    monkeypatch.undo()
    assert source_items(listener) == 0
    # The retry rewrites the suspect file (flushing it) and then succeeds.
    assert send_files(listener.port, [path]) == [status.SUCCESS]
    assert source_items(listener) == 1


@pytest.mark.parametrize(
    ("sop_class", "sop_instance", "transfer_syntax"),
    [
        (
            "1.2.840.10008.5.1.4.1.1.2",
            "1.2.826.0.1.3680043.8.498.1234567890",
            "1.2.840.10008.1.2.1",
        ),
        ("1.2.3", "1.2.3.4", "1.2.840.10008.1.2"),
        ("1.2", "1.23", "1.2.840.10008.1.2.4.50"),
    ],
)
def test_file_meta_is_what_pydicom_writes(
    sop_class: str, sop_instance: str, transfer_syntax: str
) -> None:
    args = {
        "sop_class": sop_class,
        "sop_instance": sop_instance,
        "transfer_syntax": transfer_syntax,
    }
    assert file_meta_bytes(**args) == _file_meta_bytes_pydicom(**args)
