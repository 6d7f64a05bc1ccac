"""The SCP over real associations: DCMTK, pynetdicom's storescu, broken input, failures."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from cds.core.db.models import (
    ImagingInstance,
    ImagingStudy,
    Protocol,
    SourceItem,
    StudyState,
    TimelineEvent,
)
from cds.core.errors import StorageError
from cds.core.runtime import EngineContext
from connectors.dicom import status
from connectors.dicom.listener import DicomListener
from tests.connectors.dicom.conftest import (
    ListenerFactory,
    needs_dcmtk,
    sample_file,
    send_files,
    split_file,
    synthetic_instance,
)

pytestmark = pytest.mark.integration

#: pydicom test files per transfer syntax, and the storescu option that proposes it.
TRANSFER_SYNTAX_FILES = [
    ("CT_small.dcm", "-xe"),
    ("MR_small_implicit.dcm", "-xi"),
    ("MR_small_bigendian.dcm", "-xb"),
    ("image_dfl.dcm", "-xd"),
    ("SC_rgb_jpeg_dcmtk.dcm", "-xy"),
    ("JPGExtended.dcm", "-xx"),
    ("SC_rgb_jpeg_gdcm.dcm", "-xs"),
    ("MR_small_jpeg_ls_lossless.dcm", "-xt"),
    ("MR_small_jp2klossless.dcm", "-xv"),
    ("JPEG2000.dcm", "-xw"),
    ("MR_small_RLE.dcm", "-xr"),
]


def echo(port: int, calling_ae: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["echoscu", "-aet", calling_ae, "-aec", "CDSFUSION", "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def rows(listener: DicomListener, model: type) -> int:
    with listener.ctx.session_factory() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def received_items(listener: DicomListener) -> int:
    """Source items received over DICOM (not the anchor item a completed study adds: with
    the tests' quiet period of 0.5 s a study may complete between two statements)."""
    with listener.ctx.session_factory() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(SourceItem)
                .where(SourceItem.protocol == Protocol.DICOM)
            )
            or 0
        )


def store_files(listener: DicomListener) -> list[Path]:
    return [p for p in listener.store.root.rglob("*") if p.is_file()]


