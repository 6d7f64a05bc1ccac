"""The Storage SCP: application entity, presentation contexts, association handlers.

* Verification (C-ECHO, PS3.4 Annex A) and every Storage SOP Class (PS3.4 Annex B) that
  pynetdicom knows, each with every transfer syntax pydicom knows (PS3.5 §10 and Annex A:
  implicit/explicit little endian, explicit big endian, deflated, JPEG baseline, extended
  and lossless, JPEG-LS, JPEG 2000, RLE, and the newer ones). For each proposed context
  the first transfer syntax in :data:`TRANSFER_SYNTAX_PREFERENCE` that the sender offered
  is accepted; encapsulated syntaxes come first, so a sender never has to transcode an
  instance it holds compressed.
* Storage Commitment Push Model (PS3.4 Annex J) as SCP, see :mod:`.commitment`.
* C-STORE handling is :class:`~connectors.dicom.receive.InstanceReceiver`; the handler
  answers a status and never raises (pynetdicom would answer ``C211``).

Connections: TCP_NODELAY on every accepted socket (a DIMSE response is small and must not
wait for Nagle), an optional source address allow-list checked before anything is read,
optional TLS, a cap on simultaneous associations (A-ASSOCIATE-RJ "local limit exceeded",
PS3.8 §9.3.4) and the largest PDU this SCP accepts (PS3.8 §D.1, Maximum Length).
``SO_REUSEPORT`` lets several receiver processes listen on one port.
"""

from __future__ import annotations

import logging
import socket
import ssl
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    AllTransferSyntaxes,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
from pynetdicom.events import Event
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.transport import ThreadedAssociationServer

from cds.core.settings import Settings
from connectors.dicom import status
from connectors.dicom.commitment import (
    STORAGE_COMMITMENT_PUSH_MODEL,
    CommitmentReporter,
    parse_request,
)
from connectors.dicom.metrics import DicomMetrics
from connectors.dicom.receive import InstanceReceiver
from connectors.dicom.security import AccessPolicy

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
#: How long a TLS handshake may hold the accept loop, in seconds.
TLS_HANDSHAKE_TIMEOUT_S = 10.0


def presentation_contexts() -> list[PresentationContext]:
    """The contexts this SCP supports (Verification, every Storage class, commitment)."""
    syntaxes: list[str | UID] = list(TRANSFER_SYNTAX_PREFERENCE)
    storage: list[PresentationContext] = AllStoragePresentationContexts
    classes = [str(cx.abstract_syntax) for cx in storage]
    classes += [VERIFICATION, STORAGE_COMMITMENT_PUSH_MODEL]
    return [build_context(uid, syntaxes) for uid in classes]


class DicomServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, with an address check, TCP_NODELAY and SO_REUSEPORT.

    Extra keyword arguments (given through ``AE.make_server``):
        policy: the access policy (source addresses are checked here).
        metrics: connector metrics.
        reuse_port: bind with ``SO_REUSEPORT`` so sibling processes share the port.
    """

    daemon_threads = True

    def __init__(
        self,
        *args: Any,
        policy: AccessPolicy,
        metrics: DicomMetrics,
        reuse_port: bool = False,
        **kwargs: Any,
    ) -> None:
        self.policy = policy
        self.metrics = metrics
        self.reuse_port = reuse_port
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        if self.reuse_port:
            assert self.socket is not None
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        client, address = self.socket.accept()
        if not self.policy.admits_address(str(address[0])):
            self.metrics.associations.labels(result="refused_address").inc()
            logger.warning("DICOM connection refused: source address not in the allow-list")
            client.close()
            raise ConnectionRefusedError("source address not admitted")
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.ssl_context is not None:
            client.settimeout(TLS_HANDSHAKE_TIMEOUT_S)
            try:
                client = self.ssl_context.wrap_socket(client, server_side=True)
            except (ssl.SSLError, OSError):
                self.metrics.associations.labels(result="tls_failed").inc()
                logger.warning("DICOM TLS handshake failed")
                client.close()
                raise
            client.settimeout(None)
        return client, address


class StorageSCP:
    """The AE and its handlers, for one process.

    Args:
        settings: engine settings (AE title, limits, timeouts).
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
        _config.LOG_HANDLER_LEVEL = "none"  # no per-PDU debug logging: speed, and no PHI
        ae = AE(ae_title=settings.dicom_ae_title)
        ae.maximum_associations = settings.dicom_max_associations
        ae.maximum_pdu_size = settings.dicom_max_pdu_size
        ae.acse_timeout = 30
        ae.dimse_timeout = 60
        ae.network_timeout = 300
        if policy.ae_titles is not None:
            ae.require_calling_aet = sorted(policy.ae_titles)
        for context in presentation_contexts():
            ae.add_supported_context(str(context.abstract_syntax), context.transfer_syntax)
        self.ae = ae

    def make_server(
        self,
        address: tuple[str, int],
        *,
        ssl_context: ssl.SSLContext | None,
        reuse_port: bool,
    ) -> DicomServer:
        """Bind and listen (not yet serving): call ``serve_forever`` in a thread."""
        server = self.ae.make_server(
            address,
            ssl_context=ssl_context,
            evt_handlers=[
                (evt.EVT_C_STORE, self.on_c_store),
                (evt.EVT_N_ACTION, self.on_n_action),
                (evt.EVT_ACCEPTED, self._on_accepted),
                (evt.EVT_REJECTED, self._on_rejected),
            ],
            server_class=DicomServer,
            policy=self.policy,
            metrics=self.metrics,
            reuse_port=reuse_port,
        )
        self.ae._servers.append(server)
        assert isinstance(server, DicomServer)
        return server

    def on_c_store(self, event: Event) -> Dataset | int:
        """EVT_C_STORE: store, index, commit, then answer (PS3.4 B.2.3)."""
        try:
            request: Any = event.request
            requestor = event.assoc.requestor
            result = self.receiver.receive(
                dataset=request.DataSet.getvalue(),
                transfer_syntax=str(event.context.transfer_syntax),
                sop_class=str(request.AffectedSOPClassUID),
                sop_instance=str(request.AffectedSOPInstanceUID),
                sender=f"{str(requestor.ae_title).strip()}@{requestor.address}",
            )
        except Exception as exc:  # never raise into pynetdicom (it would answer 0xC211)
            logger.exception("C-STORE handler failed (%s)", type(exc).__name__)
            return status.OUT_OF_RESOURCES_INTERNAL
        if result.comment is None:
            return result.status
        answer = Dataset()
        answer.Status = result.status
        answer.ErrorComment = result.comment
        return answer

    def on_n_action(self, event: Event) -> tuple[int, Dataset | None]:
        """EVT_N_ACTION: a storage commitment request (PS3.4 J.3.2), queued for a report."""
        try:
            parsed = parse_request(event)
            if isinstance(parsed, int):
                return parsed, None
            if self.reporter is None or not self.reporter.knows(parsed.calling_ae):
                logger.warning(
                    "storage commitment refused: no report address for the calling AE "
                    "(set CDSFUSION_DICOM_COMMITMENT_PEERS)"
                )
                return status.COMMITMENT_PROCESSING_FAILURE, None
            self.reporter.submit(parsed)
            return status.SUCCESS, None
        except Exception as exc:  # never raise into pynetdicom
            logger.exception("N-ACTION handler failed (%s)", type(exc).__name__)
            return status.COMMITMENT_PROCESSING_FAILURE, None

    def _on_accepted(self, _event: Event) -> None:
        self.metrics.associations.labels(result="accepted").inc()

    def _on_rejected(self, _event: Event) -> None:
        self.metrics.associations.labels(result="rejected").inc()
