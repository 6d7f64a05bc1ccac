"""Read what the timeline and routing need from a received data set, without pixel data.

The data set is walked element by element in its transfer syntax (PS3.5 §7: explicit or
implicit VR, little or big endian; the deflated syntax of PS3.5 §A.5 is inflated first).
Pixel data and other large values are never loaded, let alone decompressed: the walk only
checks that every value's declared length fits the bytes received. A data set that fails
that walk, names an unknown VR, or carries an integer or decimal string that is not one
(PS3.5 §6.2 IS/DS) cannot be understood; the SCP answers ``Cxxx`` (PS3.4 B.2.3).

Two readers give the same answer. The fast one, a ``struct`` scan for the little endian
syntaxes, handles the usual data set: every element fits, explicit VRs are known and are
the dictionary's for the attributes read, undefined lengths only on sequences (scanned to
their delimiters, items included), the attributes read are ASCII in a default, Latin-1
or UTF-8 character set, integers are plain. Anything else, malformed input included, goes
to the thorough reader, which walks with pydicom and decodes through a pydicom Dataset;
its verdict stands. The fast one costs about a sixth of the thorough one's time.

Everything here is pure: bytes in, an :class:`InstanceHeader` out, so it is tested with
pydicom's own good and malformed files and with generated ones.
"""

from __future__ import annotations

import datetime as dt
import re
import struct
import zlib
from dataclasses import dataclass
from io import BytesIO
from typing import Any, cast
from zoneinfo import ZoneInfo

from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filereader import data_element_generator
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR

from cds.core.errors import MalformedInputError, UnsupportedInputError

_UNDEFINED_LENGTH = 0xFFFFFFFF
_DEFER_BYTES = 1024
_KNOWN_VRS = frozenset(str(vr) for vr in VR)
_IS = re.compile(rb"^ *[+-]?[0-9]{1,12} *$")
_DS = re.compile(rb"^ *[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)? *$")
#: Every value of a multi-valued IS or DS well-formed: a quick accept, the per-value check
#: (which also allows empty values) decides otherwise.
_IS_ALL = re.compile(rb" *[+-]?[0-9]{1,12} *(?:\\ *[+-]?[0-9]{1,12} *)*")
_DS_ALL = re.compile(
    rb" *[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)? *"
    rb"(?:\\ *[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)? *)*"
)
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_OFFSET = re.compile(r"^([+-])([0-9]{2})([0-9]{2})$")

#: Attributes read from each instance (PS3.3 keywords), with the column width they fit.
_TEXT_FIELDS: dict[str, int] = {
    "SOPClassUID": 64,
    "SOPInstanceUID": 64,
    "StudyInstanceUID": 64,
    "SeriesInstanceUID": 64,
    "PatientID": 255,
    "IssuerOfPatientID": 255,
    "AccessionNumber": 64,
    "StudyDate": 8,
    "StudyTime": 16,
    "TimezoneOffsetFromUTC": 5,
    "StudyDescription": 255,
    "Modality": 16,
    "BodyPartExamined": 64,
    "SeriesDescription": 255,
    "ViewPosition": 16,
}
_INT_FIELDS = ("SeriesNumber", "InstanceNumber")
_WANTED = {tag_for_keyword(k) for k in (*_TEXT_FIELDS, *_INT_FIELDS, "SpecificCharacterSet")}
#: Tag -> (keyword, the dictionary's VR as bytes) of the attributes read.
_WANTED_VR: dict[int, tuple[str, bytes]] = {
    tag: (keyword, str(dictionary_VR(tag)).encode("ascii"))
    for keyword in (*_TEXT_FIELDS, *_INT_FIELDS, "SpecificCharacterSet")
    if (tag := tag_for_keyword(keyword)) is not None
}
_KNOWN_VR_BYTES = frozenset(vr.encode("ascii") for vr in _KNOWN_VRS)
_LONG_VR_BYTES = frozenset(str(vr).encode("ascii") for vr in EXPLICIT_VR_LENGTH_32)
#: Character sets in which ASCII bytes are ASCII characters (PS3.5 §6.1.2.5).
_ASCII_SAFE_CHARSETS = frozenset({"", "ISO_IR 6", "ISO_IR 100", "ISO_IR 192"})
_PLAIN_INT = re.compile(rb"^ *[+-]?[0-9]{1,12} *$")
_EXPLICIT_LE = struct.Struct("<HH2sH")
_IMPLICIT_LE = struct.Struct("<HHI")
_U32 = struct.Struct("<I")
_ITEM_GROUP = 0xFFFE
_ITEM, _ITEM_END, _SEQUENCE_END = 0xE000, 0xE00D, 0xE0DD
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_PIXEL_DATA = 0x7FE00010
_NUMERIC_VRS = frozenset({b"IS", b"DS"})


