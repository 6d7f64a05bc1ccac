"""Minimal hospital-side clients: HL7v2 over MLLP, DICOM C-STORE."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

from pydicom.dataset import Dataset

from cds.core.errors import CdsFusionError

START, END = b"\x0b", b"\x1c\x0d"


class SendError(CdsFusionError):
    """A peer refused or did not answer what the demo sent."""


def _ack_code(ack: bytes) -> str:
    for segment in ack.decode("utf-8", errors="replace").split("\r"):
        if segment.startswith("MSA|"):
            fields = segment.split("|")
            return fields[1] if len(fields) > 1 else ""
    return ""


def send_mllp(host: str, port: int, messages: Sequence[str], *, timeout_s: float = 30) -> list[str]:
    """Send HL7 messages over one MLLP connection; returns each MSA-1 code (AA, AE, AR).

    Raises:
        SendError: the connection failed or an ACK did not come back.
    """
    codes = []
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            buffer = b""
            for message in messages:
                sock.sendall(START + message.encode("utf-8") + END)
                while END not in buffer:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise SendError("MLLP connection closed before the ACK")
                    buffer += chunk
                frame, _, buffer = buffer.partition(END)
                codes.append(_ack_code(frame.lstrip(START)))
    except OSError as exc:
        raise SendError(f"MLLP {host}:{port}: {type(exc).__name__}") from exc
    return codes


def send_dicom(
    host: str,
    port: int,
    called_ae: str,
    datasets: Sequence[Dataset],
    *,
    calling_ae: str = "CDSDEMO",
) -> list[int]:
    """C-STORE the datasets over one association; returns each status (0x0000 success).

    Raises:
        SendError: the association was rejected or aborted.
    """
    from pynetdicom import AE

    ae = AE(ae_title=calling_ae)
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate(host, port, ae_title=called_ae)
    if not assoc.is_established:
        raise SendError(f"DICOM association with {called_ae}@{host}:{port} was not accepted")
    statuses = []
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            statuses.append(int(status.Status) if status else -1)
    finally:
        assoc.release()
    return statuses


def send_patient(
    patient: Any, *, host: str, mllp_port: int, dicom_port: int, called_ae: str
) -> tuple[list[str], list[int]]:
    """Send one synthetic patient as a hospital would: HL7 first, then the study.

    Returns:
        the HL7 ACK codes and the DICOM statuses, in sending order.

    Raises:
        SendError: a connection failed.
    """
    codes = send_mllp(host, mllp_port, patient.to_hl7_messages())
    statuses = send_dicom(host, dicom_port, called_ae, patient.to_dicom_datasets())
    return codes, statuses
