"""Association negotiation as the acceptor (PS3.8 §7.1, §9.3.2 to §9.3.4; PS3.7 Annex D).

Pure: an :class:`~.pdu.AssociateRequest` and the acceptor's configuration in, either a
:class:`Rejection` (the A-ASSOCIATE-RJ result, source and reason) or an
:class:`Acceptance` (one result per proposed presentation context) out.

* Protocol version 1 (bit 0) and the DICOM Application Context Name are required.
* The called AE title must be ours (reason 7, "called AE title not recognised"); the
  calling AE title must be admitted (reason 3, "calling AE title not recognised").
* Too many associations: transient, "local limit exceeded" (PS3.8 §9.3.4).
* Each presentation context: its abstract syntax must be supported (else result 3), and
  the first syntax of the acceptor's preference list that the requestor proposed is
  chosen (none: result 4). SCP/SCU Role Selection proposals get no reply, so the
  default roles apply (the requestor is the SCU, PS3.7 D.3.3.4).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from connectors.dicom.ul import pdu


@dataclass(frozen=True, slots=True)
class AcceptorConfig:
    """What the acceptor supports and its limits.

    Attributes:
        ae_title: our AE title; the called AE title must match it (spaces stripped).
        max_pdu_size: our Maximum Length: the longest P-DATA-TF body accepted, bytes.
        max_associations: simultaneous associations; more are rejected (transient).
        abstract_syntaxes: SOP classes accepted.
        transfer_syntax_preference: transfer syntaxes accepted, most preferred first.
        implementation_class_uid / implementation_version_name: sent in the AC.
        acse_timeout_s: ARTIM (PS3.8 §9.1.5): the wait for an A-ASSOCIATE-RQ after the
            connection opens, and for the peer to close after release or rejection.
            Defaults to 30 s.
        network_timeout_s: longest silence on an established association, seconds.
            Defaults to 300 s.
        tls_handshake_timeout_s: longest TLS handshake. Defaults to 10 s.
    """

    ae_title: str
    max_pdu_size: int
    max_associations: int
    abstract_syntaxes: frozenset[str]
    transfer_syntax_preference: tuple[str, ...]
    implementation_class_uid: str
    implementation_version_name: str = ""
    acse_timeout_s: float = 30.0
    network_timeout_s: float = 300.0
    tls_handshake_timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class Rejection:
    """An A-ASSOCIATE-RJ to send (PS3.8 §9.3.4)."""

    result: int
    source: int
    reason: int
    why: str

    def encode(self) -> bytes:
        return pdu.encode_associate_rj(self.result, self.source, self.reason)


@dataclass(frozen=True, slots=True)
class Acceptance:
    """An A-ASSOCIATE-AC to send and the contexts it accepts.

    Attributes:
        results: one per proposed context, in the RQ's order.
        contexts: accepted context ID -> (abstract syntax, transfer syntax).
    """

    results: tuple[pdu.PresentationContextResult, ...]
    contexts: dict[int, tuple[str, str]]


def negotiate(
    request: pdu.AssociateRequest,
    config: AcceptorConfig,
    *,
    admits_calling_ae: Callable[[str], bool],
    associations: int,
) -> Rejection | Acceptance:
    """Accept or reject ``request``.

    Args:
        request: the parsed A-ASSOCIATE-RQ.
        config: the acceptor's configuration.
        admits_calling_ae: the calling AE title allow-list.
        associations: associations established now, this one not included.
    """
    if not request.protocol_version & 1:
        return Rejection(
            pdu.RJ_PERMANENT,
            pdu.RJ_SOURCE_ACSE,
            pdu.RJ_ACSE_PROTOCOL_VERSION_NOT_SUPPORTED,
            "protocol version not supported",
        )
    if request.application_context != pdu.APPLICATION_CONTEXT_NAME:
        return Rejection(
            pdu.RJ_PERMANENT,
            pdu.RJ_SOURCE_USER,
            pdu.RJ_USER_APPLICATION_CONTEXT_NOT_SUPPORTED,
            "application context name not supported",
        )
    if request.called_ae_title != config.ae_title.strip():
        return Rejection(
            pdu.RJ_PERMANENT,
            pdu.RJ_SOURCE_USER,
            pdu.RJ_USER_CALLED_AE_NOT_RECOGNIZED,
            "called AE title not recognised",
        )
    if not admits_calling_ae(request.calling_ae_title):
        return Rejection(
            pdu.RJ_PERMANENT,
            pdu.RJ_SOURCE_USER,
            pdu.RJ_USER_CALLING_AE_NOT_RECOGNIZED,
            "calling AE title not recognised",
        )
    if associations >= config.max_associations:
        return Rejection(
            pdu.RJ_TRANSIENT,
            pdu.RJ_SOURCE_PRESENTATION,
            pdu.RJ_PRESENTATION_LOCAL_LIMIT_EXCEEDED,
            "local limit exceeded",
        )
    results: list[pdu.PresentationContextResult] = []
    contexts: dict[int, tuple[str, str]] = {}
    for proposal in request.contexts:
        result, syntax = _negotiate_context(proposal, config)
        if result == pdu.CONTEXT_ACCEPTANCE and proposal.context_id not in contexts:
            contexts[proposal.context_id] = (proposal.abstract_syntax, syntax)
        results.append(pdu.PresentationContextResult(proposal.context_id, result, syntax))
    return Acceptance(tuple(results), contexts)


def _negotiate_context(
    proposal: pdu.PresentationContextProposal, config: AcceptorConfig
) -> tuple[int, str]:
    if proposal.abstract_syntax not in config.abstract_syntaxes:
        return pdu.CONTEXT_ABSTRACT_SYNTAX_NOT_SUPPORTED, proposal.transfer_syntaxes[0]
    proposed = set(proposal.transfer_syntaxes)
    for syntax in config.transfer_syntax_preference:
        if syntax in proposed:
            return pdu.CONTEXT_ACCEPTANCE, syntax
    return pdu.CONTEXT_TRANSFER_SYNTAXES_NOT_SUPPORTED, proposal.transfer_syntaxes[0]
