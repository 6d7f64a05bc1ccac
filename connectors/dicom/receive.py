"""One C-STORE, from received bytes to a status: read, store durably, index, commit.

The order is the promise (PS3.4 B.2.3 statuses, names in :mod:`.status`):

1. read the header without pixel data (:mod:`.header`); what cannot be read is ``Cxxx``;
2. write File Meta + data set to the content-addressed store (:mod:`.store`); a failure
   is ``A700`` out of resources;
3. flush the files of a group of instances (this one and those other associations received
   meanwhile) to stable storage, then index them (:mod:`.index`) and commit, in one batch
   (:mod:`.writer`, :mod:`.batch`); a failed flush is ``A700`` for the whole group, a
   database failure ``A701``, and the file written in step 2 is an orphan that counts as
   nothing;
4. only then success ``0000`` (or ``B000`` when keep-newest replaced other bytes).

:meth:`InstanceReceiver.receive` never raises: an unexpected error is ``A7FF``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import struct
import threading
import time
import weakref
from dataclasses import dataclass

from pydicom.dataset import FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID
from sqlalchemy.exc import SQLAlchemyError

from cds.core.db.types import utcnow
from cds.core.errors import ConflictError, InputError, StorageError
from connectors.dicom import status
from connectors.dicom.batch import IndexRequest
from connectors.dicom.header import MissingUIDError, read_header
from connectors.dicom.index import IndexOutcome
from connectors.dicom.metrics import DicomMetrics
from connectors.dicom.store import ContentStore, SyncError
from connectors.dicom.writer import IndexWriter, Reservation

logger = logging.getLogger(__name__)

#: Written into the File Meta of every stored file (PS3.10 §7.1). Fixed, so the same data
#: set received twice gives byte-identical files whatever library version received it.
IMPLEMENTATION_CLASS_UID = UID("1.2.826.0.1.3680043.8.498.1.20261122")
IMPLEMENTATION_VERSION_NAME = "CDSFUSION_1"


@dataclass(frozen=True, slots=True)
class StoreResult:
    """The status for the sender and what happened (no PHI: UIDs are not logged either).

    Attributes:
        status: the C-STORE status (see :mod:`.status`).
        comment: an Error Comment for non-success statuses (PS3.7 C.4.4), PHI-free.
        outcome: what indexing did, when it got that far.
    """

    status: int
    comment: str | None = None
    outcome: IndexOutcome | None = None


def file_meta_bytes(*, sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes:
    """Preamble, ``DICM`` and the File Meta Information group (PS3.10 §7.1).

    Byte-identical to what pydicom's ``write_file_meta_info`` writes (explicit VR little
    endian, UIDs padded with NUL to even length); only the three UIDs vary, the rest is
    built once.
    """
    uids = (sop_class, sop_instance, transfer_syntax)
    if not all(uid.isascii() for uid in uids):
        return _file_meta_bytes_pydicom(
            sop_class=sop_class, sop_instance=sop_instance, transfer_syntax=transfer_syntax
        )
    body = b"".join(
        (
            _VERSION_ELEMENT,
            _ui_element(0x0002, sop_class),
            _ui_element(0x0003, sop_instance),
            _ui_element(0x0010, transfer_syntax),
            _IMPLEMENTATION_ELEMENTS,
        )
    )
    return b"".join((_PREAMBLE, _GROUP_LENGTH_TAG, _UL.pack(len(body)), body))


def _ui_element(element: int, value: str) -> bytes:
    raw = value.encode("ascii")
    if len(raw) % 2:
        raw += b"\x00"
    return _SHORT_HEADER.pack(0x0002, element, b"UI", len(raw)) + raw


def _file_meta_bytes_pydicom(*, sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME
    buffer = DicomBytesIO()
    buffer.write(_PREAMBLE)
    write_file_meta_info(buffer, meta, enforce_standard=True)
    return buffer.getvalue()


_UL = struct.Struct("<I")
_SHORT_HEADER = struct.Struct("<HH2sH")
_PREAMBLE = b"\x00" * 128 + b"DICM"
_GROUP_LENGTH_TAG = _SHORT_HEADER.pack(0x0002, 0x0000, b"UL", 4)
_VERSION_ELEMENT = struct.pack("<HH2sHI", 0x0002, 0x0001, b"OB", 0, 2) + b"\x00\x01"
_NAME = IMPLEMENTATION_VERSION_NAME.encode("ascii") + b" " * (len(IMPLEMENTATION_VERSION_NAME) % 2)
_IMPLEMENTATION_ELEMENTS = _ui_element(0x0012, IMPLEMENTATION_CLASS_UID) + (
    _SHORT_HEADER.pack(0x0002, 0x0013, b"SH", len(_NAME)) + _NAME
)


class InstanceReceiver:
    """Receives instances for one SCP process, on the Upper Layer's event loop.

    A C-STORE's own work (read the header, write the file) is a fraction of a millisecond
    of CPU for a typical instance, all of it under the GIL: it runs on the event loop,
    where a hop to a thread would cost more than the work. A data set larger than
    :data:`INLINE_LIMIT` is read and written in a worker thread, so one big instance does
    not hold up the other associations. The commit is awaited without blocking: the
    writer calls back when the batch holding the request has committed.

    Args:
        store: the content-addressed file store.
        writer: the group-commit writer (started by the caller), which applies the
            stable-study timing, duplicate policy and issuer map (:class:`.batch.BatchIndexer`).
        metrics: Prometheus metrics of this process.
    """

    def __init__(
        self,
        *,
        store: ContentStore,
        writer: IndexWriter[IndexRequest, IndexOutcome],
        metrics: DicomMetrics,
    ) -> None:
        self.store = store
        self.writer = writer
        self.metrics = metrics
        self._settlers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Settler] = (
            weakref.WeakKeyDictionary()
        )

    def reserve(self) -> Reservation[IndexRequest, IndexOutcome]:
        """A place in a coming index batch, taken when a C-STORE request starts arriving."""
        return self.writer.reserve()

    async def receive(
        self,
        *,
        dataset: bytes,
        transfer_syntax: str,
        sop_class: str,
        sop_instance: str,
        sender: str,
        reservation: Reservation[IndexRequest, IndexOutcome] | None = None,
    ) -> StoreResult:
        """Store and index one received data set; returns the status for the sender.

        Args:
            reservation: the place taken when the request started arriving (released
                here); ``None`` takes one now.
        """
        started = time.perf_counter()
        place = reservation if reservation is not None else self.writer.reserve()
        try:
            prepare = functools.partial(
                self._prepare,
                dataset=dataset,
                transfer_syntax=transfer_syntax,
                sop_class=sop_class,
                sop_instance=sop_instance,
                sender=sender,
            )
            if len(dataset) > INLINE_LIMIT:
                prepared = await asyncio.to_thread(prepare)
            else:
                prepared = prepare()
            if isinstance(prepared, StoreResult):
                result = prepared
            else:
                result = await self._index(place, prepared)
        except Exception as exc:  # the handler must answer a status, never raise
            logger.exception("C-STORE failed unexpectedly (%s)", type(exc).__name__)
            result = StoreResult(status.OUT_OF_RESOURCES_INTERNAL, "internal error")
        finally:
            place.release()
        self.metrics.observe_store(result, time.perf_counter() - started)
        return result

    def _prepare(
        self,
        *,
        dataset: bytes,
        transfer_syntax: str,
        sop_class: str,
        sop_instance: str,
        sender: str,
    ) -> StoreResult | IndexRequest:
        """Read the header and write the file: the index request, or the failure status."""
        try:
            header = read_header(dataset, transfer_syntax)
        except MissingUIDError:
            return StoreResult(status.CANNOT_UNDERSTAND_MISSING_UID, "UID missing or invalid")
        except InputError as exc:
            logger.info("C-STORE data set cannot be understood: %s", exc)
            return StoreResult(status.CANNOT_UNDERSTAND, "data set cannot be decoded")
        if header.SOPInstanceUID != sop_instance.strip():
            return StoreResult(
                status.CANNOT_UNDERSTAND_UID_MISMATCH, "SOP Instance UID differs from request"
            )
        if header.SOPClassUID != sop_class.strip():
            return StoreResult(
                status.DATASET_DOES_NOT_MATCH_SOP_CLASS, "SOP Class UID differs from request"
            )

        data = (
            file_meta_bytes(
                sop_class=header.SOPClassUID,
                sop_instance=header.SOPInstanceUID,
                transfer_syntax=transfer_syntax,
            )
            + dataset
        )
        try:
            stored = self.store.put(data)
        except StorageError as exc:
            logger.error("C-STORE refused: %s", exc)
            return StoreResult(status.OUT_OF_RESOURCES_STORAGE, "storage unavailable")
        return IndexRequest(
            header=header,
            stored=stored,
            transfer_syntax=transfer_syntax,
            sender=sender,
            received_at=utcnow(),
        )

    async def _index(
        self, place: Reservation[IndexRequest, IndexOutcome], request: IndexRequest
    ) -> StoreResult:
        """Submit to the writer and await the commit of the batch that holds ``request``."""
        loop = asyncio.get_running_loop()
        committed: asyncio.Future[IndexOutcome] = loop.create_future()
        settler = self._settlers.get(loop)
        if settler is None:
            settler = self._settlers[loop] = _Settler(loop)
        on_done = functools.partial(settler.settle, committed)

        try:
            place.submit(request, on_done)
            async with asyncio.timeout(self.writer.wait_timeout_s):
                outcome = await committed
        except ConflictError:
            return StoreResult(
                status.DUPLICATE_REJECTED, "SOP Instance UID already stored with other content"
            )
        except SyncError as exc:  # the group's files could not be flushed: nothing committed
            logger.error("C-STORE refused: %s", exc)
            return StoreResult(status.OUT_OF_RESOURCES_STORAGE, "storage unavailable")
        except (SQLAlchemyError, StorageError, OSError) as exc:  # OSError: TimeoutError too
            logger.error(
                "C-STORE refused: index commit failed (%s); file %s left unreferenced",
                type(exc).__name__,
                request.stored.sha256[:12],
            )
            return StoreResult(status.OUT_OF_RESOURCES_DATABASE, "database unavailable")
        if outcome is IndexOutcome.REPLACED:
            logger.warning(
                "SOP instance replaced by newer content (file %s)", request.stored.sha256[:12]
            )
            return StoreResult(
                status.WARNING_REPLACED, "replaced an earlier instance with the same UID", outcome
            )
        return StoreResult(status.SUCCESS, None, outcome)


#: Data sets larger than this (bytes) are read and written in a worker thread instead of
#: on the event loop.
INLINE_LIMIT = 4 << 20


class _Settler:
    """Hands the writer's answers to one event loop, one wake-up per batch.

    The writer answers the requests of a batch one after the other from its thread; each
    ``call_soon_threadsafe`` writes to the loop's self-pipe and wakes it. Answers that
    arrive while a hand-over is already scheduled join it, so a batch of four wakes the
    loop once instead of four times.
    """

    __slots__ = ("_lock", "_loop", "_pending")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: list[
            tuple[asyncio.Future[IndexOutcome], IndexOutcome | None, BaseException | None]
        ] = []

    def settle(
        self,
        future: asyncio.Future[IndexOutcome],
        outcome: IndexOutcome | None,
        error: BaseException | None,
    ) -> None:
        """Called on the writer thread: resolve ``future`` on the loop, soon."""
        with self._lock:
            self._pending.append((future, outcome, error))
            if len(self._pending) > 1:
                return  # a hand-over is scheduled and will take this one too
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting
            self._loop.call_soon_threadsafe(self._run)

    def _run(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for future, outcome, error in pending:
            _settle(future, outcome, error)


def _settle(
    future: asyncio.Future[IndexOutcome],
    outcome: IndexOutcome | None,
    error: BaseException | None,
) -> None:
    """Resolve ``future`` on its loop (a request that timed out has nobody waiting)."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(outcome)  # type: ignore[arg-type]
