"""DIMSE command sets (PS3.7 §6.3, §9.3, §10.3; Annex E): parse requests, encode responses.

A command set is group 0000 only, always Implicit VR Little Endian (PS3.7 §6.3.1):
per element a 16-bit group, 16-bit element, 32-bit length and the value. The first
element is CommandGroupLength (0000,0000), the length of the rest. Elements here are
keyed by their element number; names are the PS3.7 Annex E keywords.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

#: Command Field values (PS3.7 Annex E.1).
C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_ECHO_RQ = 0x0030
C_ECHO_RSP = 0x8030
N_ACTION_RQ = 0x0130
N_ACTION_RSP = 0x8130
C_CANCEL_RQ = 0x0FFF
RESPONSE_BIT = 0x8000

#: Element numbers of group 0000 (PS3.7 Annex E.1).
CommandGroupLength = 0x0000
AffectedSOPClassUID = 0x0002
RequestedSOPClassUID = 0x0003
CommandField = 0x0100
MessageID = 0x0110
MessageIDBeingRespondedTo = 0x0120
Priority = 0x0700
CommandDataSetType = 0x0800
Status = 0x0900
ErrorComment = 0x0902
AffectedSOPInstanceUID = 0x1000
RequestedSOPInstanceUID = 0x1001
ActionTypeID = 0x1008

#: CommandDataSetType meaning "no data set" (PS3.7 E.1); any other value means one follows.
NO_DATA_SET = 0x0101
#: PS3.7 C.5.x: the operation is not one this SCP performs on the context.
UNRECOGNIZED_OPERATION = 0x0211
#: PS3.7 C.5.x: "Refused: SOP Class not supported".
SOP_CLASS_NOT_SUPPORTED = 0x0122

_ELEMENT = struct.Struct("<HHI")
_US = struct.Struct("<H")
_UL = struct.Struct("<I")
_LO_MAX = 64


class DIMSEError(ValueError):
    """The bytes are not a command set that can be decoded."""


class Command:
    """A received command set: raw element values by element number.

    Attributes:
        elements: element number -> value bytes (group 0000 only).
    """

    __slots__ = ("elements",)

    def __init__(self, elements: dict[int, bytes]) -> None:
        self.elements = elements

    def us(self, element: int) -> int | None:
        """An unsigned short (US) element, or ``None`` when absent."""
        value = self.elements.get(element)
        if value is None:
            return None
        if len(value) != 2:
            raise DIMSEError(f"(0000,{element:04X}) is not a US value")
        return int(_US.unpack(value)[0])

    def uid(self, element: int) -> str:
        """A UI element without its padding, ``""`` when absent."""
        value = self.elements.get(element)
        if value is None:
            return ""
        return value.decode("ascii", errors="replace").rstrip("\x00 ").strip()

    @property
    def command_field(self) -> int:
        value = self.us(CommandField)
        if value is None:
            raise DIMSEError("command set without CommandField")
        return value

    @property
    def message_id(self) -> int:
        return self.us(MessageID) or 0

    @property
    def has_data_set(self) -> bool:
        value = self.us(CommandDataSetType)
        if value is None:
            raise DIMSEError("command set without CommandDataSetType")
        return value != NO_DATA_SET


def parse_command(data: bytes) -> Command:
    """Decode an Implicit VR Little Endian command set.

    Raises:
        DIMSEError: an element does not fit, or an element outside group 0000.
    """
    elements: dict[int, bytes] = {}
    offset, size = 0, len(data)
    unpack = _ELEMENT.unpack_from
    while offset < size:
        if offset + 8 > size:
            raise DIMSEError("command element header truncated")
        group, element, length = unpack(data, offset)
        start = offset + 8
        offset = start + length
        if offset > size:
            raise DIMSEError("command element longer than the command set")
        if group != 0:
            raise DIMSEError("command set element outside group 0000")
        elements[element] = data[start:offset]
    return Command(elements)


def _ui(value: str) -> bytes:
    raw = value.encode("ascii", errors="replace")
    return raw + b"\x00" if len(raw) % 2 else raw


def _lo(value: str) -> bytes:
    raw = value[:_LO_MAX].encode("ascii", errors="replace")
    return raw + b" " if len(raw) % 2 else raw


def encode_command(elements: Iterable[tuple[int, bytes]]) -> bytes:
    """Encode (element number, value bytes) pairs, in ascending order, with the group length."""
    body = b"".join(
        _ELEMENT.pack(0, element, len(value)) + value for element, value in sorted(elements)
    )
    return _ELEMENT.pack(0, CommandGroupLength, 4) + _UL.pack(len(body)) + body


def response(
    command_field: int,
    *,
    message_id: int,
    status: int,
    sop_class: str = "",
    sop_instance: str = "",
    error_comment: str | None = None,
    action_type_id: int | None = None,
) -> bytes:
    """A response command set without a data set (PS3.7 §9.3, §10.3).

    Args:
        command_field: the response's Command Field (e.g. :data:`C_STORE_RSP`).
        message_id: MessageIDBeingRespondedTo.
        status: the Status (PS3.7 Annex C).
        sop_class / sop_instance: Affected SOP Class / Instance UID (omitted when empty).
        error_comment: Error Comment (0000,0902), at most 64 characters.
        action_type_id: Action Type ID of an N-ACTION-RSP.
    """
    elements = [
        (CommandField, _US.pack(command_field)),
        (MessageIDBeingRespondedTo, _US.pack(message_id & 0xFFFF)),
        (CommandDataSetType, _US.pack(NO_DATA_SET)),
        (Status, _US.pack(status & 0xFFFF)),
    ]
    if sop_class:
        elements.append((AffectedSOPClassUID, _ui(sop_class)))
    if sop_instance:
        elements.append((AffectedSOPInstanceUID, _ui(sop_instance)))
    if error_comment:
        elements.append((ErrorComment, _lo(error_comment)))
    if action_type_id is not None:
        elements.append((ActionTypeID, _US.pack(action_type_id)))
    return encode_command(elements)


def request(
    command_field: int,
    *,
    message_id: int,
    sop_class: str,
    sop_instance: str = "",
    has_data_set: bool = False,
    action_type_id: int | None = None,
    requested: bool = False,
) -> bytes:
    """A request command set (for tests and tools; the SCP only answers).

    Args:
        requested: use Requested SOP Class/Instance UID (N-ACTION) instead of Affected.
    """
    class_element = RequestedSOPClassUID if requested else AffectedSOPClassUID
    instance_element = RequestedSOPInstanceUID if requested else AffectedSOPInstanceUID
    elements = [
        (CommandField, _US.pack(command_field)),
        (MessageID, _US.pack(message_id)),
        (CommandDataSetType, _US.pack(0x0000 if has_data_set else NO_DATA_SET)),
        (class_element, _ui(sop_class)),
    ]
    if command_field == C_STORE_RQ:
        elements.append((Priority, _US.pack(0)))
    if sop_instance:
        elements.append((instance_element, _ui(sop_instance)))
    if action_type_id is not None:
        elements.append((ActionTypeID, _US.pack(action_type_id)))
    return encode_command(elements)
