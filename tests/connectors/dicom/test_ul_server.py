"""The asyncio Upper Layer over real sockets: raw PDUs, pynetdicom as the SCU, stopping."""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from sqlalchemy import func, select

from cds.core.db.models import ImagingInstance, SourceItem
from connectors.dicom import status
from connectors.dicom.security import server_tls_context
from connectors.dicom.ul import UpperLayerServer, dimse, pdu
from tests.connectors.dicom.conftest import (
    ListenerFactory,
    dicom_settings,
    split_file,
    synthetic_instance,
)
from tests.connectors.dicom.test_commitment_tls import pki  # noqa: F401 - a fixture
from tests.connectors.dicom.test_ul_pdu import CONFIG, CT, VERIFICATION, pynetdicom_rq

pytestmark = pytest.mark.integration


class Held:
    """A reservation that counts its releases."""

    def __init__(self) -> None:
        self.releases = 0

    def release(self) -> None:
        self.releases += 1


class FakeService:
    """A ServiceUser that records calls; ``gate`` (when set) holds each C-STORE."""

    def __init__(self) -> None:
        self.stores: list[dict[str, Any]] = []
        self.results: list[str] = []
        self.gate: threading.Event | None = None
        self.entered = threading.Event()
        self.fail = False
        self.refuse_addresses = False
        self.held: list[Held] = []

    def admits_address(self, address: str) -> bool:
        return not self.refuse_addresses

    def admits_calling_ae(self, ae_title: str) -> bool:
        return ae_title != "INTRUDER"

    def on_association(self, result: str) -> None:
        self.results.append(result)

    def reserve_store(self) -> Held:
        held = Held()
        self.held.append(held)
        return held

    async def on_c_store(self, **kwargs: Any) -> tuple[int, str | None]:
        self.entered.set()
        if self.gate is not None:  # a handler that takes its time, off the event loop
            await asyncio.to_thread(self.gate.wait, 10)
        if self.fail:
            raise RuntimeError("boom")
        self.stores.append(kwargs)
        return 0xB000, "a comment"

    def on_n_action(self, **kwargs: Any) -> int:
        return 0


@pytest.fixture
def fake() -> FakeService:
    return FakeService()


@pytest.fixture
def server(fake: FakeService, request: pytest.FixtureRequest) -> Iterator[UpperLayerServer]:
    overrides = getattr(request, "param", {})
    running = UpperLayerServer(replace(CONFIG, **overrides), fake, host="127.0.0.1", port=0)
    running.start()
    yield running
    running.stop(timeout=5)


def connect(server: UpperLayerServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10)
    return sock


def recv_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise EOFError(f"closed after {len(data)} of {size} bytes")
        data += chunk
    return data


def read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    pdu_type, length = pdu.read_header(recv_exact(sock, 6))
    return pdu_type, recv_exact(sock, length)


def closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def associate(server: UpperLayerServer, **kwargs: Any) -> socket.socket:
    sock = connect(server)
    sock.sendall(pynetdicom_rq(**kwargs))
    pdu_type, _ = read_pdu(sock)
    assert pdu_type == pdu.A_ASSOCIATE_AC
    return sock


def pdv(context_id: int, control: int, value: bytes) -> bytes:
    return struct.pack(">IBB", len(value) + 2, context_id, control) + value


def p_data(*pdvs: bytes) -> bytes:
    body = b"".join(pdvs)
    return struct.pack(">BxI", pdu.P_DATA_TF, len(body)) + body


def read_command(sock: socket.socket) -> dimse.Command:
    """Reassemble one command from P-DATA-TF PDUs (checking their PDVs)."""
    parts = []
    while True:
        pdu_type, body = read_pdu(sock)
        assert pdu_type == pdu.P_DATA_TF, pdu_type
        for _, control, value in pdu.parse_pdvs(body):
            assert control & pdu.PDV_COMMAND
            parts.append(value)
            if control & pdu.PDV_LAST:
                return dimse.parse_command(b"".join(parts))


def expect_abort(sock: socket.socket, reason: int) -> None:
    pdu_type, body = read_pdu(sock)
    assert (pdu_type, body[2], body[3]) == (pdu.A_ABORT, pdu.ABORT_SOURCE_PROVIDER, reason)
    assert closed(sock)


