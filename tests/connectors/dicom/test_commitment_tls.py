"""Storage commitment to a real peer (pynetdicom as the requesting modality) and mutual TLS."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.events import Event

from connectors.dicom import status
from connectors.dicom.commitment import PUSH_MODEL_INSTANCE, STORAGE_COMMITMENT_PUSH_MODEL
from tests.conftest import free_port
from tests.connectors.dicom.conftest import (
    ListenerFactory,
    send_files,
    split_file,
    synthetic_instance,
)

pytestmark = pytest.mark.integration


def test_commitment_reports_committed_and_missing_instances(
    start_listener: ListenerFactory, tmp_path: Path
) -> None:
    reports: list[tuple[int, Dataset]] = []
    received = threading.Event()

    def on_report(event: Event) -> int:
        request: Any = event.request
        reports.append((int(request.EventTypeID), event.event_information))
        received.set()
        return 0x0000

    peer_port = free_port()
    peer = AE(ae_title="MODALITY")
    peer.add_supported_context(STORAGE_COMMITMENT_PUSH_MODEL, scu_role=True, scp_role=True)
    server = peer.start_server(
        ("127.0.0.1", peer_port), block=False, evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)]
    )
    try:
        listener = start_listener(dicom_commitment_peers=(f"MODALITY=127.0.0.1:{peer_port}",))
        paths = [synthetic_instance(tmp_path, study_uid=generate_uid()) for _ in range(2)]
        assert send_files(listener.port, paths, calling_ae="MODALITY") == [0, 0]
        refs = [
            (str(m.MediaStorageSOPClassUID), str(m.MediaStorageSOPInstanceUID))
            for m in (split_file(p)[1] for p in paths)
        ]
        missing = (refs[0][0], generate_uid())
        request = Dataset()
        request.TransactionUID = generate_uid()
        request.ReferencedSOPSequence = [_ref(c, i) for c, i in [*refs, missing]]

        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(STORAGE_COMMITMENT_PUSH_MODEL)
        assoc = ae.associate("127.0.0.1", listener.port, ae_title="CDSFUSION")
        answer, _ = assoc.send_n_action(
            request, 1, STORAGE_COMMITMENT_PUSH_MODEL, PUSH_MODEL_INSTANCE
        )
        assoc.release()
        assert answer.Status == status.SUCCESS
        assert received.wait(20), "no N-EVENT-REPORT"
    finally:
        server.shutdown()
    event_type, info = reports[0]
    assert event_type == status.COMMITMENT_EVENT_SOME_FAILED
    assert info.TransactionUID == request.TransactionUID
    assert sorted(i.ReferencedSOPInstanceUID for i in info.ReferencedSOPSequence) == sorted(
        uid for _, uid in refs
    )
    failed = info.FailedSOPSequence[0]
    assert failed.ReferencedSOPInstanceUID == missing[1]
    assert failed.FailureReason == status.COMMITMENT_NO_SUCH_OBJECT_INSTANCE


def test_commitment_from_an_unknown_peer_is_refused(start_listener: ListenerFactory) -> None:
    listener = start_listener()
    request = Dataset()
    request.TransactionUID = generate_uid()
    request.ReferencedSOPSequence = [_ref("1.2.840.10008.5.1.4.1.1.2", generate_uid())]
    ae = AE(ae_title="STRANGER")
    ae.add_requested_context(STORAGE_COMMITMENT_PUSH_MODEL)
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="CDSFUSION")
    answer, _ = assoc.send_n_action(request, 1, STORAGE_COMMITMENT_PUSH_MODEL, PUSH_MODEL_INSTANCE)
    assoc.release()
    assert answer.Status == status.COMMITMENT_PROCESSING_FAILURE


def _ref(sop_class: str, sop_instance: str) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    return item


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """A throw-away CA with a server and a client certificate."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed: TLS test skipped")
    d = tmp_path / "pki"
    d.mkdir()
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        cwd=d,
    )
    for name in ("server", "client"):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
            cwd=d,
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-copy_extensions",
            "copy",
            "-out",
            f"{name}.pem",
            cwd=d,
        )
    return d


def test_mutual_tls(start_listener: ListenerFactory, pki: Path) -> None:
    listener = start_listener(
        dicom_tls_cert_file=pki / "server.pem",
        dicom_tls_key_file=pki / "server.key",
        dicom_tls_ca_file=pki / "ca.pem",
    )

    def echo(with_client_cert: bool) -> bool:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki / "ca.pem"))
        if with_client_cert:
            context.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
        ae = AE(ae_title="TLSSCU")
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate(
            "127.0.0.1", listener.port, ae_title="CDSFUSION", tls_args=(context, "127.0.0.1")
        )
        if not assoc.is_established:
            return False
        ok = assoc.send_c_echo().Status == 0
        assoc.release()
        return bool(ok)

    assert echo(with_client_cert=True)
    assert not echo(with_client_cert=False)
