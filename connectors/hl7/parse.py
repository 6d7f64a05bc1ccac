"""Decode, read the header of, and validate one HL7v2 message (hl7apy parses and validates).

The header is read first with the light ER7 reader so that even a message hl7apy rejects
gets an ACK that names its MSH-10. hl7apy then parses the whole message (tolerant
validation: unknown segments or versions, broken MSH and malformed structure are refused).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from cds.core.errors import MalformedInputError, UnsupportedInputError
from connectors.hl7.er7 import Encoding, Segment, split_segments

logger = logging.getLogger(__name__)

#: Segments the normalizers read; others (NTE, Z-segments, ...) are kept in the raw payload
#: but not handed to hl7apy, which keeps parsing cost proportional to what is used.
SEGMENTS_READ = frozenset(
    {"MSH", "EVN", "PID", "PD1", "PV1", "PV2", "MRG", "ORC", "OBR", "OBX", "TXA"}
)


class AcceptError(MalformedInputError):
    """The message cannot be accepted at all (AR): unreadable, bad MSH, bad structure.

    Attributes:
        code: HL7 table 0357 message error condition code (e.g. ``100`` segment sequence
            error, ``203`` unsupported version id, ``207`` application internal error).
    """

    def __init__(self, message: str, code: str = "100") -> None:
        super().__init__(message)
        self.code = code


class UnsupportedMessageError(UnsupportedInputError):
    """A well-formed message of a type or trigger this engine does not take (AR 200/201)."""

    def __init__(self, message: str, code: str = "200") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class MessageHeader:
    """What the ACK and the provenance need from MSH (HL7 v2.5.1 §2.14.9)."""

    enc: Encoding
    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    timestamp: str
    message_code: str
    trigger_event: str
    structure: str
    control_id: str
    processing_id: str
    version: str

    @property
    def namespace(self) -> str:
        """``MSH-3^MSH-4``: the provenance namespace of the sender's control ids."""
        return f"{self.sending_application}^{self.sending_facility}"

    @property
    def message_type(self) -> str:
        return f"{self.message_code}^{self.trigger_event}"


def decode(raw: bytes) -> str:
    """Message text: UTF-8 when it decodes, else Latin-1 (the common v2 legacy charset)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def read_header(text: str) -> MessageHeader:
    """Read MSH without validating the rest.

    Raises:
        AcceptError: no readable MSH, or no MSH-9 / MSH-10.
    """
    segments = split_segments(text.lstrip())
    if not segments or not segments[0].startswith("MSH"):
        raise AcceptError("message does not start with MSH", code="100")
    try:
        enc = Encoding.from_msh(segments[0])
    except ValueError as exc:
        raise AcceptError("MSH-1/MSH-2 encoding characters invalid", code="102") from exc
    msh = Segment.parse(segments[0], enc)
    header = MessageHeader(
        enc=enc,
        sending_application=msh.component(3),
        sending_facility=msh.component(4),
        receiving_application=msh.component(5),
        receiving_facility=msh.component(6),
        timestamp=msh.component(7),
        message_code=msh.component(9, 1),
        trigger_event=msh.component(9, 2),
        structure=msh.component(9, 3),
        control_id=msh.component(10),
        processing_id=msh.component(11) or "P",
        version=msh.component(12),
    )
    if not header.message_code:
        raise AcceptError("MSH-9 message type missing", code="101")
    if not header.control_id:
        raise AcceptError("MSH-10 message control id missing", code="101")
    if len(header.control_id) > 199:
        raise AcceptError("MSH-10 message control id too long", code="102")
    return header


def parse_segments(text: str, header: MessageHeader) -> list[Segment]:
    """Validate the message with hl7apy and return its segments for the normalizers.

    Raises:
        AcceptError: hl7apy refuses the message (structure, version, encoding).
    """
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.exceptions import HL7apyException
    from hl7apy.parser import parse_message

    lines = split_segments(text.lstrip())
    kept = [line for line in lines if line[:3] in SEGMENTS_READ]
    for line in lines:
        name = line.split(header.enc.field, 1)[0]
        if len(name) != 3 or not name.isalnum() or not name.isupper():
            raise AcceptError("invalid segment id", code="100")
    try:
        parse_message(
            "\r".join(kept),
            validation_level=VALIDATION_LEVEL.TOLERANT,
            find_groups=False,
        )
    except HL7apyException as exc:
        code = "203" if type(exc).__name__ == "UnsupportedVersion" else "100"
        logger.info("hl7apy refused message: %s", type(exc).__name__)
        raise AcceptError(f"message refused by the parser ({type(exc).__name__})", code) from exc
    except (ValueError, IndexError, KeyError, TypeError, AttributeError) as exc:
        logger.info("hl7apy failed on message: %s", type(exc).__name__)
        raise AcceptError("message cannot be parsed", code="100") from exc
    return [Segment.parse(line, header.enc) for line in kept]


def without_timestamp(text: str) -> str:
    """The message with MSH-7 blanked: a retransmission may carry a new send time."""
    segments = split_segments(text.lstrip())
    if not segments:
        return text
    first = segments[0]
    try:
        enc = Encoding.from_msh(first)
    except ValueError:
        return text
    fields = first.split(enc.field)
    if len(fields) > 6:
        fields[6] = ""
    return "\r".join([enc.field.join(fields), *segments[1:]])