def test_fragmented_c_store_and_fragmented_response(
    server: UpperLayerServer, fake: FakeService
) -> None:
    sock = associate(server, max_length=20)  # responses must come in 14-byte fragments
    command = dimse.request(
        dimse.C_STORE_RQ, message_id=9, sop_class=CT, sop_instance="1.2.3", has_data_set=True
    )
    data = bytes(range(256)) * 50
    sock.sendall(
        p_data(pdv(1, 1, command[:10]), pdv(1, 1, command[10:30]))
        + p_data(pdv(1, 3, command[30:]), pdv(1, 0, data[:100]))
        + p_data(pdv(1, 0, data[100:5000]))
        + p_data(pdv(1, 2, data[5000:]))
    )
    answer = read_command(sock)
    assert answer.command_field == dimse.C_STORE_RSP
    assert answer.us(dimse.MessageIDBeingRespondedTo) == 9
    assert answer.us(dimse.Status) == 0xB000
    assert answer.uid(dimse.AffectedSOPInstanceUID) == "1.2.3"
    assert answer.elements[dimse.ErrorComment].rstrip() == b"a comment"
    stored = fake.stores[0]
    assert stored["dataset"] == data
    assert stored["transfer_syntax"] == ExplicitVRLittleEndian
    assert (stored["sop_class"], stored["sop_instance"], stored["calling_ae"]) == (
        CT,
        "1.2.3",
        "MODALITY",
    )
    sock.sendall(b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00")
    assert read_pdu(sock)[0] == pdu.A_RELEASE_RP
    sock.close()
    assert fake.results == ["accepted"]


def test_a_c_store_holds_a_reservation_from_its_command_until_answered(
    server: UpperLayerServer, fake: FakeService
) -> None:
    sock = associate(server)
    command = dimse.request(
        dimse.C_STORE_RQ, message_id=4, sop_class=CT, sop_instance="1.2.4", has_data_set=True
    )
    sock.sendall(p_data(pdv(1, 3, command), pdv(1, 0, b"\x00\x00")))
    deadline = time.monotonic() + 5
    while not fake.held and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(fake.held) == 1 and fake.held[0].releases == 0  # data set still due
    assert fake.stores == []
    sock.sendall(p_data(pdv(1, 2, b"\x01\x02")))
    assert read_command(sock).us(dimse.Status) == 0xB000
    assert fake.stores[0]["reservation"] is fake.held[0]
    assert fake.held[0].releases >= 1
    # The next request's data set never comes: the association ends and frees its place.
    command = dimse.request(
        dimse.C_STORE_RQ, message_id=5, sop_class=CT, sop_instance="1.2.5", has_data_set=True
    )
    sock.sendall(p_data(pdv(1, 3, command)))
    while len(fake.held) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    sock.close()
    while fake.held[1].releases == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake.held[1].releases == 1 and len(fake.stores) == 1


def test_echo_and_unknown_command(server: UpperLayerServer) -> None:
    sock = associate(server, contexts=[(VERIFICATION, ["1.2.840.10008.1.2"])])
    sock.sendall(
        p_data(pdv(1, 3, dimse.request(dimse.C_ECHO_RQ, message_id=1, sop_class=VERIFICATION)))
    )
    echo = read_command(sock)
    assert (echo.command_field, echo.us(dimse.Status)) == (dimse.C_ECHO_RSP, 0)
    assert echo.uid(dimse.AffectedSOPClassUID) == VERIFICATION
    find = dimse.request(0x0020, message_id=2, sop_class=VERIFICATION)
    sock.sendall(p_data(pdv(1, 3, find)))
    answer = read_command(sock)
    assert answer.command_field == 0x8020
    assert answer.us(dimse.Status) == dimse.UNRECOGNIZED_OPERATION
    sock.close()


def test_handler_failure_answers_out_of_resources(
    server: UpperLayerServer, fake: FakeService
) -> None:
    fake.fail = True
    sock = associate(server)
    command = dimse.request(
        dimse.C_STORE_RQ, message_id=3, sop_class=CT, sop_instance="1.2", has_data_set=True
    )
    sock.sendall(p_data(pdv(1, 3, command), pdv(1, 2, b"\x00\x00")))
    assert read_command(sock).us(dimse.Status) == 0xA7FF
    sock.close()


@pytest.mark.parametrize(
    ("send", "reason"),
    [
        (b"\x09\x00\x00\x00\x00\x04\x00\x00\x00\x00", pdu.ABORT_UNRECOGNIZED_PDU),
        (b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00", pdu.ABORT_UNEXPECTED_PDU),
        (b"\x01\x00\x00\x00\x00\x10" + bytes(16), pdu.ABORT_INVALID_PDU_PARAMETER_VALUE),
    ],
)
def test_bad_first_pdu_aborts(server: UpperLayerServer, send: bytes, reason: int) -> None:
    sock = connect(server)
    sock.sendall(send)
    expect_abort(sock, reason)


@pytest.mark.parametrize(
    ("send", "reason"),
    [
        # longer than our Maximum Length (16384): aborted from the header alone
        (struct.pack(">BxI", pdu.P_DATA_TF, 16385), pdu.ABORT_INVALID_PDU_PARAMETER_VALUE),
        # a PDV on a context that was never accepted
        (p_data(pdv(99, 3, b"\x00\x00")), pdu.ABORT_INVALID_PDU_PARAMETER_VALUE),
        # a data set without a command
        (p_data(pdv(1, 2, b"\x00\x00")), pdu.ABORT_UNEXPECTED_PDU),
        # a command set that does not decode
        (p_data(pdv(1, 3, b"\x00\x00\x00\x01\x04\x00")), pdu.ABORT_INVALID_PDU_PARAMETER_VALUE),
        # a PDV length that does not fit its PDU
        (b"\x04\x00\x00\x00\x00\x08\x00\x00\x00\x09\x01\x03ab", 6),
        # an A-ASSOCIATE-RQ on an established association
        (pynetdicom_rq(), pdu.ABORT_UNEXPECTED_PDU),
        # a command set that never ends
        (p_data(pdv(1, 1, bytes(16000))) * 5, pdu.ABORT_INVALID_PDU_PARAMETER_VALUE),
    ],
)
def test_protocol_errors_abort(server: UpperLayerServer, send: bytes, reason: int) -> None:
    sock = associate(server)
    sock.sendall(send)
    expect_abort(sock, reason)


def test_rejections(server: UpperLayerServer, fake: FakeService) -> None:
    for kwargs, expected in [
        ({"called": "SOMEONE"}, (1, 1, 7)),
        ({"calling": "INTRUDER"}, (1, 1, 3)),
    ]:
        sock = connect(server)
        sock.sendall(pynetdicom_rq(**kwargs))
        pdu_type, body = read_pdu(sock)
        assert (pdu_type, body[1], body[2], body[3]) == (pdu.A_ASSOCIATE_RJ, *expected)
        sock.close()
    first, second = associate(server), associate(server)  # CONFIG allows 2
    third = connect(server)
    third.sendall(pynetdicom_rq())
    pdu_type, body = read_pdu(third)
    assert (pdu_type, body[1], body[2], body[3]) == (pdu.A_ASSOCIATE_RJ, 2, 3, 2)
    for sock in (first, second, third):
        sock.close()
    assert fake.results == ["rejected", "rejected", "accepted", "accepted", "rejected"]


def test_refused_address_is_closed_before_reading(
    server: UpperLayerServer, fake: FakeService
) -> None:
    fake.refuse_addresses = True
    sock = connect(server)
    assert closed(sock)
    assert fake.results == ["refused_address"]


@pytest.mark.parametrize(
    "server", [{"acse_timeout_s": 0.3, "network_timeout_s": 0.5}], indirect=True
)
def test_timeouts_abort(server: UpperLayerServer) -> None:
    silent = connect(server)
    started = time.monotonic()
    expect_abort(silent, pdu.ABORT_REASON_NOT_SPECIFIED)  # ARTIM: no A-ASSOCIATE-RQ
    idle = associate(server)
    expect_abort(idle, pdu.ABORT_REASON_NOT_SPECIFIED)  # network timeout
    assert time.monotonic() - started < 5


def test_stop_answers_in_flight_c_store_first(fake: FakeService) -> None:
    server = UpperLayerServer(CONFIG, fake, host="127.0.0.1", port=0)
    server.start()
    fake.gate = threading.Event()
    busy = associate(server)
    idle = associate(server)
    command = dimse.request(
        dimse.C_STORE_RQ, message_id=5, sop_class=CT, sop_instance="1.2", has_data_set=True
    )
    busy.sendall(p_data(pdv(1, 3, command), pdv(1, 2, b"\x00\x00")))
    assert fake.entered.wait(5)
    stopper = threading.Thread(target=server.stop, kwargs={"timeout": 10})
    stopper.start()
    expect_abort(idle, pdu.ABORT_REASON_NOT_SPECIFIED)  # idle: aborted at once
    time.sleep(0.2)
    assert stopper.is_alive()  # still waiting for the C-STORE
    fake.gate.set()
    assert read_command(busy).us(dimse.Status) == 0xB000  # answered, then aborted
    expect_abort(busy, pdu.ABORT_REASON_NOT_SPECIFIED)
    stopper.join(10)
    assert not stopper.is_alive() and not server.serving
    with pytest.raises(OSError):
        connect(server)


def test_tls_address_check_handshake_and_failures(
    fake: FakeService,
    pki: Path,  # noqa: F811 - the fixture
    tmp_path: Path,
) -> None:
    settings = dicom_settings(
        tmp_path,
        dicom_tls_cert_file=pki / "server.pem",
        dicom_tls_key_file=pki / "server.key",
        dicom_tls_ca_file=pki / "ca.pem",
    )
    server = UpperLayerServer(
        CONFIG, fake, host="127.0.0.1", port=0, ssl_context=server_tls_context(settings)
    )
    server.start()
    try:
        plain = associate_raw(server)  # a client that does not speak TLS
        assert closed(plain)
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki / "ca.pem"))
        client.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
        with client.wrap_socket(connect(server), server_hostname="127.0.0.1") as tls:
            tls.sendall(pynetdicom_rq())
            assert read_pdu(tls)[0] == pdu.A_ASSOCIATE_AC  # type: ignore[arg-type]
        anonymous = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki / "ca.pem"))
        with (
            anonymous.wrap_socket(connect(server), server_hostname="127.0.0.1") as tls,
            pytest.raises((ssl.SSLError, OSError, EOFError)),
        ):
            tls.sendall(pynetdicom_rq())
            read_pdu(tls)  # type: ignore[arg-type]
        time.sleep(0.2)
        assert fake.results == ["tls_failed", "accepted", "tls_failed"]
    finally:
        server.stop(timeout=5)


