"""FHIR normalization, pure: resources in, timeline items out (with Hypothesis)."""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cds.core.db.models import EventKind
from cds.core.errors import MalformedInputError, UnsupportedInputError
from connectors.fhir.dates import parse_datetime
from connectors.fhir.normalize import Origin, normalize_resource, pseudo_patient_ref
from connectors.fhir.notification import parse_notification
from connectors.fhir.resources import check_resource, split_reference

BASE = "https://ehr.example.org/fhir"
ORIGIN = Origin(
    base=BASE, tz=ZoneInfo("Europe/Paris"), received_at=dt.datetime(2024, 6, 1, tzinfo=dt.UTC)
)
FIXTURES = Path(__file__).parents[2] / "fixtures" / "fhir"


def obs(**extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "meta": {"versionId": "3"},
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": f"{BASE}/Patient/p1/_history/2"},
        "category": [{"coding": [{"code": "vital-signs"}]}],
        "effectiveDateTime": "2024-06-01T08:00:00+02:00",
    } | extra


@given(
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.sampled_from(["/min", "kg", "mm[Hg]"]),
)
def test_quantity_values_and_ucum_units_survive(value: float, unit: str) -> None:
    quantity = {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}
    item = normalize_resource(check_resource(obs(valueQuantity=quantity)), ORIGIN)
    assert item is not None
    (event,) = item.events
    assert (event.value_num, event.unit, event.category) == (value, unit, "vital-signs")
    assert item.patient_ref == pseudo_patient_ref(BASE, "p1")
    assert item.source.item_version == "3" and item.source.item_id == "Observation/o1"


@given(st.integers(1, 50))
def test_lineage_is_stable_across_versions(version: int) -> None:
    first = normalize_resource(obs(valueString="a", meta={"versionId": "1"}), ORIGIN)
    later = normalize_resource(obs(valueString="b", meta={"versionId": str(version)}), ORIGIN)
    assert first is not None and later is not None
    assert [e.lineage_key for e in first.events] == [e.lineage_key for e in later.events]


@given(st.datetimes(min_value=dt.datetime(1901, 1, 1), max_value=dt.datetime(2099, 1, 1)))
def test_zoneless_datetimes_are_site_local(when: dt.datetime) -> None:
    parsed = parse_datetime(when.replace(microsecond=0).isoformat(), ZoneInfo("Europe/Paris"))
    assert parsed is not None and parsed.tzinfo == ZoneInfo("Europe/Paris")
    assert parsed.replace(tzinfo=None) == when.replace(microsecond=0)


def test_entered_in_error_retracts_and_components_get_their_own_lineage() -> None:
    bp = obs(
        code={"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
        component=[
            {
                "code": {"coding": [{"system": "http://loinc.org", "code": c}]},
                "valueQuantity": {
                    "value": v,
                    "system": "http://unitsofmeasure.org",
                    "code": "mm[Hg]",
                },
            }
            for c, v in (("8480-6", 120), ("8462-4", 80))
        ],
        status="entered-in-error",
    )
    item = normalize_resource(check_resource(bp), ORIGIN)
    assert item is not None
    assert [e.lineage_key.rsplit("|", 1)[1] for e in item.events] == [
        "Observation/o1#component-0",
        "Observation/o1#component-1",
    ]
    assert all(e.retracts for e in item.events)


def test_document_reference_text_is_decoded_and_patient_never_named() -> None:
    text = "Progress note: febrile, lactate rising."
    doc = {
        "resourceType": "DocumentReference",
        "id": "d1",
        "status": "current",
        "subject": {"reference": "Patient/p1"},
        "date": "2024-06-01T10:00:00Z",
        "type": {
            "coding": [
                {"system": "http://loinc.org", "code": "11506-3", "display": "Progress note"}
            ]
        },
        "content": [
            {
                "attachment": {
                    "contentType": "text/plain; charset=utf-8",
                    "data": base64.b64encode(text.encode()).decode(),
                }
            }
        ],
    }
    item = normalize_resource(check_resource(doc), ORIGIN)
    assert item is not None and item.events[0].kind is EventKind.NOTE
    assert item.events[0].value_text == text and item.events[0].display == "Progress note"
    patient = {
        "resourceType": "Patient",
        "id": "p1",
        "name": [{"family": "Fictitious"}],
        "gender": "male",
        "birthDate": "1950",
    }
    demo = normalize_resource(check_resource(patient), ORIGIN)
    assert demo is not None and "Fictitious" not in repr(demo.events)
    assert demo.identifiers[0].value == "Patient/p1"


def test_bad_input_is_refused() -> None:
    with pytest.raises(UnsupportedInputError):
        check_resource({"resourceType": "Observation", "id": "o1"}, expected_type="Patient")
    with pytest.raises(MalformedInputError):
        check_resource({"resourceType": "Observation", "id": "bad id!"})
    with pytest.raises(UnsupportedInputError):
        check_resource({"resourceType": "Resource", "id": "x"})
    assert (
        normalize_resource(
            check_resource(
                {"resourceType": "Condition", "id": "c"} | {"subject": {"reference": "Patient/p"}}
            ),
            ORIGIN,
        )
        is None
    )
    with pytest.raises(MalformedInputError):
        normalize_resource(obs(subject={"display": "no reference"}), ORIGIN)


def test_references() -> None:
    assert split_reference("Patient/1", BASE) == ("Patient", "1")
    assert split_reference(f"{BASE}/Patient/1/_history/3", BASE) == ("Patient", "1")
    assert split_reference("https://other.example/fhir/Patient/1", BASE) is None
    assert split_reference("urn:uuid:0d1c", BASE) is None


def test_backport_r4_and_r4b_status_shapes() -> None:
    r4b = {
        "resourceType": "Bundle",
        "type": "subscription-notification",
        "entry": [
            {
                "resource": {
                    "resourceType": "SubscriptionStatus",
                    "type": "event-notification",
                    "subscription": {"reference": "Subscription/s1"},
                    "eventsSinceSubscriptionStart": "7",
                    "notificationEvent": [
                        {"eventNumber": "7", "focus": {"reference": "Observation/o1"}}
                    ],
                }
            }
        ],
    }
    note = parse_notification(r4b)
    assert note.numbers == (7,) and note.references == ("Observation/o1",)
    with pytest.raises(MalformedInputError):
        parse_notification({"resourceType": "Bundle", "type": "transaction", "entry": []})


def test_every_synthea_resource_normalizes() -> None:
    bundle = json.loads((FIXTURES / "synthea_patient_bundle.json").read_text())
    taken = [normalize_resource(check_resource(e["resource"]), ORIGIN) for e in bundle["entry"]]
    assert sum(item is not None for item in taken) == len(bundle["entry"]) - 7  # Conditions ignored