class MissingUIDError(MalformedInputError):
    """A UID that places the instance (SOP, Study, Series Instance UID) is missing or invalid."""


@dataclass(frozen=True, slots=True)
class InstanceHeader:
    """The attributes of one instance that the timeline, routing and aligner use.

    Names are the PS3.3 keywords. Patient attributes are PHI: never log this object.
    Strings are stripped; empty ones are ``None``.
    """

    SOPClassUID: str
    SOPInstanceUID: str
    StudyInstanceUID: str
    SeriesInstanceUID: str
    PatientID: str | None = None
    IssuerOfPatientID: str | None = None
    AccessionNumber: str | None = None
    StudyDate: str | None = None
    StudyTime: str | None = None
    TimezoneOffsetFromUTC: str | None = None
    StudyDescription: str | None = None
    Modality: str | None = None
    BodyPartExamined: str | None = None
    SeriesNumber: int | None = None
    SeriesDescription: str | None = None
    InstanceNumber: int | None = None
    ViewPosition: str | None = None

    def study_datetime(self, site_zone: ZoneInfo) -> dt.datetime | None:
        """StudyDate and StudyTime as an aware datetime, or ``None`` without a valid date.

        The zone is TimezoneOffsetFromUTC when present (PS3.3 C.12.1), else the site's:
        DICOM dates and times without it are local time.
        """
        return dicom_datetime(self.StudyDate, self.StudyTime, self.TimezoneOffsetFromUTC, site_zone)


def dicom_datetime(
    date: str | None, time: str | None, offset: str | None, site_zone: ZoneInfo
) -> dt.datetime | None:
    """Combine DA, TM and a ``+HHMM`` offset (PS3.5 §6.2) into an aware datetime."""
    if not date or len(date) != 8 or not date.isdigit():
        return None
    try:
        day = dt.date(int(date[:4]), int(date[4:6]), int(date[6:8]))
        clock = _parse_tm(time or "")
    except ValueError:
        return None
    zone: dt.tzinfo = site_zone
    match = _OFFSET.match(offset or "")
    if match:
        sign = -1 if match.group(1) == "-" else 1
        minutes = int(match.group(2)) * 60 + int(match.group(3))
        if minutes <= 14 * 60:
            zone = dt.timezone(sign * dt.timedelta(minutes=minutes))
    return dt.datetime.combine(day, clock, tzinfo=zone)


def _parse_tm(value: str) -> dt.time:
    """TM is ``HH[MM[SS[.F{1,6}]]]``; the pre-2004 ``HH:MM:SS`` form is accepted too."""
    text = value.strip().replace(":", "")
    if not text:
        return dt.time(0, 0)
    whole, _, fraction = text.partition(".")
    if not whole.isdigit() or len(whole) not in (2, 4, 6) or (fraction and not fraction.isdigit()):
        raise ValueError("not a DICOM TM")
    hour = int(whole[0:2])
    minute = int(whole[2:4] or 0)
    second = min(int(whole[4:6] or 0), 59)  # TM allows a leap second 60
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    return dt.time(hour, minute, second, micro)


