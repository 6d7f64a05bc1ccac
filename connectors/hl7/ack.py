"""General acknowledgments (HL7 v2.5.1 §2.9.2 original mode, §2.14.8 MSA, §2.14.5 ERR).

``AA`` only after the message is durably on the timeline; ``AE`` when it was understood but
could not be processed (missing or invalid values, storage unavailable: the sender may
retry); ``AR`` when it cannot be accepted (unreadable, unsupported type or version, a
control id reused for different content). Texts are fixed strings: an ACK never echoes
message content.
"""

from __future__ import annotations

import datetime as dt
import enum
import uuid

from connectors.hl7.er7 import Encoding
from connectors.hl7.parse import MessageHeader
from connectors.hl7.ts import format_ts


class AckCode(enum.StrEnum):
    """MSA-1 acknowledgment code (HL7 table 0008)."""

    ACCEPT = "AA"
    ERROR = "AE"
    REJECT = "AR"


def build_ack(
    *,
    code: AckCode,
    header: MessageHeader | None,
    now: dt.datetime,
    error_code: str | None = None,
    text: str = "",
) -> bytes:
    """The ACK message bytes (without MLLP framing).

    Args:
        code: AA, AE or AR.
        header: the acknowledged message's header; ``None`` when it could not be read (the
            ACK then names no control id and uses v2.5.1 defaults).
        now: the ACK's MSH-7.
        error_code: HL7 table 0357 code for the ERR segment (AE/AR only).
        text: a fixed, PHI-free explanation (MSA-3 and ERR-8).
    """
    enc = header.enc if header is not None else Encoding()
    f, c = enc.field, enc.component
    safe_text = _escape(text, enc)
    if header is not None:
        msh = [
            "MSH",
            enc.msh2,
            _escape(header.receiving_application, enc),
            _escape(header.receiving_facility, enc),
            _escape(header.sending_application, enc),
            _escape(header.sending_facility, enc),
            format_ts(now),
            "",
            f"ACK{c}{_escape(header.trigger_event, enc)}{c}ACK",
            uuid.uuid4().hex[:20],
            _escape(header.processing_id, enc) or "P",
            _escape(header.version, enc) or "2.5.1",
        ]
        original = _escape(header.control_id, enc)
    else:
        msh = ["MSH", enc.msh2, "CDSFUSION", "", "", "", format_ts(now), "", f"ACK{c}{c}ACK"]
        msh += [uuid.uuid4().hex[:20], "P", "2.5.1"]
        original = ""
    segments = [f.join(msh), f.join(["MSA", code.value, original, safe_text])]
    if code is not AckCode.ACCEPT:
        severity = "E"
        err_code = error_code or ("207" if code is AckCode.ERROR else "100")
        segments.append(
            f.join(["ERR", "", "", f"{err_code}{c}{safe_text}{c}HL70357", severity] + [""] * 3)
            + f"{f}{safe_text}"
        )
    return ("\r".join(segments) + "\r").encode("utf-8")


def _escape(value: str, enc: Encoding) -> str:
    out = value.replace(enc.escape, f"{enc.escape}E{enc.escape}")
    for char, code in (
        (enc.field, "F"),
        (enc.component, "S"),
        (enc.repetition, "R"),
        (enc.subcomponent, "T"),
    ):
        out = out.replace(char, f"{enc.escape}{code}{enc.escape}")
    return out.replace("\r", " ").replace("\n", " ")
