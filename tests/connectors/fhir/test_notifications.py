"""The real notification endpoints driven over HTTP by the FHIR server double.

Each test runs on SQLite and PostgreSQL (``db_engine``); items are told apart by the
double's base URL (a fresh port per test), so tests on the shared database do not interfere.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from cds.core.db.models import EventKind, EventStatus, PayloadContent, SubscriptionChannel
from connectors.fhir.monitor import HeartbeatMonitor
from connectors.fhir.receiver import FhirReceiver
from tests.connectors.fhir.conftest import Harness, observation, patient
from tests.doubles.fhir_server import FhirServerDouble

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).parents[2] / "fixtures" / "fhir"
MakeHarness = Callable[..., Harness]


def test_hapi_put_supersede_and_delete(make_harness: MakeHarness) -> None:
    h = make_harness()
    sub = h.subscribe(
        SubscriptionChannel.REST_HOOK, PayloadContent.FULL_RESOURCE, criteria=["Observation"]
    )
    remote = str(sub.remote_id)
    pat = patient()
    assert h.double.hapi_notify(remote, pat).status_code == 200
    obs = observation(pat["id"], value=4.1)
    response = h.double.hapi_notify(remote, obs)
    assert response.status_code == 200, response.text
    assert response.json()["resourceType"] == "OperationOutcome"

    obs["valueQuantity"]["value"] = 2.0  # version 2
    assert h.double.hapi_notify(remote, obs).status_code == 200
    lactate = [e for e in h.events() if e.code == "2524-7"]
    assert sorted((e.status.value, e.value_num) for e in lactate) == [
        ("current", 2.0),
        ("superseded", 4.1),
    ]
    assert all(e.patient_id is not None for e in lactate)
    assert lactate[0].effective_at == dt.datetime(2024, 6, 1, 7, 30, tzinfo=dt.UTC)  # Paris local

    assert h.double.hapi_delete(remote, "Observation", obs["id"]).status_code == 200
    current = [e for e in h.events(current_only=True) if e.code == "2524-7"]
    assert current == []
    assert h.double.hapi_delete(remote, "Observation", obs["id"]).status_code == 200  # idempotent


def test_hapi_empty_post_searches_the_server(make_harness: MakeHarness) -> None:
    h = make_harness()
    sub = h.subscribe(
        SubscriptionChannel.REST_HOOK,
        PayloadContent.EMPTY,
        criteria=["Observation?category=laboratory"],
    )
    pat = h.double.store(patient())
    response = h.double.hapi_notify(str(sub.remote_id), observation(pat["id"]))
    assert response.status_code == 200, response.text
    assert [e.code for e in h.events()] == ["2524-7"]
    assert any(kind == "search" for kind, _ in h.double.requests)


def test_observation_before_its_patient_is_held_then_attached(make_harness: MakeHarness) -> None:
    h = make_harness()
    sub = h.subscribe(
        SubscriptionChannel.REST_HOOK, PayloadContent.FULL_RESOURCE, criteria=["Observation"]
    )
    pat = patient()
    h.double.hapi_notify(str(sub.remote_id), observation(pat["id"]))
    assert [e.patient_id for e in h.events()] == [None]
    h.double.hapi_notify(str(sub.remote_id), pat)
    events = h.events()
    assert {e.kind for e in events} == {EventKind.OBSERVATION, EventKind.DEMOGRAPHICS}
    assert len({e.patient_id for e in events}) == 1 and events[0].patient_id is not None
    demographics = next(e for e in events if e.kind is EventKind.DEMOGRAPHICS)
    assert demographics.details == {"birthDate": "1961-07-04", "gender": "female"}


def test_medplum_signed_post_and_delete(make_harness: MakeHarness) -> None:
    h = make_harness()
    from tests.connectors.fhir.conftest import WEBHOOK_SECRET

    sub = h.subscribe(
        SubscriptionChannel.REST_HOOK,
        PayloadContent.FULL_RESOURCE,
        criteria=["Observation"],
        secret=WEBHOOK_SECRET,
    )
    remote = str(sub.remote_id)
    pat = patient()
    assert h.double.medplum_notify(remote, pat).status_code == 200
    obs = observation(pat["id"])
    bad = h.double.medplum_notify(remote, obs, tamper=True)
    assert bad.status_code == 401
    assert bad.json()["resourceType"] == "OperationOutcome"
    assert not [e for e in h.events() if e.code == "2524-7"]
    assert h.double.medplum_notify(remote, obs).status_code == 200
    assert h.double.medplum_delete(remote, "Observation", obs["id"]).status_code == 200
    lactate = [e for e in h.events() if e.lineage_key.endswith(f"Observation/{obs['id']}")]
    # the stored version and the retraction itself, neither current
    assert Counter(e.status for e in lactate) == Counter({EventStatus.RETRACTED: 2})


def test_backport_full_resource_duplicates_and_gap_recovered_by_events(
    make_harness: MakeHarness,
) -> None:
    h = make_harness()
    sub = h.subscribe(
        SubscriptionChannel.BACKPORT,
        PayloadContent.FULL_RESOURCE,
        topic="http://example.org/SubscriptionTopic/lab-results",
        criteria=["Observation?category=laboratory"],
    )
    remote = str(sub.remote_id)
    assert h.double.backport_handshake(remote).status_code == 200
    pat = patient()
    first = h.double.backport_event(remote, [pat, observation(pat["id"], code="2524-7")])
    assert first is not None and first.status_code == 200, first.text
    assert h.subscription(sub.endpoint_key).last_event_number == 2
    duplicate = h.double.backport_resend(remote)
    assert duplicate.status_code == 200 and "duplicate" in duplicate.text
    lost = h.double.backport_event(remote, [observation(pat["id"], code="2160-0")], deliver=False)
    assert lost is None
    after_gap = h.double.backport_event(remote, [observation(pat["id"], code="2345-7")])
    assert after_gap is not None and after_gap.status_code == 200
    codes = sorted(e.code for e in h.events() if e.code)
    assert codes == ["2160-0", "2345-7", "2524-7"]
    state = h.subscription(sub.endpoint_key)
    assert state.last_event_number == 4 and state.recover_since is None


def test_backport_gap_without_events_operation_falls_back_to_search(
    make_harness: MakeHarness,
) -> None:
    h = make_harness(FhirServerDouble(supports_events=False))
    sub = h.subscribe(
        SubscriptionChannel.BACKPORT,
        PayloadContent.FULL_RESOURCE,
        topic="http://example.org/SubscriptionTopic/lab-results",
        queries=["Observation?category=laboratory"],
    )
    remote = str(sub.remote_id)
    pat = patient()
    h.double.backport_event(remote, [pat])
    h.double.backport_event(remote, [observation(pat["id"], code="2160-0")], deliver=False)
    h.double.backport_event(remote, [observation(pat["id"], code="2345-7")])
    assert sorted(e.code for e in h.events() if e.code) == ["2160-0", "2345-7"]


def test_backport_id_only_and_empty_payloads_are_read_from_the_server(
    make_harness: MakeHarness,
) -> None:
    h = make_harness()
    topic = "http://example.org/SubscriptionTopic/lab-results"
    id_only = h.subscribe(
        SubscriptionChannel.BACKPORT, PayloadContent.ID_ONLY, topic=topic, queries=["Observation"]
    )
    pat = patient()
    response = h.double.backport_event(str(id_only.remote_id), [pat, observation(pat["id"])])
    assert response is not None and response.status_code == 200, response.text
    assert ("read", f"Patient/{pat['id']}") in h.double.requests
    empty = h.subscribe(
        SubscriptionChannel.BACKPORT, PayloadContent.EMPTY, topic=topic, queries=["Observation"]
    )
    response = h.double.backport_event(
        str(empty.remote_id), [observation(pat["id"], code="2345-7")]
    )
    assert response is not None and response.status_code == 200, response.text
    assert sorted(e.code for e in h.events() if e.code) == ["2345-7", "2524-7"]


def test_missed_heartbeats_trigger_status_and_events_recovery(make_harness: MakeHarness) -> None:
    h = make_harness()
    sub = h.subscribe(
        SubscriptionChannel.BACKPORT,
        PayloadContent.FULL_RESOURCE,
        topic="http://example.org/SubscriptionTopic/lab-results",
        heartbeat_period_s=10,
    )
    remote = str(sub.remote_id)
    pat = patient()
    h.double.backport_event(remote, [pat])
    h.double.backport_event(remote, [observation(pat["id"])], deliver=False)
    receiver = FhirReceiver(session_factory=h.session_factory, settings=h.ctx.settings)
    try:
        monitor = HeartbeatMonitor(receiver, missed=2)
        assert monitor.run_once(dt.datetime.now(dt.UTC)) == 0  # not overdue yet
        later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=25)
        assert monitor.run_once(later) == 1
    finally:
        receiver.close()
    assert [e.code for e in h.events() if e.kind is EventKind.OBSERVATION] == ["2524-7"]
    assert h.subscription(sub.endpoint_key).last_event_number == 2
    heartbeat = h.double.backport_heartbeat(remote)
    assert heartbeat.status_code == 200


def test_synthea_patient_bundle_lands_on_one_timeline(make_harness: MakeHarness) -> None:
    h = make_harness()
    sub = h.subscribe(
        SubscriptionChannel.BACKPORT,
        PayloadContent.FULL_RESOURCE,
        topic="http://example.org/SubscriptionTopic/encounter-complete",
    )
    bundle = json.loads((FIXTURES / "synthea_patient_bundle.json").read_text())
    resources = [e["resource"] for e in bundle["entry"]]
    response = h.double.backport_event(str(sub.remote_id), resources)
    assert response is not None and response.status_code == 200, response.text
    events = h.events()
    kinds = Counter(e.kind for e in events)
    assert kinds[EventKind.DEMOGRAPHICS] == 1
    assert kinds[EventKind.ENCOUNTER] == 3
    assert kinds[EventKind.DIAGNOSTIC_REPORT] == 8
    assert kinds[EventKind.NOTE] == 3
    assert kinds[EventKind.IMAGING_STUDY] == 2
    assert kinds[EventKind.OBSERVATION] >= 78
    assert len({e.patient_id for e in events}) == 1 and events[0].patient_id is not None
    notes = [e for e in events if e.kind is EventKind.NOTE]
    assert all(n.value_text and "\n" in n.value_text for n in notes)
    study = next(e for e in events if e.kind is EventKind.IMAGING_STUDY)
    assert study.details is not None and study.details["StudyInstanceUID"].startswith("2.25.")
    systolic = [e for e in events if e.code == "8480-6" and "#component-" in e.lineage_key]
    assert systolic and all(e.unit == "mm[Hg]" and e.category == "vital-signs" for e in systolic)
    assert all(e.details and e.details["panel"] == "85354-9" for e in systolic)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 400),
        (b'{"resourceType": "Banana", "id": "1"}', 400),
        (b'{"resourceType": "Observation", "id": "1", "status": 42}', 400),
        (b"[1, 2, 3]", 400),
    ],
)
def test_malformed_notifications_get_operation_outcome_and_store_nothing(
    make_harness: MakeHarness, body: bytes, status: int
) -> None:
    h = make_harness(fhir_webhook_secret=None)
    sub = h.subscribe(
        SubscriptionChannel.REST_HOOK, PayloadContent.FULL_RESOURCE, criteria=["Observation"]
    )
    response = httpx.post(f"{h.url}/fhir/notify/{sub.endpoint_key}", content=body)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/fhir+json")
    assert response.json()["resourceType"] == "OperationOutcome"
    assert h.items() == []


def test_wrong_type_unknown_subscription_oversized_and_foreign_bundle_are_refused(
    make_harness: MakeHarness,
) -> None:
    h = make_harness(fhir_notify_max_bytes=4096)
    sub = h.subscribe(
        SubscriptionChannel.REST_HOOK, PayloadContent.FULL_RESOURCE, criteria=["Observation"]
    )
    obs = observation("p1", oid="o1")
    base = f"{h.url}/fhir/notify/{sub.endpoint_key}"
    assert httpx.put(f"{base}/Patient/o1", json=obs).status_code == 400
    assert httpx.put(f"{base}/Observation/other", json=obs).status_code == 400
    assert httpx.post(f"{h.url}/fhir/notify/no-such-key", json=obs).status_code == 404
    huge = obs | {"note": [{"text": "x" * 10_000}]}
    too_large = httpx.put(f"{base}/Observation/o1", json=huge)
    assert too_large.status_code == 413 and too_large.json()["resourceType"] == "OperationOutcome"
    backport = h.subscribe(
        SubscriptionChannel.BACKPORT, PayloadContent.FULL_RESOURCE, topic="http://example.org/t"
    )
    bundle = h.double._bundle(str(backport.remote_id), "event-notification", [])
    bundle["entry"][0]["resource"]["parameter"][0]["valueReference"]["reference"] = (
        "Subscription/999"
    )
    bundle["entry"].append({"resource": obs})
    foreign = httpx.post(bundle.pop("_endpoint"), json=bundle)
    assert foreign.status_code == 404
    half_bad = h.double._bundle(str(backport.remote_id), "event-notification", [])
    half_bad["entry"] += [
        {"resource": patient()},
        {"resource": {"resourceType": "Observation", "id": "x"}},
    ]
    assert httpx.post(half_bad.pop("_endpoint"), json=half_bad).status_code == 400
    assert h.items() == []


def test_metrics_count_notifications(make_harness: MakeHarness) -> None:
    h = make_harness()
    sub = h.subscribe(
        SubscriptionChannel.REST_HOOK, PayloadContent.FULL_RESOURCE, criteria=["Observation"]
    )
    h.double.hapi_notify(str(sub.remote_id), patient())
    httpx.post(f"{h.url}/fhir/notify/unknown", content=b"{}")
    text = httpx.get(f"{h.url}/metrics").text
    assert 'cdsfusion_fhir_notifications_total{outcome="accepted"} 1.0' in text
    assert 'cdsfusion_fhir_notifications_total{outcome="404"} 1.0' in text
    assert 'cdsfusion_fhir_resources_total{result="stored"} 1.0' in text