def read_header(dataset: bytes, transfer_syntax: str) -> InstanceHeader:
    """Walk ``dataset`` (encoded in ``transfer_syntax``) and return its header.

    Raises:
        UnsupportedInputError: the transfer syntax is not one pydicom knows.
        MissingUIDError: SOP Class/Instance, Study or Series Instance UID missing or invalid.
        MalformedInputError: the data set cannot be walked (truncated, unknown VR, bad IS/DS).
    """
    syntax = UID(transfer_syntax)
    if not syntax.is_transfer_syntax:
        raise UnsupportedInputError("unknown transfer syntax")
    stream = dataset
    if syntax == DeflatedExplicitVRLittleEndian:
        try:
            stream = zlib.decompress(dataset, -zlib.MAX_WBITS)
        except zlib.error as exc:
            raise MalformedInputError("deflated data set does not inflate") from exc
    implicit, little = syntax.is_implicit_VR, syntax.is_little_endian
    try:
        if not little:
            raise _FallbackError
        values, numbers = _decode_fast(_scan(stream, implicit=implicit))
    except _FallbackError:
        values, numbers = _read_thorough(stream, implicit=implicit, little=little)
    for name in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        uid = values[name]
        if not uid or not _UID.match(uid):
            raise MissingUIDError(f"{name} missing or not a UID")
    return InstanceHeader(
        SOPClassUID=str(values["SOPClassUID"]),
        SOPInstanceUID=str(values["SOPInstanceUID"]),
        StudyInstanceUID=str(values["StudyInstanceUID"]),
        SeriesInstanceUID=str(values["SeriesInstanceUID"]),
        PatientID=values["PatientID"],
        IssuerOfPatientID=values["IssuerOfPatientID"],
        AccessionNumber=values["AccessionNumber"],
        StudyDate=values["StudyDate"],
        StudyTime=values["StudyTime"],
        TimezoneOffsetFromUTC=values["TimezoneOffsetFromUTC"],
        StudyDescription=values["StudyDescription"],
        Modality=values["Modality"],
        BodyPartExamined=values["BodyPartExamined"],
        SeriesNumber=numbers["SeriesNumber"],
        SeriesDescription=values["SeriesDescription"],
        InstanceNumber=numbers["InstanceNumber"],
        ViewPosition=values["ViewPosition"],
    )


def _read_thorough(
    stream: bytes, *, implicit: bool, little: bool
) -> tuple[dict[str, str | None], dict[str, int | None]]:
    """The attributes read, by walking with pydicom and decoding through a Dataset."""
    raw = _walk(stream, implicit=implicit, little=little)
    ds = Dataset(cast(Any, raw))
    ds.set_original_encoding(implicit, little, None)
    try:
        values = {name: _text(ds, name, width) for name, width in _TEXT_FIELDS.items()}
        numbers = {name: _integer(ds, name) for name in _INT_FIELDS}
    except (ValueError, TypeError, LookupError, UnicodeError) as exc:
        raise MalformedInputError(f"attribute cannot be decoded ({type(exc).__name__})") from exc
    return values, numbers


class _FallbackError(Exception):
    """The fast reader is not sure: the thorough one decides."""


def _scan(stream: bytes, *, implicit: bool) -> dict[int, bytes]:
    """The values of the wanted attributes, scanning a little endian data set with struct.

    Raises:
        _FallbackError: anything but the usual, well-formed data set.
    """
    kept: dict[int, bytes] = {}
    end = _scan_elements(stream, 0, len(stream), implicit=implicit, kept=kept)
    if end != len(stream):
        raise _FallbackError
    return kept


