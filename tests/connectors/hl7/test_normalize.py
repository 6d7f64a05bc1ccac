"""HL7v2 parsing, normalization and ACKs, without sockets or a database."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cds.core.db.models import EventKind
from connectors.hl7.ack import AckCode, build_ack
from connectors.hl7.er7 import Encoding, unescape
from connectors.hl7.normalize import Hl7Item, MessageContentError, normalize
from connectors.hl7.parse import (
    AcceptError,
    UnsupportedMessageError,
    decode,
    parse_segments,
    read_header,
    without_timestamp,
)
from connectors.hl7.ts import format_ts, parse_ts

FIXTURES = Path(__file__).parents[2] / "fixtures" / "hl7"
PARIS = ZoneInfo("Europe/Paris")
NOW = dt.datetime(2024, 6, 1, 12, tzinfo=dt.UTC)


def load(name: str) -> bytes:
    return (FIXTURES / f"{name}.hl7").read_bytes().replace(b"\n", b"\r")


def run(raw: bytes) -> Hl7Item:
    text = decode(raw)
    header = read_header(text)
    return normalize(
        header=header,
        segments=parse_segments(text, header),
        raw=raw,
        sender="10.0.0.1",
        received_at=NOW,
        tz=PARIS,
    )


def test_oru_labs_values_units_times_and_lineage() -> None:
    hl7 = run(load("oru_r01_labs"))
    events = {e.code: e for e in hl7.item.events}
    glucose = events["2345-7"]
    assert (glucose.value_num, glucose.unit, glucose.category) == (142.0, "mg/dL", "laboratory")
    assert glucose.code_system == "http://loinc.org"
    assert glucose.effective_at == dt.datetime(2024, 6, 1, 7, 30, tzinfo=dt.UTC)  # OBR-7, Paris
    assert glucose.lineage_key == "hl7|LIS^GENHOSP|FIL2002|2345-7|"
    assert events["5778-6"].value_text == "Amber"
    assert events["600-7"].value_text == "Staphylococcus aureus"
    assert events["600-7"].details == {
        "valueCode": "3092008",
        "valueSystem": "SCT",
        "valueType": "CWE",
        "resultStatus": "P",
    }
    assert (
        events["664-3"].value_text == "Gram positive cocci in clusters.\nReported to ward by phone."
    )
    assert hl7.item.source.namespace == "LIS^GENHOSP" and hl7.item.source.item_id == "LAB00001"
    assert [i.system for i in hl7.item.identifiers] == ["GENHOSP", "SSA"]


def test_vitals_are_recognised_by_loinc() -> None:
    hl7 = run(load("oru_r01_vitals"))
    assert {e.category for e in hl7.item.events} == {"vital-signs"}
    assert {e.unit for e in hl7.item.events} >= {"/min", "mm[Hg]", "Cel", "%"}


def test_adt_demographics_never_carry_the_name_and_encounter_has_times() -> None:
    hl7 = run(load("adt_a03_discharge"))
    demographics, encounter = hl7.item.events
    assert demographics.kind is EventKind.DEMOGRAPHICS
    assert demographics.details == {"birthDate": "1958-03-12", "gender": "male"}
    assert "TESTPATIENT" not in repr(hl7.item.events)
    assert encounter.kind is EventKind.ENCOUNTER and encounter.code == "I"
    assert encounter.effective_end == dt.datetime(2024, 6, 5, 12, 55, tzinfo=dt.UTC)
    assert encounter.lineage_key == "hl7|ADT^GENHOSP|encounter|V0001"


def test_a40_names_the_prior_identifiers_and_mdm_builds_one_note() -> None:
    merge = run(load("adt_a40_merge"))
    assert [(i.system, i.value) for i in merge.prior_identifiers] == [("GENHOSP", "100555")]
    note = run(load("mdm_t02_note")).item.events
    assert len(note) == 1 and note[0].kind is EventKind.NOTE
    assert note[0].value_text is not None and note[0].value_text.count("\n") == 1
    assert note[0].lineage_key == "hl7|EPIC^GENHOSP|document|DOC-7781"


@pytest.mark.parametrize(
    ("replace", "error", "code"),
    [
        ((b"ORU^R01^ORU_R01", b"SIU^S12^SIU_S12"), UnsupportedMessageError, "200"),
        ((b"ORU^R01^ORU_R01", b"ORU^R30^ORU_R30"), UnsupportedMessageError, "201"),
        ((b"||142|", b"||high|"), MessageContentError, "102"),
        ((b"100234^^^GENHOSP^MR~999-27-7436^^^SSA^SS", b""), MessageContentError, "101"),
    ],
)
def test_problems_map_to_hl7_error_codes(
    replace: tuple[bytes, bytes], error: type[Exception], code: str
) -> None:
    raw = load("oru_r01_labs").replace(*replace)
    with pytest.raises(error) as info:
        run(raw)
    assert info.value.code == code


def test_unreadable_messages_are_refused_at_the_header() -> None:
    with pytest.raises(AcceptError):
        read_header("PID|1||x")
    with pytest.raises(AcceptError):
        read_header("MSH|^~\\&|A|B|C|D|20240101||ORU^R01|")  # no MSH-10
    text = decode(load("oru_r01_labs").replace(b"\rPID|", b"\rP!D|"))
    with pytest.raises(AcceptError):
        parse_segments(text, read_header(text))


def test_ack_swaps_sender_and_echoes_control_id_without_content() -> None:
    header = read_header(decode(load("oru_r01_labs")))
    ack = build_ack(code=AckCode.ERROR, header=header, now=NOW, error_code="207", text="retry")
    segments = ack.decode().split("\r")
    assert segments[0].startswith("MSH|^~\\&|CDSFUSION|GENHOSP|LIS|GENHOSP|")
    assert "|ACK^R01^ACK|" in segments[0]
    assert segments[1] == "MSA|AE|LAB00001|retry"
    assert segments[2].startswith("ERR|||207^retry^HL70357|E")
    assert b"TESTPATIENT" not in ack


def test_retransmission_with_new_send_time_is_the_same_message() -> None:
    raw = decode(load("oru_r01_labs"))
    assert without_timestamp(raw) == without_timestamp(
        raw.replace("20240601101500", "20240601101599")
    )


@given(
    st.datetimes(
        min_value=dt.datetime(1900, 1, 1),
        max_value=dt.datetime(2100, 1, 1),
        timezones=st.sampled_from(
            [
                dt.UTC,
                dt.timezone(dt.timedelta(hours=-5)),
                dt.timezone(dt.timedelta(hours=5, minutes=30)),
            ]
        ),
    )
)
def test_ts_round_trips_to_the_second(when: dt.datetime) -> None:
    parsed = parse_ts(format_ts(when), PARIS)
    assert parsed == when.replace(microsecond=0)


@given(
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"),
        max_size=60,
    )
)
def test_unescape_inverts_the_ack_escaping(value: str) -> None:
    from connectors.hl7.ack import _escape

    assert unescape(_escape(value, Encoding()), Encoding()) == value
