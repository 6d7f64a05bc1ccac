"""The MLLP listener with real peers on loopback: ``mllp_send``, raw sockets, fuzzing.

Runs on SQLite and PostgreSQL. Messages are made unique per test by renaming the facility
``GENHOSP`` (namespace and assigning authority), so tests on the shared PostgreSQL database
never see each other's rows.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from cds.core.db.models import (
    EventKind,
    EventStatus,
    PatientIdentifier,
    PatientMerge,
    SourceItem,
    TimelineEvent,
)
from cds.core.db.session import make_session_factory
from cds.core.runtime import EngineContext
from cds.core.settings import Settings
from connectors.hl7.handler import MessageHandler
from connectors.hl7.listener import MllpListener
from connectors.hl7.mllp import frame

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).parents[2] / "fixtures" / "hl7"
MLLP_SEND = str(Path(sys.executable).with_name("mllp_send"))
MSA = re.compile(rb"MSA\|(A[AER])\|([^|\r]*)")


class Peer:
    """A blocking MLLP client that reads whole ACK frames."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self._buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def ack(self) -> tuple[str, str]:
        while b"\x1c\r" not in self._buffer:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\x1c\r")
        match = MSA.search(message)
        assert match is not None, message
        return match.group(1).decode(), match.group(2).decode()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def facility() -> str:
    return f"HOSP{uuid.uuid4().hex[:8].upper()}"


@pytest.fixture
def listener(db_engine: Engine) -> Iterator[MllpListener]:
    settings = Settings(mllp_port=0, site_timezone="Europe/Paris", mllp_max_message_bytes=64_000)
    ctx = EngineContext(
        settings=settings, engine=db_engine, session_factory=make_session_factory(db_engine)
    )
    component = MllpListener(ctx, host="127.0.0.1", port=0)
    component.start()
    component.ctx = ctx  # type: ignore[attr-defined]
    yield component
    component.stop()


def message(name: str, facility: str) -> bytes:
    text = (FIXTURES / f"{name}.hl7").read_text().replace("GENHOSP", facility)
    return text.replace("\n", "\r").encode()


def events_of(factory: sessionmaker[Session], facility: str) -> list[TimelineEvent]:
    with factory() as session:
        return list(
            session.scalars(
                select(TimelineEvent)
                .join(SourceItem, SourceItem.id == TimelineEvent.source_item_id)
                .where(SourceItem.namespace.like(f"%^{facility}"))
            )
        )


def test_mllp_send_feed_over_one_connection(
    listener: MllpListener, facility: str, tmp_path: Path
) -> None:
    feed = tmp_path / "feed.hl7"
    feed.write_text((FIXTURES / "feed.hl7").read_text().replace("GENHOSP", facility))
    out = subprocess.run(
        [MLLP_SEND, "--file", str(feed), "--loose", "-p", str(listener.port), "127.0.0.1"],
        capture_output=True,
        timeout=120,
        check=True,
    )
    acks = MSA.findall(out.stdout)
    assert [code for code, _ in acks] == [b"AA"] * 9, out.stdout
    assert [ctrl for _, ctrl in acks][:3] == [b"ADT00003", b"ADT00001", b"LAB00001"]

    factory = listener.ctx.session_factory  # type: ignore[attr-defined]
    events = events_of(factory, facility)
    kinds = {e.kind for e in events}
    assert kinds == {
        EventKind.OBSERVATION,
        EventKind.DEMOGRAPHICS,
        EventKind.ENCOUNTER,
        EventKind.NOTE,
    }
    hemoglobin = sorted((e.status, e.value_num) for e in events if e.code == "718-7")
    assert hemoglobin == [(EventStatus.CURRENT, 10.9), (EventStatus.SUPERSEDED, 11.2)]
    # ADT^A40 merged the A04 patient (100555) into 100234: one timeline
    assert len({e.patient_id for e in events if e.status is EventStatus.CURRENT}) == 1
    with factory() as session:
        owners = set(
            session.scalars(
                select(PatientIdentifier.patient_id).where(PatientIdentifier.system == facility)
            )
        )
        merges = list(
            session.scalars(
                select(PatientMerge).where(PatientMerge.surviving_patient_id.in_(owners))
            )
        )
    assert len(owners) == 1 and len(merges) == 1
    encounter = [
        e for e in events if e.kind is EventKind.ENCOUNTER and e.status is EventStatus.CURRENT
    ]
    assert {e.code for e in encounter} == {"I", "O"}


