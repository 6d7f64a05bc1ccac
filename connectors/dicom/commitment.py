"""Storage commitment, Push Model (PS3.4 Annex J), as the SCP.

A sender that wants to know its instances are safe here sends an N-ACTION (Action Type 1,
"Request Storage Commitment", PS3.4 J.3.2) naming a Transaction UID and the SOP instances.
The N-ACTION is answered at once with success: the request is queued. A reporter thread
then checks each instance (a committed index row whose file is still in the store with the
recorded sha256) and sends the N-EVENT-REPORT (PS3.4 J.3.3): Event Type 1 when all are
committed, 2 when some failed, with Failure Reasons from J.3.3.1.1.2.

The report goes on a new association that this engine opens to the sender (PS3.4 J.3.3
allows both; Orthanc waits for it on its own DICOM port), proposing the Storage
Commitment Push Model SOP Class with SCP/SCU Role Selection in which the requestor takes
the SCP role (PS3.4 J.3.1, PS3.7 D.3.3.4). The sender's address comes from
``CDSFUSION_DICOM_COMMITMENT_PEERS`` (``AE=host:port``). A report that cannot be delivered
is retried with back-off for a few minutes, then dropped with an error log; requests are
kept in memory (a restart drops pending reports; the sender re-asks after its timeout).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from cds.core.db.models import ImagingInstance, SourceItem
from cds.core.errors import ConfigurationError
from connectors.dicom import status
from connectors.dicom.store import ContentStore

logger = logging.getLogger(__name__)

#: Storage Commitment Push Model SOP Class (PS3.4 J.3.1).
STORAGE_COMMITMENT_PUSH_MODEL = "1.2.840.10008.1.20.1"
#: The well-known SOP Instance of the Storage Commitment Push Model (PS3.4 J.3.1).
PUSH_MODEL_INSTANCE = "1.2.840.10008.1.20.1.1"
REQUEST_STORAGE_COMMITMENT = 1
#: PS3.7 C.4.5 / PS3.4 J.3.2: N-ACTION "no such action type".
NO_SUCH_ACTION_TYPE = 0x0123
INVALID_ARGUMENT_VALUE = 0x0115


@dataclass(frozen=True, slots=True)
class CommitmentRequest:
    """One N-ACTION request: who asked, and which instances (class, instance UID)."""

    calling_ae: str
    transaction_uid: str
    references: tuple[tuple[str, str], ...]
    attempts: int = 0
    not_before: float = field(default=0.0)


def parse_peers(entries: Sequence[str]) -> dict[str, tuple[str, int]]:
    """``("PACS=10.0.0.5:104", ...)`` to ``{"PACS": ("10.0.0.5", 104)}``.

    Raises:
        ConfigurationError: an entry is not ``AE=host:port``.
    """
    peers: dict[str, tuple[str, int]] = {}
    for entry in entries:
        title, _, address = entry.partition("=")
        host, _, port = address.rpartition(":")
        if not title.strip() or not host or not port.isdigit():
            raise ConfigurationError("CDSFUSION_DICOM_COMMITMENT_PEERS: expected AE=host:port")
        peers[title.strip()] = (host.strip("[]"), int(port))
    return peers


def parse_action(
    *, action_type_id: int | None, information: Dataset | None, calling_ae: str
) -> CommitmentRequest | int:
    """An N-ACTION's request (PS3.4 J.3.2), or the failure status to answer it with.

    Args:
        action_type_id: the request's Action Type ID (1 asks for storage commitment).
        information: the decoded Action Information; ``None`` when absent or undecodable.
        calling_ae: the requestor's AE title (where the report goes).
    """
    if action_type_id != REQUEST_STORAGE_COMMITMENT:
        return NO_SUCH_ACTION_TYPE
    if information is None:
        return INVALID_ARGUMENT_VALUE
    try:
        transaction_uid = str(information.TransactionUID)
        references = tuple(
            (str(item.ReferencedSOPClassUID), str(item.ReferencedSOPInstanceUID))
            for item in information.ReferencedSOPSequence
        )
    except (AttributeError, ValueError, TypeError, KeyError):
        return INVALID_ARGUMENT_VALUE
    if not transaction_uid or not references:
        return INVALID_ARGUMENT_VALUE
    return CommitmentRequest(
        calling_ae=calling_ae.strip(), transaction_uid=transaction_uid, references=references
    )


def check_references(
    *, session: Session, store: ContentStore, references: Sequence[tuple[str, str]]
) -> tuple[list[tuple[str, str]], list[tuple[str, str, int]]]:
    """Split references into committed ones and failures with their Failure Reason."""
    uids = [instance for _, instance in references]
    rows = {
        row.SOPInstanceUID: row
        for row in session.execute(
            select(
                ImagingInstance.SOPInstanceUID,
                ImagingInstance.SOPClassUID,
                SourceItem.storage_key,
                SourceItem.content_sha256,
            )
            .join(SourceItem, SourceItem.id == ImagingInstance.source_item_id)
            .where(ImagingInstance.SOPInstanceUID.in_(uids))
        )
    }
    ok: list[tuple[str, str]] = []
    failed: list[tuple[str, str, int]] = []
    for sop_class, sop_instance in references:
        row = rows.get(sop_instance)
        if row is None:
            failed.append((sop_class, sop_instance, status.COMMITMENT_NO_SUCH_OBJECT_INSTANCE))
        elif row.SOPClassUID != sop_class:
            failed.append((sop_class, sop_instance, status.COMMITMENT_CLASS_INSTANCE_CONFLICT))
        elif row.storage_key is None or not store.verify(row.storage_key, row.content_sha256):
            failed.append((sop_class, sop_instance, status.COMMITMENT_PROCESSING_FAILURE))
        else:
            ok.append((sop_class, sop_instance))
    return ok, failed


def event_report(
    transaction_uid: str, ok: Sequence[tuple[str, str]], failed: Sequence[tuple[str, str, int]]
) -> tuple[int, Dataset]:
    """Event Type ID and Event Information of the N-EVENT-REPORT (PS3.4 J.3.3.1)."""
    info = Dataset()
    info.TransactionUID = transaction_uid
    if ok:
        info.ReferencedSOPSequence = [_reference(c, i) for c, i in ok]
    if failed:
        info.FailedSOPSequence = [_reference(c, i, reason) for c, i, reason in failed]
        return status.COMMITMENT_EVENT_SOME_FAILED, info
    return status.COMMITMENT_EVENT_ALL_SUCCESS, info


def _reference(sop_class: str, sop_instance: str, reason: int | None = None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    if reason is not None:
        item.FailureReason = reason
    return item


class CommitmentReporter:
    """Queue of commitment requests and the thread that answers them.

    Args:
        ae_title: this SCP's AE title (the calling AE of the report association).
        peers: AE title -> (host, port) of senders to report to.
        session_factory: timeline database sessions.
        store: the file store (files are re-hashed before they are reported committed).
        on_result: called with ``"sent"`` or ``"failed"`` (metrics).
        retry_delays_s: waits between delivery attempts. Defaults to 1, 5, 30, 120 s.
    """

    def __init__(
        self,
        *,
        ae_title: str,
        peers: dict[str, tuple[str, int]],
        session_factory: sessionmaker[Session],
        store: ContentStore,
        on_result: Callable[[str], None],
        retry_delays_s: Sequence[float] = (1.0, 5.0, 30.0, 120.0),
    ) -> None:
        self.ae_title = ae_title
        self.peers = peers
        self.session_factory = session_factory
        self.store = store
        self.on_result = on_result
        self.retry_delays_s = tuple(retry_delays_s)
        self._queue: queue.Queue[CommitmentRequest | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def submit(self, request: CommitmentRequest) -> None:
        self._queue.put(request)

    def knows(self, ae_title: str) -> bool:
        return ae_title in self.peers

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="dicom-commitment", daemon=False)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stopping.is_set():
            request = self._queue.get()
            if request is None:
                continue
            wait = request.not_before - time.monotonic()
            if wait > 0:
                if self._stopping.wait(min(wait, 0.5)):
                    return
                self._queue.put(request)
                continue
            try:
                self._report(request)
                self.on_result("sent")
            except (OSError, RuntimeError, ValueError, SQLAlchemyError) as exc:  # retried later
                self._retry(request, exc)

    def _retry(self, request: CommitmentRequest, exc: Exception) -> None:
        if request.attempts >= len(self.retry_delays_s):
            logger.error(
                "storage commitment report to %s dropped after %d attempts (%s)",
                request.calling_ae,
                request.attempts + 1,
                type(exc).__name__,
            )
            self.on_result("failed")
            return
        delay = self.retry_delays_s[request.attempts]
        logger.warning(
            "storage commitment report to %s failed (%s); retry in %.0f s",
            request.calling_ae,
            type(exc).__name__,
            delay,
        )
        self._queue.put(
            CommitmentRequest(
                calling_ae=request.calling_ae,
                transaction_uid=request.transaction_uid,
                references=request.references,
                attempts=request.attempts + 1,
                not_before=time.monotonic() + delay,
            )
        )

    def _report(self, request: CommitmentRequest) -> None:
        with self.session_factory() as session:
            ok, failed = check_references(
                session=session, store=self.store, references=request.references
            )
        event_type, info = event_report(request.transaction_uid, ok, failed)
        host, port = self.peers[request.calling_ae]
        ae = AE(ae_title=self.ae_title)
        ae.add_requested_context(STORAGE_COMMITMENT_PUSH_MODEL)
        role = build_role(STORAGE_COMMITMENT_PUSH_MODEL, scu_role=False, scp_role=True)
        assoc = ae.associate(host, port, ae_title=request.calling_ae, ext_neg=[role])
        if not assoc.is_established:
            raise ConnectionError("report association not established")
        try:
            answer, _ = assoc.send_n_event_report(
                info, event_type, STORAGE_COMMITMENT_PUSH_MODEL, PUSH_MODEL_INSTANCE
            )
        finally:
            assoc.release()
        code = int(getattr(answer, "Status", -1))
        if code != status.SUCCESS:
            raise ConnectionError(f"report answered 0x{code & 0xFFFF:04X}")
        logger.info(
            "storage commitment reported to %s: %d committed, %d failed",
            request.calling_ae,
            len(ok),
            len(failed),
        )
