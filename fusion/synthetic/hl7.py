"""HL7 v2.5 messages for a synthetic patient: ADT^A01, ORU^R01 and MDM^T02.

Segments are separated by ``\\r`` (HL7 v2.5 §2.5.2); numeric results are OBX with value
type NM, LOINC codes (coding system ``LN``) and UCUM units (``UCUM``); notes are MDM^T02
with a TXA segment and OBX value type TX.
"""

from __future__ import annotations

import datetime as dt
from itertools import groupby
from typing import TYPE_CHECKING

from fusion.inputs import ObsItem
from fusion.synthetic.codes import SPEC_BY_LOINC

if TYPE_CHECKING:
    from fusion.synthetic.cohort import SyntheticPatient

SENDING_APPLICATION = "CDSSYNTH"
SENDING_FACILITY = "SYNTHETIC"


def _ts(moment: dt.datetime) -> str:
    return moment.strftime("%Y%m%d%H%M%S")


def _escape(text: str) -> str:
    """Escape HL7 delimiters in free text (HL7 v2.5 §2.7)."""
    return (
        text.replace("\\", "\\E\\")
        .replace("|", "\\F\\")
        .replace("^", "\\S\\")
        .replace("&", "\\T\\")
        .replace("~", "\\R\\")
    )


def _msh(patient: SyntheticPatient, message_type: str, control_id: str) -> str:
    return (
        f"MSH|^~\\&|{SENDING_APPLICATION}|{SENDING_FACILITY}|CDSFUSION|CDSFUSION|"
        f"{_ts(patient.anchor)}||{message_type}|{control_id}|P|2.5"
    )


def _pid(patient: SyntheticPatient) -> str:
    sex = {"male": "M", "female": "F"}.get(patient.sex, "U")
    return (
        f"PID|1||{patient.patient_id}^^^{SENDING_FACILITY}^MR||"
        f"{patient.family_name}^{patient.given_name}||"
        f"{patient.birth_date.strftime('%Y%m%d')}|{sex}"
    )


def patient_to_hl7(patient: SyntheticPatient) -> list[str]:
    """The patient's admission, results and notes as HL7 v2.5 messages.

    Args:
        patient: A synthetic patient.

    Returns:
        One ADT^A01, one ORU^R01 per observation time (labs and vitals apart) and one
        MDM^T02 per note; each a string with ``\\r`` segment separators.
    """
    prefix = f"{patient.seed % 1000:03d}{patient.index:06d}"
    admitted = patient.anchor - dt.timedelta(hours=72)
    pv1 = "PV1|1|I|WARD1^101^1"
    messages = [
        "\r".join(
            [
                _msh(patient, "ADT^A01^ADT_A01", f"{prefix}A"),
                f"EVN|A01|{_ts(admitted)}",
                _pid(patient),
                pv1,
            ]
        )
    ]

    def key(obs: ObsItem) -> tuple[str, float]:
        return (obs.category, obs.relative_seconds)

    for n, ((category, seconds), group) in enumerate(groupby(patient.observations, key=key)):
        when = _ts(patient.absolute_time(seconds))
        panel = "LAB^Laboratory panel^L" if category == "laboratory" else "VS^Vital signs^L"
        segments = [
            _msh(patient, "ORU^R01^ORU_R01", f"{prefix}O{n}"),
            _pid(patient),
            f"OBR|1|{prefix}O{n}||{panel}|||{when}",
        ]
        for k, obs in enumerate(group, start=1):
            spec = SPEC_BY_LOINC[obs.code]
            segments.append(
                f"OBX|{k}|NM|{obs.code}^{spec.display}^LN||{obs.value:.{spec.decimals}f}|"
                f"{obs.unit}^^UCUM|||||F|||{when}"
            )
        messages.append("\r".join(segments))
    for n, note in enumerate(patient.notes):
        when = _ts(patient.absolute_time(note.relative_seconds))
        messages.append(
            "\r".join(
                [
                    _msh(patient, "MDM^T02^MDM_T02", f"{prefix}M{n}"),
                    f"EVN|T02|{when}",
                    _pid(patient),
                    pv1,
                    f"TXA|1|PN^Progress note|TX|{when}||||||||{prefix}D{n}||||||AU",
                    f"OBX|1|TX|11506-3^Progress note^LN||{_escape(note.text)}||||||F",
                ]
            )
        )
    return messages
