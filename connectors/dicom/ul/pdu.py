"""Upper Layer PDUs (PS3.8 §9.3): parse what an association requestor sends, encode replies.

Every PDU is a 6-byte header (type, reserved, 32-bit big-endian length) and a body of that
length. The acceptor side needs to *parse* A-ASSOCIATE-RQ, P-DATA-TF, A-RELEASE-RQ and
A-ABORT, and to *encode* A-ASSOCIATE-AC / -RJ, P-DATA-TF, A-RELEASE-RP and A-ABORT.
Items (PS3.8 §9.3.2.x) are type, reserved, 16-bit big-endian length, value.

Pure functions over ``bytes``; anything that does not follow the layout raises
:class:`PDUError` and the association is aborted (PS3.8 §9.3.1, "invalid PDU").
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

#: PDU types (PS3.8 Table 9-11 and §9.3.2 to §9.3.8).
A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07
PDU_TYPES = frozenset(range(0x01, 0x08))

#: Item types (PS3.8 §9.3.2.1, §9.3.2.2, Annex D; PS3.7 Annex D.3.3).
APPLICATION_CONTEXT_ITEM = 0x10
PRESENTATION_CONTEXT_RQ_ITEM = 0x20
PRESENTATION_CONTEXT_AC_ITEM = 0x21
ABSTRACT_SYNTAX_ITEM = 0x30
TRANSFER_SYNTAX_ITEM = 0x40
USER_INFORMATION_ITEM = 0x50
MAXIMUM_LENGTH_ITEM = 0x51
IMPLEMENTATION_CLASS_UID_ITEM = 0x52
ROLE_SELECTION_ITEM = 0x54
IMPLEMENTATION_VERSION_NAME_ITEM = 0x55

#: The DICOM Application Context Name (PS3.7 Annex A.2.1).
APPLICATION_CONTEXT_NAME = "1.2.840.10008.3.1.1.1"

#: Presentation context results (PS3.8 §9.3.3.2).
CONTEXT_ACCEPTANCE = 0
CONTEXT_USER_REJECTION = 1
CONTEXT_ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
CONTEXT_TRANSFER_SYNTAXES_NOT_SUPPORTED = 4

#: A-ASSOCIATE-RJ result, source and reason (PS3.8 §9.3.4).
RJ_PERMANENT = 1
RJ_TRANSIENT = 2
RJ_SOURCE_USER = 1
RJ_SOURCE_ACSE = 2
RJ_SOURCE_PRESENTATION = 3
RJ_USER_NO_REASON = 1
RJ_USER_APPLICATION_CONTEXT_NOT_SUPPORTED = 2
RJ_USER_CALLING_AE_NOT_RECOGNIZED = 3
RJ_USER_CALLED_AE_NOT_RECOGNIZED = 7
RJ_ACSE_PROTOCOL_VERSION_NOT_SUPPORTED = 2
RJ_PRESENTATION_TEMPORARY_CONGESTION = 1
RJ_PRESENTATION_LOCAL_LIMIT_EXCEEDED = 2

#: A-ABORT source and reason (PS3.8 §9.3.8).
ABORT_SOURCE_USER = 0
ABORT_SOURCE_PROVIDER = 2
ABORT_REASON_NOT_SPECIFIED = 0
ABORT_UNRECOGNIZED_PDU = 1
ABORT_UNEXPECTED_PDU = 2
ABORT_UNRECOGNIZED_PDU_PARAMETER = 4
ABORT_UNEXPECTED_PDU_PARAMETER = 5
ABORT_INVALID_PDU_PARAMETER_VALUE = 6

#: Message Control Header bits of a PDV (PS3.8 Annex E.2).
PDV_COMMAND = 0x01
PDV_LAST = 0x02

_HEADER = struct.Struct(">BxI")
_ITEM = struct.Struct(">BxH")
_PDV = struct.Struct(">IBB")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_FIXED_ASSOCIATE_FIELDS = 68  # version, reserved, called AE, calling AE, 32 reserved bytes
HEADER_SIZE = _HEADER.size
#: Bytes a P-DATA-TF PDU adds around one PDV's value: PDV length, context ID, control.
PDV_OVERHEAD = _PDV.size


class PDUError(ValueError):
    """The bytes are not a well-formed PDU or item (the association is aborted)."""


@dataclass(frozen=True, slots=True)
class PresentationContextProposal:
    """One Presentation Context Item of an A-ASSOCIATE-RQ (PS3.8 §9.3.2.2)."""

    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AssociateRequest:
    """The A-ASSOCIATE-RQ fields the acceptor uses (PS3.8 §9.3.2).

    Attributes:
        protocol_version: bit 0 set for version 1.
        called_ae_title / calling_ae_title: stripped of padding spaces.
        called_ae_raw / calling_ae_raw: the 16 bytes as received (echoed in the AC).
        application_context: the Application Context Name.
        contexts: the proposed presentation contexts, in order.
        max_length: the requestor's Maximum Length (0: no limit; PS3.8 Annex D.1).
        implementation_class_uid / implementation_version_name: PS3.7 Annex D.3.3.2/3.
        roles: SCP/SCU Role Selection proposals, SOP class -> (SCU role, SCP role).
    """

    protocol_version: int
    called_ae_title: str
    calling_ae_title: str
    called_ae_raw: bytes
    calling_ae_raw: bytes
    application_context: str
    contexts: tuple[PresentationContextProposal, ...]
    max_length: int = 0
    implementation_class_uid: str = ""
    implementation_version_name: str = ""
    roles: dict[str, tuple[int, int]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PresentationContextResult:
    """One Presentation Context Item of an A-ASSOCIATE-AC (PS3.8 §9.3.3.2)."""

    context_id: int
    result: int
    transfer_syntax: str


def read_header(header: bytes) -> tuple[int, int]:
    """PDU type and body length of a 6-byte PDU header (the type is not checked here:
    an unrecognised one is answered with its own A-ABORT reason, PS3.8 §9.3.8)."""
    pdu_type, length = _HEADER.unpack(header)
    return int(pdu_type), int(length)


def _text(value: bytes) -> str:
    """A UID or AE title value: ASCII, trailing NUL and spaces (padding) removed."""
    return value.decode("ascii", errors="replace").rstrip("\x00").strip()


def _items(body: bytes, start: int) -> list[tuple[int, bytes]]:
    """The (type, value) items from ``start`` to the end of ``body``."""
    items: list[tuple[int, bytes]] = []
    offset, size = start, len(body)
    while offset < size:
        if offset + 4 > size:
            raise PDUError("item header truncated")
        item_type, length = _ITEM.unpack_from(body, offset)
        end = offset + 4 + length
        if end > size:
            raise PDUError(f"item 0x{item_type:02X} longer than its PDU")
        items.append((item_type, body[offset + 4 : end]))
        offset = end
    return items


def parse_associate_rq(body: bytes) -> AssociateRequest:
    """Parse the body (after the 6-byte header) of an A-ASSOCIATE-RQ PDU.

    Raises:
        PDUError: a field or item does not fit, or a required item is missing.
    """
    if len(body) < _FIXED_ASSOCIATE_FIELDS:
        raise PDUError("A-ASSOCIATE-RQ shorter than its fixed fields")
    (version,) = _U16.unpack_from(body, 0)
    called_raw, calling_raw = body[4:20], body[20:36]
    application_context: str | None = None
    contexts: list[PresentationContextProposal] = []
    user: list[tuple[int, bytes]] = []
    for item_type, value in _items(body, _FIXED_ASSOCIATE_FIELDS):
        if item_type == APPLICATION_CONTEXT_ITEM:
            application_context = _text(value)
        elif item_type == PRESENTATION_CONTEXT_RQ_ITEM:
            contexts.append(_parse_context_rq(value))
        elif item_type == USER_INFORMATION_ITEM:
            user = _items(value, 0)
        # other item types are not defined for the RQ and are ignored (PS3.8 §9.3.1)
    if application_context is None:
        raise PDUError("A-ASSOCIATE-RQ without Application Context Item")
    if not contexts:
        raise PDUError("A-ASSOCIATE-RQ without Presentation Context Item")
    max_length, class_uid, version_name, roles = _parse_user_information(user)
    return AssociateRequest(
        protocol_version=version,
        called_ae_title=_text(called_raw),
        calling_ae_title=_text(calling_raw),
        called_ae_raw=called_raw,
        calling_ae_raw=calling_raw,
        application_context=application_context,
        contexts=tuple(contexts),
        max_length=max_length,
        implementation_class_uid=class_uid,
        implementation_version_name=version_name,
        roles=roles,
    )


def _parse_user_information(
    items: list[tuple[int, bytes]],
) -> tuple[int, str, str, dict[str, tuple[int, int]]]:
    """Maximum Length, Implementation Class UID and Version Name, role proposals."""
    max_length, class_uid, version_name = 0, "", ""
    roles: dict[str, tuple[int, int]] = {}
    for sub_type, value in items:
        if sub_type == MAXIMUM_LENGTH_ITEM:
            if len(value) != 4:
                raise PDUError("Maximum Length sub-item is not 4 bytes")
            (max_length,) = _U32.unpack(value)
        elif sub_type == IMPLEMENTATION_CLASS_UID_ITEM:
            class_uid = _text(value)
        elif sub_type == IMPLEMENTATION_VERSION_NAME_ITEM:
            version_name = _text(value)
        elif sub_type == ROLE_SELECTION_ITEM:
            if len(value) < 4:
                raise PDUError("SCP/SCU Role Selection sub-item truncated")
            (uid_length,) = _U16.unpack_from(value, 0)
            if len(value) != uid_length + 4:
                raise PDUError("SCP/SCU Role Selection sub-item length mismatch")
            roles[_text(value[2 : 2 + uid_length])] = (value[-2], value[-1])
    return max_length, class_uid, version_name, roles


def _parse_context_rq(value: bytes) -> PresentationContextProposal:
    if len(value) < 4:
        raise PDUError("Presentation Context Item truncated")
    abstract: str | None = None
    syntaxes: list[str] = []
    for sub_type, sub_value in _items(value, 4):
        if sub_type == ABSTRACT_SYNTAX_ITEM:
            if abstract is not None:
                raise PDUError("Presentation Context Item with two abstract syntaxes")
            abstract = _text(sub_value)
        elif sub_type == TRANSFER_SYNTAX_ITEM:
            syntaxes.append(_text(sub_value))
        else:
            raise PDUError(f"unexpected sub-item 0x{sub_type:02X} in a presentation context")
    if abstract is None or not syntaxes:
        raise PDUError("Presentation Context Item without abstract or transfer syntax")
    return PresentationContextProposal(value[0], abstract, tuple(syntaxes))


def _item(item_type: int, value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise PDUError("item value longer than 65535 bytes")
    return _ITEM.pack(item_type, len(value)) + value


def _pdu(pdu_type: int, body: bytes) -> bytes:
    return _HEADER.pack(pdu_type, len(body)) + body


def encode_associate_ac(
    request: AssociateRequest,
    results: list[PresentationContextResult],
    *,
    max_length: int,
    implementation_class_uid: str,
    implementation_version_name: str,
) -> bytes:
    """An A-ASSOCIATE-AC answering ``request`` (PS3.8 §9.3.3).

    The AE title fields are reserved in the AC and echo the RQ's bytes; the user
    information carries our Maximum Length, Implementation Class UID and Version Name.
    """
    parts = [
        _U16.pack(1),
        b"\x00\x00",
        request.called_ae_raw.ljust(16)[:16],
        request.calling_ae_raw.ljust(16)[:16],
        bytes(32),
        _item(APPLICATION_CONTEXT_ITEM, APPLICATION_CONTEXT_NAME.encode("ascii")),
    ]
    for result in results:
        syntax = _item(TRANSFER_SYNTAX_ITEM, result.transfer_syntax.encode("ascii"))
        parts.append(
            _item(
                PRESENTATION_CONTEXT_AC_ITEM,
                bytes((result.context_id, 0, result.result, 0)) + syntax,
            )
        )
    user = [
        _item(MAXIMUM_LENGTH_ITEM, _U32.pack(max_length)),
        _item(IMPLEMENTATION_CLASS_UID_ITEM, implementation_class_uid.encode("ascii")),
    ]
    if implementation_version_name:
        user.append(
            _item(IMPLEMENTATION_VERSION_NAME_ITEM, implementation_version_name.encode("ascii"))
        )
    parts.append(_item(USER_INFORMATION_ITEM, b"".join(user)))
    return _pdu(A_ASSOCIATE_AC, b"".join(parts))


def encode_associate_rj(result: int, source: int, reason: int) -> bytes:
    """An A-ASSOCIATE-RJ (PS3.8 §9.3.4)."""
    return _pdu(A_ASSOCIATE_RJ, bytes((0, result, source, reason)))


def encode_release_rp() -> bytes:
    """An A-RELEASE-RP (PS3.8 §9.3.7)."""
    return _pdu(A_RELEASE_RP, bytes(4))


def encode_abort(source: int = ABORT_SOURCE_USER, reason: int = 0) -> bytes:
    """An A-ABORT (PS3.8 §9.3.8); the reason is only significant for source 2."""
    return _pdu(A_ABORT, bytes((0, 0, source, reason)))


def parse_pdvs(body: bytes) -> list[tuple[int, int, bytes]]:
    """The PDVs of a P-DATA-TF body: (presentation context ID, control header, value).

    Raises:
        PDUError: no PDV, or a PDV length that does not fit (PS3.8 §9.3.5).
    """
    pdvs: list[tuple[int, int, bytes]] = []
    offset, size = 0, len(body)
    while offset < size:
        if offset + PDV_OVERHEAD > size:
            raise PDUError("PDV header truncated")
        length, context_id, control = _PDV.unpack_from(body, offset)
        end = offset + 4 + length
        if length < 2 or end > size:
            raise PDUError("PDV length does not fit its PDU")
        pdvs.append((context_id, control, body[offset + PDV_OVERHEAD : end]))
        offset = end
    if not pdvs:
        raise PDUError("P-DATA-TF without a PDV")
    return pdvs


def encode_p_data(context_id: int, payload: bytes, *, command: bool, max_length: int) -> bytes:
    """``payload`` as P-DATA-TF PDUs of one PDV each, none longer than ``max_length``.

    Args:
        context_id: the presentation context.
        payload: an encoded command set or data set.
        command: the PDVs carry a command (else a data set).
        max_length: the peer's Maximum Length (0: no limit; PS3.8 Annex D.1).
    """
    control = PDV_COMMAND if command else 0
    limit = max_length - PDV_OVERHEAD if max_length else len(payload)
    limit = max(limit, 1)
    if len(payload) <= limit:
        return (
            _HEADER.pack(P_DATA_TF, len(payload) + PDV_OVERHEAD)
            + _PDV.pack(len(payload) + 2, context_id, control | PDV_LAST)
            + payload
        )
    parts: list[bytes] = []
    view = memoryview(payload)
    for start in range(0, len(payload), limit):
        chunk = view[start : start + limit]
        last = PDV_LAST if start + limit >= len(payload) else 0
        parts.append(_HEADER.pack(P_DATA_TF, len(chunk) + PDV_OVERHEAD))
        parts.append(_PDV.pack(len(chunk) + 2, context_id, control | last))
        parts.append(bytes(chunk))
    return b"".join(parts)