def _scan_elements(  # noqa: PLR0912, PLR0915 - one loop, inlined for speed (docstring)
    buf: bytes, pos: int, end: int, *, implicit: bool, kept: dict[int, bytes] | None
) -> int:
    """Scan elements from ``pos`` to ``end`` (or to an item delimiter when ``end`` is -1);
    returns the position after them. Top-level values of wanted tags go to ``kept``.

    The element header is read inline (a data set has hundreds of elements; a call per
    element was half of the scan's time). An element header is: tag, then for explicit
    VRs the VR and a 2-byte length, or for the VRs of :data:`_LONG_VR_BYTES` two reserved
    zero bytes and a 4-byte length (PS3.5 §7.1.2); item tags (FFFE,xxxx) and implicit VR
    have a 4-byte length and no VR.
    """
    limit = len(buf) if end < 0 else end
    explicit_at, implicit_at, u32_at = (
        _EXPLICIT_LE.unpack_from,
        _IMPLICIT_LE.unpack_from,
        _U32.unpack_from,
    )
    long_vrs, known_vrs, wanted = _LONG_VR_BYTES, _KNOWN_VR_BYTES, _WANTED_VR
    is_all, ds_all, numeric = _IS_ALL.fullmatch, _DS_ALL.fullmatch, _NUMERIC_VRS
    while pos < limit:
        if pos + 8 > limit:
            raise _FallbackError
        vr = b""
        if implicit:
            group, element, length = implicit_at(buf, pos)
            start = pos + 8
        else:
            group, element, vr, length = explicit_at(buf, pos)
            if group == _ITEM_GROUP:
                group, element, length = implicit_at(buf, pos)
                vr = b""
                start = pos + 8
            elif vr in long_vrs:
                if pos + 12 > limit or length:
                    raise _FallbackError
                (length,) = u32_at(buf, pos + 8)
                start = pos + 12
            elif vr in known_vrs:
                start = pos + 8
            else:
                raise _FallbackError
        if group == _ITEM_GROUP:
            if end < 0 and element == _ITEM_END and length == 0:
                return start
            raise _FallbackError
        tag = group << 16 | element
        if length == _UNDEFINED_LENGTH:
            if vr == b"SQ" or (implicit and _is_sequence(tag)):
                pos = _scan_sequence(buf, start, limit, implicit=implicit)
            elif vr in (b"OB", b"OW") or (implicit and tag == _PIXEL_DATA):
                pos = _scan_encapsulated(buf, start, limit)
            else:
                raise _FallbackError
            continue
        pos = start + length
        if pos > limit:
            raise _FallbackError
        if vr in numeric:
            value = buf[start:pos]
            whole = is_all if vr == b"IS" else ds_all
            if not whole(value.rstrip(b"\x00 ")) and not _numbers_ok(vr, value):
                raise _FallbackError
        if kept is not None and tag in wanted:
            if vr and vr != wanted[tag][1]:
                raise _FallbackError
            kept[tag] = buf[start:pos]
    if end < 0:
        raise _FallbackError  # an undefined-length item without its delimiter
    return pos


def _numbers_ok(vr: bytes, value: bytes) -> bool:
    trimmed = value.rstrip(b"\x00 ")
    if (_IS_ALL if vr == b"IS" else _DS_ALL).fullmatch(trimmed):
        return True
    pattern = _IS if vr == b"IS" else _DS
    return all(
        not part.strip() or pattern.match(part) for part in value.rstrip(b"\x00 ").split(b"\\")
    )


def _is_sequence(tag: int) -> bool:
    """Implicit VR, undefined length: a sequence by the dictionary."""
    try:
        return str(dictionary_VR(tag)) == "SQ"
    except KeyError:
        return False


def _scan_sequence(buf: bytes, pos: int, limit: int, *, implicit: bool) -> int:
    """Scan an undefined-length sequence's items to its delimiter (PS3.5 §7.5)."""
    while pos + 8 <= limit:
        group, element, length = _IMPLICIT_LE.unpack_from(buf, pos)
        pos += 8
        if group != _ITEM_GROUP:
            break
        if element == _SEQUENCE_END and length == 0:
            return pos
        if element != _ITEM:
            break
        if length == _UNDEFINED_LENGTH:
            pos = _scan_elements(buf, pos, -1, implicit=implicit, kept=None)
        elif pos + length > limit:
            break
        else:
            pos = _scan_elements(buf, pos, pos + length, implicit=implicit, kept=None)
    raise _FallbackError