def associate_raw(server: UpperLayerServer) -> socket.socket:
    sock = connect(server)
    sock.sendall(pynetdicom_rq())
    return sock


# --- pynetdicom as the SCU against the whole listener ----------------------------------


def associations(listener: Any, result: str) -> float | None:
    value = listener.ctx.metrics.get_sample_value(
        "cdsfusion_dicom_associations_total", {"result": result}
    )
    return None if value is None else float(value)


def test_pynetdicom_scu_with_small_pdus_both_ways(
    start_listener: ListenerFactory, tmp_path: Path
) -> None:
    listener = start_listener(dicom_max_pdu_size=4096)  # the ~39 kB data set: 10 PDUs
    path = synthetic_instance(tmp_path, study_uid=generate_uid())
    ae = AE(ae_title="TESTSCU")
    ae.maximum_pdu_size = 64  # our responses come back in fragments too
    ae.add_requested_context(VERIFICATION)
    ae.add_requested_context(CT, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="CDSFUSION")
    assert assoc.is_established
    assert assoc.acceptor.maximum_length == 4096
    assert assoc.send_c_echo().Status == 0
    answer = assoc.send_c_store(path)
    assert answer.Status == status.SUCCESS
    again = assoc.send_c_store(path)
    assert again.Status == status.SUCCESS  # same bytes: a duplicate, acknowledged
    assoc.release()
    assert assoc.is_released
    with listener.ctx.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(ImagingInstance)) == 1
        key = session.scalar(select(SourceItem.storage_key))
    assert key is not None
    assert listener.store.path_for(key).read_bytes().endswith(split_file(path)[0])
    metrics = listener.ctx.metrics
    assert (
        metrics.get_sample_value("cdsfusion_dicom_associations_total", {"result": "accepted"}) == 1
    )


