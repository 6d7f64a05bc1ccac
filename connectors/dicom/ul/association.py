"""One association as the acceptor: the PS3.8 §9.2 state machine for an SCP, on asyncio.

The states an acceptor passes through, in order (PS3.8 Table 9-10):

1. connection open, ARTIM running: the first PDU must be an A-ASSOCIATE-RQ within the
   ACSE timeout (else the connection is closed);
2. negotiation (:mod:`.acse`): A-ASSOCIATE-RJ, then wait for the peer to close (ARTIM),
   or A-ASSOCIATE-AC and
3. established: P-DATA-TF PDUs carry PDVs (PS3.8 Annex E): command fragments then, when
   the command says so (CommandDataSetType), data set fragments, all on one accepted
   presentation context. A complete message is dispatched (C-ECHO, C-STORE, N-ACTION);
   the response goes back fragmented to the peer's Maximum Length.
4. A-RELEASE-RQ: A-RELEASE-RP, then wait for the peer to close (ARTIM).

Anything else aborts (A-ABORT, source 2 service-provider): an unknown or unexpected PDU,
a malformed PDU or command set, a P-DATA-TF longer than our Maximum Length, a PDV on a
context that was not accepted, or the network timeout. A peer's A-ABORT or a closed
connection just ends the association. A C-STORE is handed to the service on the event
loop (it awaits its group commit without blocking the loop; the service reserves its place
in the batch as soon as the command arrives); N-ACTION handlers run in the server's thread
pool. Handlers never raise into this layer: an unexpected error answers ``A7FF``
(C-STORE) or ``0110`` (other services).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, Protocol, TypeVar

from connectors.dicom.ul import acse, dimse, pdu

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Longest PDU other than P-DATA-TF accepted (an A-ASSOCIATE-RQ with 128 contexts of
#: many transfer syntaxes stays far below), bytes.
MAX_CONTROL_PDU = 1 << 20
#: Longest command set accepted (a real one is a few hundred bytes), bytes.
MAX_COMMAND_SET = 1 << 16
#: C-STORE status when the handler itself fails (PS3.4 B.2.3, "Refused: Out of Resources").
STORE_INTERNAL_FAILURE = 0xA7FF
#: Other services' status when the handler itself fails (PS3.7 C.4, "Processing failure").
PROCESSING_FAILURE = 0x0110


class Releasable(Protocol):
    """Something held for a request (:meth:`ServiceUser.reserve_store`)."""

    def release(self) -> None:
        """Give it back; idempotent."""
        ...


class ServiceUser(Protocol):
    """What the association layer asks the application (the SCP)."""

    def admits_address(self, address: str) -> bool:
        """The source address allow-list (checked before anything is read)."""
        ...

    def admits_calling_ae(self, ae_title: str) -> bool:
        """The calling AE title allow-list."""
        ...

    def on_association(self, result: str) -> None:
        """Called with accepted, rejected, refused_address or tls_failed."""
        ...

    def reserve_store(self) -> Releasable:
        """A C-STORE request's command arrived; its data set is on its way. What is
        returned is handed to :meth:`on_c_store`, and released by this layer once the
        request is answered or the association ends first."""
        ...

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
        reservation: Any = None,
    ) -> tuple[int, str | None]:
        """Store one instance, on the event loop (it must not block it: run blocking work
        in a thread); returns the status and an optional Error Comment."""
        ...

    def on_n_action(
        self,
        *,
        abstract_syntax: str,
        action_type_id: int | None,
        information: bytes | None,
        transfer_syntax: str,
        calling_ae: str,
    ) -> int:
        """Handle an N-ACTION (blocking); returns the status."""
        ...


class Registry(Protocol):
    """The server side of an association: configuration, limits and the thread pool."""

    established: int
    stopping: bool

    @property
    def config(self) -> acse.AcceptorConfig: ...

    @property
    def service(self) -> ServiceUser: ...

    @property
    def executor(self) -> Executor: ...


class AbortError(Exception):
    """The association must be aborted with this A-ABORT reason (PS3.8 §9.3.8)."""

    def __init__(self, reason: int, why: str) -> None:
        super().__init__(why)
        self.reason = reason


class Association:
    """One connection, from the first byte to close.

    Args:
        registry: the server (configuration, counters, thread pool).
        reader / writer: the connection's streams (after TLS, when configured).
        address: the peer's IP address.
    """

    def __init__(
        self,
        registry: Registry,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        address: str,
    ) -> None:
        self.registry = registry
        self.config = registry.config
        self.service = registry.service
        self.reader = reader
        self.writer = writer
        self.address = address
        self.calling_ae = ""
        self.peer_max_length = 0
        self.contexts: dict[int, tuple[str, str]] = {}
        #: True while a message is being handled: stop waits for its response.
        self.busy = False
        self.task: asyncio.Task[None] | None = None
        self._command_parts: list[bytes] = []
        self._command: dimse.Command | None = None
        self._data: list[bytes] | None = None
        #: What the service holds for the C-STORE whose data set is arriving.
        self._reserved: Releasable | None = None
        self._message_context = 0

    async def run(self) -> None:
        """Serve the association until it is released, aborted or closed."""
        self.task = asyncio.current_task()
        established = False
        try:
            async with asyncio.timeout(self.config.acse_timeout_s):
                pdu_type, body = await self._read_pdu()
            if pdu_type != pdu.A_ASSOCIATE_RQ:
                raise AbortError(pdu.ABORT_UNEXPECTED_PDU, "first PDU is not A-ASSOCIATE-RQ")
            request = pdu.parse_associate_rq(body)
            self.calling_ae = request.calling_ae_title
            decision = acse.negotiate(
                request,
                self.config,
                admits_calling_ae=self.service.admits_calling_ae,
                associations=self.registry.established,
            )
            if isinstance(decision, acse.Rejection):
                self.service.on_association("rejected")
                self.writer.write(decision.encode())
                logger.info(
                    "DICOM association from %s rejected: %s", request.calling_ae_title, decision.why
                )
                await self._linger()
                return
            self.registry.established += 1
            established = True
            self.contexts = decision.contexts
            self.peer_max_length = request.max_length
            self.service.on_association("accepted")
            self.writer.write(
                pdu.encode_associate_ac(
                    request,
                    list(decision.results),
                    max_length=self.config.max_pdu_size,
                    implementation_class_uid=self.config.implementation_class_uid,
                    implementation_version_name=self.config.implementation_version_name,
                )
            )
            await self._serve()
        except AbortError as exc:
            logger.warning("DICOM association aborted: %s", exc)
            self._abort(exc.reason)
        except (pdu.PDUError, dimse.DIMSEError) as exc:
            logger.warning("DICOM association aborted: malformed input (%s)", exc)
            self._abort(pdu.ABORT_INVALID_PDU_PARAMETER_VALUE)
        except TimeoutError:
            logger.info("DICOM association timed out; aborting")
            self._abort(pdu.ABORT_REASON_NOT_SPECIFIED)
        except asyncio.CancelledError:  # the server is stopping and this one is idle
            self._abort(pdu.ABORT_REASON_NOT_SPECIFIED)
        except (EOFError, ConnectionError, OSError):
            logger.debug("DICOM connection closed by the peer")
        finally:
            if self._reserved is not None:  # the data set never came
                self._reserved.release()
                self._reserved = None
            if established:
                self.registry.established -= 1
            self.writer.close()

    def stop(self) -> None:
        """Abort now if idle; a busy association aborts after its response is sent."""
        if not self.busy and self.task is not None:
            self.task.cancel()

    async def _serve(self) -> None:
        timeout = self.config.network_timeout_s
        while True:
            async with asyncio.timeout(timeout):
                pdu_type, body = await self._read_pdu()
            if pdu_type == pdu.P_DATA_TF:
                await self._on_p_data(body)
            elif pdu_type == pdu.A_RELEASE_RQ:
                self.writer.write(pdu.encode_release_rp())
                await self._linger()
                return
            elif pdu_type == pdu.A_ABORT:
                logger.info("DICOM association aborted by the peer")
                return
            else:
                raise AbortError(pdu.ABORT_UNEXPECTED_PDU, f"unexpected PDU 0x{pdu_type:02X}")

    async def _read_pdu(self) -> tuple[int, bytes]:
        pdu_type, length = pdu.read_header(await self.reader.readexactly(pdu.HEADER_SIZE))
        if pdu_type not in pdu.PDU_TYPES:
            raise AbortError(pdu.ABORT_UNRECOGNIZED_PDU, f"unrecognised PDU 0x{pdu_type:02X}")
        limit = self.config.max_pdu_size if pdu_type == pdu.P_DATA_TF else MAX_CONTROL_PDU
        if length > limit:
            raise AbortError(
                pdu.ABORT_INVALID_PDU_PARAMETER_VALUE, "PDU longer than the Maximum Length"
            )
        return pdu_type, await self.reader.readexactly(length)

    async def _on_p_data(self, body: bytes) -> None:
        for context_id, control, value in pdu.parse_pdvs(body):
            if context_id not in self.contexts:
                raise AbortError(pdu.ABORT_INVALID_PDU_PARAMETER_VALUE, "context not accepted")
            if control & pdu.PDV_COMMAND:
                await self._on_command_fragment(context_id, control, value)
            else:
                await self._on_data_fragment(context_id, control, value)

    async def _on_command_fragment(self, context_id: int, control: int, value: bytes) -> None:
        if self._data is not None:
            raise AbortError(pdu.ABORT_UNEXPECTED_PDU, "command while a data set is due")
        if self._command_parts and context_id != self._message_context:
            raise AbortError(pdu.ABORT_UNEXPECTED_PDU, "command spans two contexts")
        self._message_context = context_id
        self._command_parts.append(value)
        if sum(map(len, self._command_parts)) > MAX_COMMAND_SET:
            raise AbortError(pdu.ABORT_INVALID_PDU_PARAMETER_VALUE, "command set too long")
        if control & pdu.PDV_LAST:
            command = dimse.parse_command(b"".join(self._command_parts))
            self._command_parts = []
            if command.has_data_set:
                self._command, self._data = command, []
                if command.command_field == dimse.C_STORE_RQ:
                    self._reserved = self.service.reserve_store()
            else:
                await self._dispatch(context_id, command, None)

    async def _on_data_fragment(self, context_id: int, control: int, value: bytes) -> None:
        if self._data is None or self._command is None:
            raise AbortError(pdu.ABORT_UNEXPECTED_PDU, "data set without a command")
        if context_id != self._message_context:
            raise AbortError(pdu.ABORT_UNEXPECTED_PDU, "data set on another context")
        self._data.append(value)
        if control & pdu.PDV_LAST:
            command, data = self._command, b"".join(self._data)
            self._command, self._data = None, None
            await self._dispatch(context_id, command, data)

    async def _dispatch(self, context_id: int, command: dimse.Command, data: bytes | None) -> None:
        field = command.command_field
        abstract_syntax, transfer_syntax = self.contexts[context_id]
        message_id = command.message_id
        if field == dimse.C_STORE_RQ:
            sop_class = command.uid(dimse.AffectedSOPClassUID)
            sop_instance = command.uid(dimse.AffectedSOPInstanceUID)
            self.busy = True
            failure: tuple[int, str | None] = (STORE_INTERNAL_FAILURE, "internal error")
            reserved, self._reserved = self._reserved, None
            try:
                status, comment = await self.service.on_c_store(
                    dataset=data or b"",
                    abstract_syntax=abstract_syntax,
                    transfer_syntax=transfer_syntax,
                    sop_class=sop_class,
                    sop_instance=sop_instance,
                    calling_ae=self.calling_ae,
                    address=self.address,
                    reservation=reserved,
                )
            except Exception as exc:  # the handler must answer; never raise into the layer
                logger.exception("C-STORE handler failed (%s)", type(exc).__name__)
                status, comment = failure
            finally:
                if reserved is not None:
                    reserved.release()
            answer = dimse.response(
                dimse.C_STORE_RSP,
                message_id=message_id,
                status=status,
                sop_class=sop_class,
                sop_instance=sop_instance,
                error_comment=comment,
            )
        elif field == dimse.C_ECHO_RQ:
            answer = dimse.response(
                dimse.C_ECHO_RSP,
                message_id=message_id,
                status=0x0000,
                sop_class=command.uid(dimse.AffectedSOPClassUID) or abstract_syntax,
            )
        elif field == dimse.N_ACTION_RQ:
            action_type_id = command.us(dimse.ActionTypeID)
            self.busy = True
            status = await self._call(
                lambda: self.service.on_n_action(
                    abstract_syntax=abstract_syntax,
                    action_type_id=action_type_id,
                    information=data,
                    transfer_syntax=transfer_syntax,
                    calling_ae=self.calling_ae,
                ),
                PROCESSING_FAILURE,
            )
            answer = dimse.response(
                dimse.N_ACTION_RSP,
                message_id=message_id,
                status=status,
                sop_class=command.uid(dimse.RequestedSOPClassUID),
                sop_instance=command.uid(dimse.RequestedSOPInstanceUID),
                action_type_id=action_type_id,
            )
        elif field == dimse.C_CANCEL_RQ or field & dimse.RESPONSE_BIT:
            return  # nothing to cancel (one operation at a time); responses are not expected
        else:
            answer = dimse.response(
                field | dimse.RESPONSE_BIT,
                message_id=message_id,
                status=dimse.UNRECOGNIZED_OPERATION,
                sop_class=command.uid(dimse.AffectedSOPClassUID)
                or command.uid(dimse.RequestedSOPClassUID),
            )
        self.busy = True
        self.writer.write(
            pdu.encode_p_data(context_id, answer, command=True, max_length=self.peer_max_length)
        )
        await self.writer.drain()
        self.busy = False
        if self.registry.stopping:
            raise AbortError(pdu.ABORT_REASON_NOT_SPECIFIED, "the SCP is stopping")

    async def _call(self, handler: Callable[[], T], failure: T) -> T:
        """Run a blocking handler in the thread pool; its failure becomes ``failure``."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.registry.executor, handler)
        except Exception as exc:  # the handler must answer; never raise into the layer
            logger.exception("DIMSE handler failed (%s)", type(exc).__name__)
            return failure

    async def _linger(self) -> None:
        """ARTIM after RJ or RP: wait for the peer to close the connection, then close."""
        try:
            await self.writer.drain()
            async with asyncio.timeout(self.config.acse_timeout_s):
                while await self.reader.read(65536):
                    pass
        except (TimeoutError, OSError, EOFError):
            pass

    def _abort(self, reason: int) -> None:
        if not self.writer.is_closing():
            self.writer.write(pdu.encode_abort(pdu.ABORT_SOURCE_PROVIDER, reason))
