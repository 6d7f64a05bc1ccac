"""Reading the header without pixel data: pydicom's good and malformed files, dates."""

from __future__ import annotations

import datetime as dt
import zlib
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cds.core.errors import MalformedInputError
from connectors.dicom.header import MissingUIDError, dicom_datetime, read_header
from tests.connectors.dicom.conftest import sample_file, split_file

PARIS = ZoneInfo("Europe/Paris")


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",  # explicit VR little endian
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "image_dfl.dcm",  # deflated
        "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline
        "JPGExtended.dcm",
        "SC_rgb_jpeg_gdcm.dcm",  # JPEG lossless
        "MR_small_jpeg_ls_lossless.dcm",
        "MR_small_jp2klossless.dcm",
        "MR_small_RLE.dcm",
        "waveform_ecg.dcm",
    ],
)
def test_reads_every_transfer_syntax(name: str) -> None:
    dataset, meta = split_file(sample_file(name))
    header = read_header(dataset, meta.TransferSyntaxUID)
    assert header.SOPInstanceUID == meta.MediaStorageSOPInstanceUID
    assert header.SOPClassUID == meta.MediaStorageSOPClassUID
    assert header.StudyInstanceUID and header.SeriesInstanceUID


def test_ct_attributes_and_offset() -> None:
    dataset, meta = split_file(sample_file("CT_small.dcm"))
    header = read_header(dataset, meta.TransferSyntaxUID)
    assert header.Modality == "CT"
    assert header.SeriesNumber == 1
    # CT_small carries TimezoneOffsetFromUTC -0500: it wins over the site zone.
    assert header.study_datetime(PARIS) == dt.datetime(
        2004, 1, 19, 7, 27, 30, tzinfo=dt.timezone(-dt.timedelta(hours=5))
    )


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("MR_truncated.dcm", MalformedInputError),  # pixel data cut short
        ("rtplan_truncated.dcm", MalformedInputError),
        ("badVR.dcm", MalformedInputError),  # NumberOfFrames "1A" is no IS
        ("JPEGLSNearLossless_08.dcm", MissingUIDError),  # no StudyInstanceUID
    ],
)
def test_malformed_files_cannot_be_understood(name: str, error: type[Exception]) -> None:
    dataset, meta = split_file(sample_file(name))
    with pytest.raises(error):
        read_header(dataset, meta.TransferSyntaxUID)


def test_explicit_bytes_declared_implicit_are_refused() -> None:
    # no_meta.dcm is CT_small's explicit VR data set without File Meta: a sender that
    # declares it implicit VR (the default for files without meta) sends garbage.
    body = sample_file("no_meta.dcm").read_bytes()
    with pytest.raises(MalformedInputError):
        read_header(body, "1.2.840.10008.1.2")


def test_deflated_garbage_is_refused() -> None:
    with pytest.raises(MalformedInputError):
        read_header(b"not deflated at all", "1.2.840.10008.1.2.1.99")
    garbage = zlib.compress(b"\x08\x00" * 7)[2:-4]
    with pytest.raises(MalformedInputError):
        read_header(garbage, "1.2.840.10008.1.2.1.99")


def test_local_time_uses_the_site_zone() -> None:
    value = dicom_datetime("20240131", "081500", None, PARIS)
    assert value == dt.datetime(2024, 1, 31, 7, 15, tzinfo=dt.UTC)
    assert dicom_datetime("20240131", "08:15:00.5", None, ZoneInfo("UTC")) == dt.datetime(
        2024, 1, 31, 8, 15, 0, 500000, tzinfo=dt.UTC
    )
    assert dicom_datetime("2024013", "0815", None, PARIS) is None
    assert dicom_datetime("20240230", "0815", None, PARIS) is None
    assert dicom_datetime("20240131", "xx", None, PARIS) is None
    assert dicom_datetime("20240131", None, None, PARIS) == dt.datetime(
        2024, 1, 30, 23, 0, tzinfo=dt.UTC
    )


@given(
    st.datetimes(min_value=dt.datetime(1900, 1, 1), max_value=dt.datetime(2100, 1, 1)).map(
        lambda d: d.replace(microsecond=0)
    ),
    st.integers(min_value=-12 * 60, max_value=14 * 60).map(lambda m: m - m % 15),
)
def test_datetime_with_offset_round_trips(moment: dt.datetime, offset_min: int) -> None:
    sign = "-" if offset_min < 0 else "+"
    offset = f"{sign}{abs(offset_min) // 60:02d}{abs(offset_min) % 60:02d}"
    parsed = dicom_datetime(
        moment.strftime("%Y%m%d"), moment.strftime("%H%M%S"), offset, ZoneInfo("UTC")
    )
    zone = dt.timezone(dt.timedelta(minutes=offset_min))
    assert parsed == moment.replace(tzinfo=zone)
    assert parsed is not None and parsed.tzinfo is not None
