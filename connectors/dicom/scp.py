"""The Storage SCP: what it accepts and how each request is answered.

* Verification (C-ECHO, PS3.4 Annex A) and every Storage SOP Class (PS3.4 Annex B) that
  pynetdicom knows, each with every transfer syntax pydicom knows (PS3.5 §10 and Annex A:
  implicit/explicit little endian, explicit big endian, deflated, JPEG baseline, extended
  and lossless, JPEG-LS, JPEG 2000, RLE, and the newer ones). For each proposed context
  the first transfer syntax in :data:`TRANSFER_SYNTAX_PREFERENCE` that the sender offered
  is accepted; encapsulated syntaxes come first, so a sender never has to transcode an
  instance it holds compressed.
* Storage Commitment Push Model (PS3.4 Annex J) as SCP, see :mod:`.commitment`.
* C-STORE handling is :class:`~connectors.dicom.receive.InstanceReceiver`, on the event
  loop: a place in the coming index batch is reserved when the request's command
  arrives, so the writer holds its batch open for the data set still on the wire; the
  handler answers a status and never raises (an unexpected error answers ``A7FF``).

The network side is :mod:`.ul`, a lean asyncio DICOM Upper Layer: TCP_NODELAY on every
accepted socket (a DIMSE response is small and must not wait for Nagle), an optional
source address allow-list checked before anything is read, optional TLS, the called AE
title check, a cap on simultaneous associations (A-ASSOCIATE-RJ "local limit exceeded",
PS3.8 §9.3.4) and the largest PDU this SCP accepts (PS3.8 §D.1, Maximum Length).
``SO_REUSEPORT`` lets several receiver processes listen on one port.
"""

from __future__ import annotations

import logging
import ssl
import zlib
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.filereader import read_dataset
from pydicom.uid import (
    UID,
    AllTransferSyntaxes,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AllStoragePresentationContexts, _config
from pynetdicom.presentation import PresentationContext, build_context

from cds.core.settings import Settings
from connectors.dicom import status
from connectors.dicom.batch import IndexRequest
from connectors.dicom.commitment import (
    STORAGE_COMMITMENT_PUSH_MODEL,
    CommitmentReporter,
    parse_action,
)
from connectors.dicom.index import IndexOutcome
from connectors.dicom.metrics import DicomMetrics
from connectors.dicom.receive import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    InstanceReceiver,
)
from connectors.dicom.security import AccessPolicy
from connectors.dicom.ul import AcceptorConfig, UpperLayerServer
from connectors.dicom.ul.dimse import SOP_CLASS_NOT_SUPPORTED
from connectors.dicom.writer import Reservation

logger = logging.getLogger(__name__)

_UNCOMPRESSED_LAST = (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
)
#: Every transfer syntax pydicom knows: encapsulated ones first, then native ones.
TRANSFER_SYNTAX_PREFERENCE: list[UID] = [
    *(ts for ts in AllTransferSyntaxes if ts not in _UNCOMPRESSED_LAST),
    *_UNCOMPRESSED_LAST,
]
#: Verification SOP Class (PS3.4 A.4).
VERIFICATION = "1.2.840.10008.1.1"
#: How long a TLS handshake may take, in seconds.
TLS_HANDSHAKE_TIMEOUT_S = 10.0


def presentation_contexts() -> list[PresentationContext]:
    """The contexts this SCP supports (Verification, every Storage class, commitment)."""
    syntaxes: list[str | UID] = list(TRANSFER_SYNTAX_PREFERENCE)
    storage: list[PresentationContext] = AllStoragePresentationContexts
    classes = [str(cx.abstract_syntax) for cx in storage]
    classes += [VERIFICATION, STORAGE_COMMITMENT_PUSH_MODEL]
    return [build_context(uid, syntaxes) for uid in classes]


def storage_sop_classes() -> frozenset[str]:
    """The Storage SOP Classes accepted (PS3.4 Annex B), as UIDs."""
    return frozenset(str(cx.abstract_syntax) for cx in AllStoragePresentationContexts)


def decode_dataset(data: bytes, transfer_syntax: str) -> Dataset:
    """A data set received in ``transfer_syntax`` (deflated ones inflated first, PS3.5 A.5).

    Decoding is lazy: a malformed element raises when it is read.
    """
    syntax = UID(transfer_syntax)
    if syntax == DeflatedExplicitVRLittleEndian:
        data = zlib.decompress(data, -zlib.MAX_WBITS)
    return read_dataset(BytesIO(data), syntax.is_implicit_VR, syntax.is_little_endian)