def test_retransmissions_are_idempotent_and_reused_ids_are_rejected(
    listener: MllpListener, facility: str
) -> None:
    peer = Peer(listener.port)
    try:
        raw = message("oru_r01_vitals", facility)
        peer.send(frame(raw))
        assert peer.ack() == ("AA", "VIT00001")
        peer.send(frame(raw))
        assert peer.ack() == ("AA", "VIT00001")
        peer.send(frame(raw.replace(b"20240601094600", b"20240601094659")))  # new MSH-7 only
        assert peer.ack() == ("AA", "VIT00001")
        peer.send(frame(raw.replace(b"||112|", b"||113|")))
        assert peer.ack() == ("AR", "VIT00001")
    finally:
        peer.close()
    factory = listener.ctx.session_factory  # type: ignore[attr-defined]
    assert len(events_of(factory, facility)) == 6


def test_partial_reads_pipelining_garbage_and_oversize(
    listener: MllpListener, facility: str
) -> None:
    peer = Peer(listener.port)
    try:
        framed = frame(message("oru_r01_labs", facility))
        for start in range(0, len(framed), 97):
            peer.send(framed[start : start + 97])
            time.sleep(0.001)
        assert peer.ack() == ("AA", "LAB00001")
        peer.send(
            b"garbage before a frame"
            + frame(message("mdm_t02_note", facility))
            + frame(message("adt_a01_admit", facility))
        )
        assert peer.ack() == ("AA", "DOC00001")
        assert peer.ack() == ("AA", "ADT00001")
        huge = message("adt_a08_update", facility) + b"\rNTE|1||" + b"x" * 70_000
        peer.send(frame(huge))
        assert peer.ack() == ("AR", "ADT00002")
        peer.send(frame(message("adt_a08_update", facility)))
        assert peer.ack() == ("AA", "ADT00002")
    finally:
        peer.close()


def test_unsupported_unparseable_and_invalid_messages(
    listener: MllpListener, facility: str
) -> None:
    peer = Peer(listener.port)
    try:
        peer.send(
            frame(message("oru_r01_labs", facility).replace(b"ORU^R01^ORU_R01", b"SIU^S12^SIU_S12"))
        )
        assert peer.ack() == ("AR", "LAB00001")
        peer.send(frame(b"this is not HL7"))
        assert peer.ack() == ("AR", "")
        peer.send(frame(message("oru_r01_labs", facility).replace(b"||142|", b"||high|")))
        assert peer.ack() == ("AE", "LAB00001")
        peer.send(frame(message("oru_r01_labs", facility)))
        assert peer.ack() == ("AA", "LAB00001")
    finally:
        peer.close()


def test_storage_failure_answers_ae() -> None:
    def broken() -> Session:
        raise OperationalError("connect", {}, Exception("database down"))

    handler = MessageHandler(session_factory=broken, tz=ZoneInfo("UTC"))  # type: ignore[arg-type]
    match = MSA.search(handler.handle(message("oru_r01_vitals", "HOSPX"), "127.0.0.1"))
    assert match is not None and match.group(1) == b"AE"


segment_text = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=126) | st.sampled_from("|^~\\&\r"),
    max_size=200,
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.one_of(
        st.binary(max_size=300).map(lambda b: b.replace(b"\x0b", b"").replace(b"\x1c", b"")),
        segment_text.map(
            lambda t: ("MSH|^~\\&|FUZZ|F|||20240601||ORU^R01|F1|P|2.5.1\r" + t).encode()
        ),
        segment_text.map(lambda t: ("MSH|" + t).encode()),
    )
)
def test_fuzzed_frames_get_ar_or_ae_and_the_listener_stays_up(
    listener: MllpListener, payload: bytes
) -> None:
    peer = Peer(listener.port)
    try:
        peer.send(frame(payload))
        code, _ = peer.ack()
        assert code in ("AR", "AE")
    finally:
        peer.close()
    ok, _ = listener.ready()
    assert ok


def test_readiness_and_metrics(listener: MllpListener, facility: str) -> None:
    from prometheus_client import generate_latest

    peer = Peer(listener.port)
    try:
        peer.send(frame(message("oru_r01_vitals", facility)))
        peer.ack()
    finally:
        peer.close()
    ctx = listener.ctx  # type: ignore[attr-defined]
    assert ctx.readiness["mllp"]() == (True, f"listening on port {listener.port}")
    text = generate_latest(ctx.metrics).decode()
    assert 'cdsfusion_mllp_messages_total{ack="AA",message_type="ORU^R01"} 1.0' in text