def wait_for(condition: object, timeout: float = 15.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


@needs_dcmtk
def test_echo_and_calling_ae_allow_list(start_listener: ListenerFactory) -> None:
    listener = start_listener(dicom_allowed_ae_titles=("MODALITY1", "ECHOSCU"))
    assert echo(listener.port, "MODALITY1").returncode == 0
    refused = echo(listener.port, "INTRUDER")
    assert refused.returncode != 0
    assert "Calling AE Title Not Recognized" in refused.stderr + refused.stdout
    assert listener.ready()[0]


@needs_dcmtk
def test_dcmtk_storescu_every_transfer_syntax_as_proposed(
    start_listener: ListenerFactory, tmp_path: Path
) -> None:
    listener = start_listener()
    sent: dict[str, str] = {}
    for name, option in TRANSFER_SYNTAX_FILES:
        path = synthetic_instance(
            tmp_path / "send", study_uid=generate_uid(), source=name, modality="OT"
        )
        meta = split_file(path)[1]
        result = subprocess.run(
            [
                "storescu",
                "-v",
                "-R",
                option,
                "-aec",
                "CDSFUSION",
                "127.0.0.1",
                str(listener.port),
                str(path),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, (name, result.stderr)
        assert "Received Store Response (Success)" in result.stderr, name
        sent[str(meta.MediaStorageSOPInstanceUID)] = str(meta.TransferSyntaxUID)
    with listener.ctx.session_factory() as session:
        stored = dict(
            session.execute(
                select(ImagingInstance.SOPInstanceUID, ImagingInstance.TransferSyntaxUID)
            ).all()
        )
        keys = dict(
            session.execute(
                select(SourceItem.item_id, SourceItem.storage_key).where(
                    SourceItem.protocol == Protocol.DICOM
                )
            ).all()
        )
    assert stored == sent  # every instance kept in the syntax the sender proposed
    for uid, key in keys.items():
        ds = pydicom.dcmread(listener.store.path_for(key))
        assert ds.SOPInstanceUID == uid and ds.file_meta.TransferSyntaxUID == sent[uid]


@needs_dcmtk
def test_dcmtk_multi_instance_study_completes(
    start_listener: ListenerFactory, tmp_path: Path
) -> None:
    listener = start_listener(dicom_quiet_period_s=0.5)
    study, series = generate_uid(), generate_uid()
    paths = [
        synthetic_instance(
            tmp_path / "study", study_uid=study, series_uid=series, number=n, modality="DX"
        )
        for n in range(1, 6)
    ]
    result = subprocess.run(
        ["storescu", "-aec", "CDSFUSION", "127.0.0.1", str(listener.port), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr

    def complete() -> bool:
        with listener.ctx.session_factory() as session:
            state = session.scalar(select(ImagingStudy.state))
            return state is StudyState.COMPLETE

    wait_for(complete)
    with listener.ctx.session_factory() as session:
        event = session.scalars(select(TimelineEvent)).one()
    assert event.details is not None
    assert event.details["instances"] == 5 and event.details["anchor"] is True
    assert event.imaging_study_id is not None
    metrics = listener.ctx.metrics
    assert (
        metrics.get_sample_value("cdsfusion_dicom_instances_received_total", {"outcome": "stored"})
        == 5
    )
    assert (
        metrics.get_sample_value("cdsfusion_dicom_study_completions_total", {"anchor": "true"}) == 1
    )
    assert metrics.get_sample_value("cdsfusion_dicom_c_store_seconds_count") == 5


def test_pynetdicom_storescu_app(start_listener: ListenerFactory, tmp_path: Path) -> None:
    listener = start_listener()
    path = synthetic_instance(tmp_path, study_uid=generate_uid())
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pynetdicom",
            "storescu",
            "127.0.0.1",
            str(listener.port),
            str(path),
            "-aec",
            "CDSFUSION",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert rows(listener, ImagingInstance) == 1


def test_broken_input_is_refused_and_nothing_half_stored(
    start_listener: ListenerFactory, tmp_path: Path
) -> None:
    listener = start_listener()
    # no_meta.dcm (explicit VR, no File Meta) declared implicit VR, as a naive sender would.
    body = sample_file("no_meta.dcm").read_bytes()
    ct_meta = split_file(sample_file("CT_small.dcm"))[1]
    ct_meta.TransferSyntaxUID = "1.2.840.10008.1.2"
    no_meta = tmp_path / "no_meta_as_implicit.dcm"
    from pydicom.filewriter import write_file_meta_info

    with open(no_meta, "wb") as fh:
        fh.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(fh, ct_meta)  # type: ignore[arg-type]
        fh.write(body)
    files = [
        sample_file("MR_truncated.dcm"),
        sample_file("rtplan_truncated.dcm"),
        sample_file("badVR.dcm"),
        no_meta,
        sample_file("JPEGLSNearLossless_08.dcm"),
    ]
    assert send_files(listener.port, files) == [
        status.CANNOT_UNDERSTAND,
        status.CANNOT_UNDERSTAND,
        status.CANNOT_UNDERSTAND,
        status.CANNOT_UNDERSTAND,
        status.CANNOT_UNDERSTAND_MISSING_UID,
    ]
    assert send_files(listener.port, [sample_file("CT_small.dcm")]) == [status.SUCCESS]
    assert received_items(listener) == 1
    assert len(store_files(listener)) == 1
    assert (
        listener.ctx.metrics.get_sample_value(
            "cdsfusion_dicom_store_failures_total", {"status": "0xC000"}
        )
        == 4
    )


def test_duplicates_follow_the_policy(start_listener: ListenerFactory, tmp_path: Path) -> None:
    keep = start_listener()
    original = synthetic_instance(tmp_path / "a", study_uid="1.2.3.4", sop_instance_uid="1.2.3.4.5")
    changed = synthetic_instance(
        tmp_path / "b", study_uid="1.2.3.4", sop_instance_uid="1.2.3.4.5", ViewPosition="LL"
    )
    assert send_files(keep.port, [original, original]) == [status.SUCCESS, status.SUCCESS]
    assert received_items(keep) == 1
    assert send_files(keep.port, [changed]) == [status.WARNING_REPLACED]
    with keep.ctx.session_factory() as session:
        assert session.scalar(select(ImagingInstance.ViewPosition)) == "LL"
    reject = start_listener(dicom_duplicate_policy="reject")
    assert send_files(reject.port, [original]) == [status.DUPLICATE_REJECTED]
    assert received_items(reject) == 1

    def complete() -> bool:
        with reject.ctx.session_factory() as session:
            return session.scalar(select(ImagingStudy.state)) is StudyState.COMPLETE

    wait_for(complete)  # completion adds the study's anchor item, not a received one
    assert received_items(reject) == 1 and rows(reject, SourceItem) == 2


def test_storage_and_database_failures_are_out_of_resources(
    start_listener: ListenerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    listener = start_listener()
    path = synthetic_instance(tmp_path, study_uid=generate_uid())

    def disk_full(_data: bytes) -> None:
        raise StorageError("disk full")

    monkeypatch.setattr(listener.store, "put", disk_full)
    assert send_files(listener.port, [path]) == [status.OUT_OF_RESOURCES_STORAGE]
    monkeypatch.undo()

    def database_down(*_args: object) -> None:
        raise OperationalError("INSERT", {}, Exception("server closed the connection"))

    monkeypatch.setattr(listener.writer, "index_batch", database_down)
    assert send_files(listener.port, [path]) == [status.OUT_OF_RESOURCES_DATABASE]
    monkeypatch.undo()
    assert received_items(listener) == 0
    # The file written before the failed commit is reused by the retry.
    assert send_files(listener.port, [path]) == [status.SUCCESS]
    assert received_items(listener) == 1 and len(store_files(listener)) == 1


def test_source_address_allow_list(start_listener: ListenerFactory) -> None:
    listener = start_listener(dicom_allowed_networks=("10.0.0.0/8",))
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="CDSFUSION")
    assert not assoc.is_established
    assert (
        listener.ctx.metrics.get_sample_value(
            "cdsfusion_dicom_associations_total", {"result": "refused_address"}
        )
        == 1
    )


def test_quiet_period_that_ends_while_down_completes_on_start_up(
    start_listener: ListenerFactory, tmp_path: Path
) -> None:
    first = start_listener(dicom_quiet_period_s=0.3)
    first.stop()  # detector and SCP down; then receive through a fresh SCP without detector
    ctx = EngineContext.build(first.ctx.settings)
    receiving = DicomListener(ctx, primary=False)
    receiving.start()
    try:
        path = synthetic_instance(tmp_path, study_uid=generate_uid())
        assert send_files(receiving.port, [path]) == [status.SUCCESS]
    finally:
        receiving.stop()
        ctx.close()
    time.sleep(0.5)
    with first.ctx.session_factory() as session:
        assert session.scalar(select(ImagingStudy.state)) is StudyState.RECEIVING
    second = start_listener(dicom_quiet_period_s=0.3)

    def complete() -> bool:
        with second.ctx.session_factory() as session:
            return session.scalar(select(ImagingStudy.state)) is StudyState.COMPLETE

    wait_for(complete)


def test_extra_receiver_processes_share_the_port(
    start_listener: ListenerFactory, tmp_path: Path
) -> None:
    listener = start_listener(dicom_receiver_processes=2)
    assert listener._receivers is not None
    time.sleep(3)  # the child imports and binds
    assert all(p.is_alive() for p in listener._receivers._processes)
    paths = [synthetic_instance(tmp_path, study_uid=generate_uid()) for _ in range(6)]
    for path in paths:  # one association each: the kernel spreads them over both sockets
        assert send_files(listener.port, [path]) == [status.SUCCESS]
    assert rows(listener, ImagingInstance) == 6
    assert all(p.is_alive() for p in listener._receivers._processes)
    listener.stop()
    assert listener._receivers is None