def _scan_encapsulated(buf: bytes, pos: int, limit: int) -> int:
    """Scan encapsulated pixel data (PS3.5 A.4): defined-length items, then the sequence
    delimiter, which must also be the first delimiter pattern in the bytes (pydicom's
    thorough walk searches for that pattern)."""
    delimiter = buf.find(_SEQUENCE_DELIMITER[:4], pos)
    if (
        delimiter < 0
        or delimiter + 8 > limit
        or buf[delimiter : delimiter + 8] != (_SEQUENCE_DELIMITER)
    ):
        raise _FallbackError
    while pos < delimiter:
        if pos + 8 > delimiter:
            raise _FallbackError
        group, element, length = _IMPLICIT_LE.unpack_from(buf, pos)
        if group != _ITEM_GROUP or element != _ITEM or length == _UNDEFINED_LENGTH:
            raise _FallbackError
        pos += 8 + length
    if pos != delimiter:
        raise _FallbackError
    return delimiter + 8


def _decode_fast(kept: dict[int, bytes]) -> tuple[dict[str, str | None], dict[str, int | None]]:
    """Decode the wanted values when they are plain ASCII in a compatible character set.

    Raises:
        _FallbackError: anything else (the thorough reader decodes it).
    """
    by_keyword: dict[str, bytes] = {}
    for tag, value in kept.items():
        if not value.isascii() or b"\x1b" in value:
            raise _FallbackError
        by_keyword[_WANTED_VR[tag][0]] = value
    charset = by_keyword.pop("SpecificCharacterSet", b"").decode("ascii").strip(" \x00")
    if charset not in _ASCII_SAFE_CHARSETS:
        raise _FallbackError
    values: dict[str, str | None] = {}
    for name, width in _TEXT_FIELDS.items():
        raw = by_keyword.get(name)
        if raw is None:
            values[name] = None
            continue
        first = raw.split(b"\\", 1)[0].decode("ascii")
        values[name] = first.strip().strip("\x00")[:width] or None
    numbers: dict[str, int | None] = {}
    for name in _INT_FIELDS:
        raw = by_keyword.get(name)
        if raw is None or not raw.rstrip(b" \x00"):
            numbers[name] = None
        elif _PLAIN_INT.match(raw.rstrip(b"\x00")):
            numbers[name] = int(raw.rstrip(b"\x00"))
        else:
            raise _FallbackError
    return values, numbers


def _walk(stream: bytes, *, implicit: bool, little: bool) -> dict[int, RawDataElement]:
    """Check every top-level element fits; keep the wanted ones (values of large ones skipped)."""
    fp = BytesIO(stream)
    size = len(stream)
    kept: dict[int, RawDataElement] = {}
    try:
        for element in data_element_generator(fp, implicit, little, defer_size=_DEFER_BYTES):
            if isinstance(element, DataElement):
                continue  # an undefined-length sequence, parsed to its delimiter already
            if element.length != _UNDEFINED_LENGTH and element.value_tell + element.length > size:
                raise MalformedInputError("data set truncated")
            if element.VR is not None and element.VR not in _KNOWN_VRS:
                raise MalformedInputError("unknown VR")
            if element.VR in ("IS", "DS") and element.value:
                _check_numbers(element.VR, element.value)
            if element.tag in _WANTED:
                kept[element.tag] = element
    except MalformedInputError:
        raise
    except Exception as exc:  # pydicom raises many types on garbage; all mean "cannot read"
        raise MalformedInputError(f"data set cannot be parsed ({type(exc).__name__})") from exc
    if fp.tell() != size:
        raise MalformedInputError("data set truncated")
    return kept


def _check_numbers(vr: str, value: bytes) -> None:
    pattern = _IS if vr == "IS" else _DS
    for part in value.rstrip(b"\x00 ").split(b"\\"):
        if part.strip() and not pattern.match(part):
            raise MalformedInputError(f"invalid {vr} value")


def _text(ds: Dataset, keyword: str, width: int) -> str | None:
    if keyword not in ds:
        return None
    value = ds[keyword].value
    if value is None:
        return None
    if not isinstance(value, str):  # multi-valued: keep the first value
        value = str(value[0]) if len(value) else ""
    text = value.strip().strip("\x00")
    return text[:width] or None


def _integer(ds: Dataset, keyword: str) -> int | None:
    if keyword not in ds:
        return None
    value = ds[keyword].value
    if value is None or value == "":
        return None
    if not isinstance(value, (int, str)):
        value = value[0] if len(value) else None
    return None if value is None else int(value)