def test_a_large_data_set_is_stored_off_the_event_loop(
    start_listener: ListenerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from connectors.dicom import receive

    monkeypatch.setattr(receive, "INLINE_LIMIT", 1000)  # the ~39 kB data set is "large"
    on_threads: list[str] = []
    prepare = receive.InstanceReceiver._prepare

    def recording(self: receive.InstanceReceiver, **kwargs: Any) -> object:
        on_threads.append(threading.current_thread().name)
        return prepare(self, **kwargs)

    monkeypatch.setattr(receive.InstanceReceiver, "_prepare", recording)
    listener = start_listener()
    path = synthetic_instance(tmp_path, study_uid=generate_uid())
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CT, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="CDSFUSION")
    assert assoc.is_established
    assert assoc.send_c_store(path).Status == status.SUCCESS
    assoc.release()
    assert len(on_threads) == 1 and on_threads[0] != "dicom-scp"  # not the loop's thread
    with listener.ctx.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(ImagingInstance)) == 1


def test_pynetdicom_scu_rejected_calling_ae(start_listener: ListenerFactory) -> None:
    listener = start_listener(dicom_allowed_ae_titles=("MODALITY",))
    ae = AE(ae_title="INTRUDER")
    ae.add_requested_context(VERIFICATION)
    refused = ae.associate("127.0.0.1", listener.port, ae_title="CDSFUSION")
    assert refused.is_rejected
    wrong_called = AE(ae_title="MODALITY")
    wrong_called.add_requested_context(VERIFICATION)
    assert wrong_called.associate("127.0.0.1", listener.port, ae_title="OTHER").is_rejected
    allowed = wrong_called.associate("127.0.0.1", listener.port, ae_title="CDSFUSION")
    assert allowed.is_established
    assert allowed.send_c_echo().Status == 0
    allowed.release()
    metrics = listener.ctx.metrics
    assert (
        metrics.get_sample_value("cdsfusion_dicom_associations_total", {"result": "rejected"}) == 2
    )
