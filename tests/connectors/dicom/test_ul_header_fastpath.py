"""The fast header reader of the receive path agrees with the thorough (pydicom) one."""

from __future__ import annotations

import io
import random
import zlib
from pathlib import Path

import pydicom.data
import pytest
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian

from cds.core.errors import MalformedInputError
from connectors.dicom import header
from tests.connectors.dicom.conftest import split_file

TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"
Decoded = tuple[dict[str, str | None], dict[str, int | None]]


def little_endian_files() -> list[tuple[str, bytes, bool]]:
    """(name, data set bytes, implicit) of pydicom's little endian Part 10 test files (the
    ones installed with pydicom: get_testdata_files would try to download more)."""
    found = []
    for name in sorted(TEST_FILES.glob("*.dcm")):
        raw = Path(name).read_bytes()
        fp = io.BytesIO(raw)
        try:
            read_preamble(fp, False)
            meta = _read_file_meta_info(fp)
            syntax = UID(meta.TransferSyntaxUID)
            implicit, little = syntax.is_implicit_VR, syntax.is_little_endian
        except Exception:  # noqa: BLE001 - files without usable File Meta are not cases
            continue
        if not little:
            continue
        data = raw[fp.tell() :]
        if syntax == DeflatedExplicitVRLittleEndian:
            try:
                data = zlib.decompress(data, -zlib.MAX_WBITS)
            except zlib.error:
                continue
        found.append((Path(name).name, data, implicit))
    return found


FILES = little_endian_files()


def fast(data: bytes, implicit: bool) -> Decoded | None:
    try:
        return header._decode_fast(header._scan(data, implicit=implicit))
    except header._FallbackError:
        return None


def thorough(data: bytes, implicit: bool) -> Decoded | type[Exception]:
    try:
        return header._read_thorough(data, implicit=implicit, little=True)
    except MalformedInputError as exc:
        return type(exc)


def test_the_usual_instances_take_the_fast_path() -> None:
    names = {name for name, data, implicit in FILES if fast(data, implicit) is not None}
    assert {"CT_small.dcm", "MR_small_implicit.dcm", "JPEG2000.dcm"} <= names
    assert len(names) > len(FILES) // 2


@pytest.mark.parametrize(("name", "data", "implicit"), FILES, ids=[f[0] for f in FILES])
def test_fast_and_thorough_agree_on_pydicom_files(name: str, data: bytes, implicit: bool) -> None:
    quick = fast(data, implicit)
    if quick is not None:
        assert quick == thorough(data, implicit)


@pytest.mark.parametrize(
    ("name", "implicit"),
    [("CT_small.dcm", False), ("MR_small_implicit.dcm", True), ("JPEG2000.dcm", False)],
)
def test_fast_and_thorough_agree_on_damaged_data(name: str, implicit: bool) -> None:
    data, _ = split_file(TEST_FILES / name)
    rng = random.Random(20261122)
    taken = 0
    for _ in range(300):
        damaged = bytearray(data[: rng.randrange(len(data) + 1)])
        for _ in range(rng.randrange(4)):
            if damaged:
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        quick = fast(bytes(damaged), implicit)
        if quick is not None:
            taken += 1
            assert quick == thorough(bytes(damaged), implicit)
    assert taken > 0


def test_read_header_uses_both_and_keeps_the_verdicts() -> None:
    data, meta = split_file(TEST_FILES / "CT_small.dcm")
    syntax = str(meta.TransferSyntaxUID)
    assert header.read_header(data, syntax).SOPInstanceUID == meta.MediaStorageSOPInstanceUID
    with pytest.raises(MalformedInputError):
        header.read_header(data[:-10], syntax)  # truncated: the thorough reader refuses