def acceptor_config(
    *, ae_title: str, max_pdu_size: int, max_associations: int, abstract_syntaxes: frozenset[str]
) -> AcceptorConfig:
    """What the SCP's upper layer negotiates: the given AE title, limits and abstract
    syntaxes, with the SCP's transfer syntax preference, implementation identity and
    timeouts."""
    return AcceptorConfig(
        ae_title=ae_title,
        max_pdu_size=max_pdu_size,
        max_associations=max_associations,
        abstract_syntaxes=abstract_syntaxes,
        transfer_syntax_preference=tuple(str(ts) for ts in TRANSFER_SYNTAX_PREFERENCE),
        implementation_class_uid=str(IMPLEMENTATION_CLASS_UID),
        implementation_version_name=IMPLEMENTATION_VERSION_NAME,
        acse_timeout_s=30.0,
        network_timeout_s=300.0,
        tls_handshake_timeout_s=TLS_HANDSHAKE_TIMEOUT_S,
    )


class StorageSCP:
    """The application behind the Upper Layer, for one process (a :class:`.ul.ServiceUser`).

    Args:
        settings: engine settings (AE title, limits).
        receiver: stores and indexes each C-STORE.
        reporter: storage commitment reports; ``None`` refuses N-ACTION requests.
        policy: calling AE title and address allow-lists.
        metrics: connector metrics.
    """

    def __init__(
        self,
        *,
        settings: Settings,
        receiver: InstanceReceiver,
        reporter: CommitmentReporter | None,
        policy: AccessPolicy,
        metrics: DicomMetrics,
    ) -> None:
        self.settings = settings
        self.receiver = receiver
        self.reporter = reporter
        self.policy = policy
        self.metrics = metrics
        _config.LOG_HANDLER_LEVEL = "none"  # commitment reports: no per-PDU logs, no PHI
        self.storage_classes = storage_sop_classes()
        self.config = acceptor_config(
            ae_title=settings.dicom_ae_title,
            max_pdu_size=settings.dicom_max_pdu_size,
            max_associations=settings.dicom_max_associations,
            abstract_syntaxes=self.storage_classes | {VERIFICATION, STORAGE_COMMITMENT_PUSH_MODEL},
        )

    def make_server(
        self,
        address: tuple[str, int],
        *,
        ssl_context: ssl.SSLContext | None,
        reuse_port: bool,
    ) -> UpperLayerServer:
        """The server for ``address`` (not yet listening: call ``start``)."""
        host, port = address
        return UpperLayerServer(
            self.config,
            self,
            host=host,
            port=port,
            ssl_context=ssl_context,
            reuse_port=reuse_port,
        )

    def admits_address(self, address: str) -> bool:
        return self.policy.admits_address(address)

    def admits_calling_ae(self, ae_title: str) -> bool:
        return self.policy.admits_ae_title(ae_title)

    def on_association(self, result: str) -> None:
        self.metrics.associations.labels(result=result).inc()

    def reserve_store(self) -> Reservation[IndexRequest, IndexOutcome]:
        """A C-STORE request started arriving: hold a place for it in a coming batch."""
        return self.receiver.reserve()

    async def on_c_store(
        self,
        *,
        dataset: bytes,
        abstract_syntax: str,
        transfer_syntax: str,
        sop_class: str,
        sop_instance: str,
        calling_ae: str,
        address: str,
        reservation: Reservation[IndexRequest, IndexOutcome] | None = None,
    ) -> tuple[int, str | None]:
        """C-STORE: store, index, commit, then answer (PS3.4 B.2.3)."""
        if abstract_syntax not in self.storage_classes:
            return SOP_CLASS_NOT_SUPPORTED, "not a storage presentation context"
        try:
            result = await self.receiver.receive(
                dataset=dataset,
                transfer_syntax=transfer_syntax,
                sop_class=sop_class,
                sop_instance=sop_instance,
                sender=f"{calling_ae}@{address}",
                reservation=reservation,
            )
        except Exception as exc:  # never raise into the Upper Layer
            logger.exception("C-STORE handler failed (%s)", type(exc).__name__)
            return status.OUT_OF_RESOURCES_INTERNAL, None
        return result.status, result.comment

    def on_n_action(
        self,
        *,
        abstract_syntax: str,
        action_type_id: int | None,
        information: bytes | None,
        transfer_syntax: str,
        calling_ae: str,
    ) -> int:
        """N-ACTION: a storage commitment request (PS3.4 J.3.2), queued for a report."""
        if abstract_syntax != STORAGE_COMMITMENT_PUSH_MODEL:
            return SOP_CLASS_NOT_SUPPORTED
        try:
            info = None if information is None else decode_dataset(information, transfer_syntax)
            parsed = parse_action(
                action_type_id=action_type_id, information=info, calling_ae=calling_ae
            )
            if isinstance(parsed, int):
                return parsed
            if self.reporter is None or not self.reporter.knows(parsed.calling_ae):
                logger.warning(
                    "storage commitment refused: no report address for the calling AE "
                    "(set CDSFUSION_DICOM_COMMITMENT_PEERS)"
                )
                return status.COMMITMENT_PROCESSING_FAILURE
            self.reporter.submit(parsed)
            return status.SUCCESS
        except Exception as exc:  # never raise into the Upper Layer
            logger.exception("N-ACTION handler failed (%s)", type(exc).__name__)
            return status.COMMITMENT_PROCESSING_FAILURE
