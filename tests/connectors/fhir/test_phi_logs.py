"""No name, MRN or note text in any log line while both feeds ingest (DEBUG level)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from cds.core.db.models import PayloadContent, SubscriptionChannel
from connectors.hl7.listener import MllpListener
from connectors.hl7.mllp import frame
from tests.connectors.fhir.conftest import Harness
from tests.connectors.hl7.test_listener import Peer

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).parents[2] / "fixtures"


def test_feeds_log_no_patient_data(
    make_harness: Callable[..., Harness], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    h = make_harness()
    sub = h.subscribe(
        SubscriptionChannel.BACKPORT, PayloadContent.FULL_RESOURCE, topic="http://example.org/t"
    )
    bundle = json.loads((FIXTURES / "fhir" / "synthea_patient_bundle.json").read_text())
    resources = [e["resource"] for e in bundle["entry"]]
    response = h.double.backport_event(str(sub.remote_id), resources)
    assert response is not None and response.status_code == 200
    listener = MllpListener(h.ctx, host="127.0.0.1", port=0)
    listener.start()
    try:
        peer = Peer(listener.port)
        for name in ("adt_a01_admit", "oru_r01_labs", "mdm_t02_note"):
            raw = (FIXTURES / "hl7" / f"{name}.hl7").read_bytes().replace(b"\n", b"\r")
            peer.send(frame(raw))
            assert peer.ack()[0] == "AA"
        peer.send(
            frame(b"MSH|^~\\&|A|B|||x||ORU^R01|C1|P|2.5.1\rPID|1||SECRETMRN77^^^X||Name^Hidden")
        )
        peer.ack()
        peer.close()
    finally:
        listener.stop()
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    forbidden = [
        patient["name"][0]["family"],
        patient["identifier"][1]["value"],
        "TESTPATIENT",
        "100234",
        "SECRETMRN77",
        "febrile",
        "Gram positive",
    ]
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert caplog.records
    for word in forbidden:
        assert word not in text, word
