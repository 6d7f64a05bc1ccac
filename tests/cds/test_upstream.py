"""Results written upstream through the outbox: server down, then up; idempotent; visible."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from cds.core.db.models import OutboxState, Prediction, PredictionStatus
from cds.core.db.session import transaction
from cds.core.pipeline.jobs import RetryPolicy
from cds.core.pipeline.relay import OutboxRelay
from cds.core.repository.outbox import TOPIC_PREDICTION, enqueue
from cds.core.runtime import EngineContext
from cds.fhir.upstream import (
    UpstreamRejectedError,
    UpstreamUnavailableError,
    delivery_state,
    requeue_dead,
    upstream_handler,
)
from tests.cds.support import EHR_BASE, engine_context, seed_committed, settings_for
from tests.cds.upstream_double import UpstreamFhirDouble

pytestmark = pytest.mark.integration


@pytest.fixture
def upstream() -> Iterator[UpstreamFhirDouble]:
    double = UpstreamFhirDouble()
    yield double
    double.down()


@pytest.fixture
def ctx(migrated_sqlite: Engine, tmp_path: Path, upstream: UpstreamFhirDouble) -> EngineContext:
    settings = settings_for(
        migrated_sqlite,
        tmp_path,
        fhir_server_url=upstream.base,
        fhir_bearer_token="upstream-token",
        fhir_write_timeout_s=2,
    )
    return engine_context(migrated_sqlite, settings)


@pytest.fixture
def relay(ctx: EngineContext) -> Iterator[OutboxRelay]:
    relay = OutboxRelay(
        ctx,
        {TOPIC_PREDICTION: upstream_handler(ctx)},
        policy=RetryPolicy(max_attempts=3, base_delay_s=0.05, lease_s=60),
        poll_interval_s=0.05,
        sweep_interval_s=60,
    )
    relay.start()
    yield relay
    relay.stop()


def announce(ctx: EngineContext, prediction_id: uuid.UUID, reason: str) -> None:
    """What the worker writes when a prediction is created or superseded."""
    with transaction(ctx.session_factory) as session:
        enqueue(
            session=session,
            topic=TOPIC_PREDICTION,
            dedup_key=f"prediction|{prediction_id}|{reason}",
            aggregate_id=prediction_id,
            payload={"prediction_id": str(prediction_id), "reason": reason},
        )


def wait_for(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def deliveries(
    ctx: EngineContext, prediction_id: uuid.UUID
) -> list[tuple[str, OutboxState, int, str | None]]:
    with ctx.session_factory() as session:
        return [
            (d.reason, d.state, d.attempts, d.last_error)
            for d in delivery_state(session=session, prediction_id=prediction_id)
        ]


def test_delivery_survives_the_server_being_down_and_is_idempotent(
    ctx: EngineContext, relay: OutboxRelay, upstream: UpstreamFhirDouble, migrated_sqlite: Engine
) -> None:
    seeded = seed_committed(migrated_sqlite)
    pid = seeded.prediction_id
    announce(ctx, pid, "created")
    wait_for(lambda: deliveries(ctx, pid)[0][2] >= 1)
    reason, state, _, error = deliveries(ctx, pid)[0]
    assert (reason, state, error) == (
        "created",
        OutboxState.PENDING,
        UpstreamUnavailableError.__name__,
    )

    upstream.up()
    wait_for(lambda: deliveries(ctx, pid)[0][1] is OutboxState.DELIVERED)
    ra_key = f"RiskAssessment/{pid}"
    assert set(upstream.store) == {
        ra_key,
        f"Provenance/{pid}",
        upstream.store[ra_key]["performer"]["reference"],
    }
    ra = upstream.store[ra_key]
    assert ra["status"] == "final"
    # This server never sent the patient: a logical reference by MRN; inputs from the EHR
    # stay absolute at the EHR, the engine's own views absolute at the engine.
    assert ra["subject"]["identifier"]["value"] == seeded.mrn
    basis = [b["reference"] for b in ra["basis"]]
    assert any(b.startswith(f"{EHR_BASE}/Observation/hr-") for b in basis)
    assert any(b.startswith("https://cds.example.org/fhir/ImagingStudy/") for b in basis)
    assert all(auth == "Bearer upstream-token" for _, _, auth in upstream.requests)
    order = [path.split("/")[0] for method, path, _ in upstream.requests if method == "PUT"]
    assert order == ["Device", "RiskAssessment", "Provenance"]

    # Superseded later: the same ids are written again (PUT is idempotent), now amended.
    with transaction(ctx.session_factory) as session:
        prediction = session.get(Prediction, pid)
        assert prediction is not None
        prediction.status = PredictionStatus.SUPERSEDED
    announce(ctx, pid, "superseded")
    wait_for(
        lambda: (
            all(d[1] is OutboxState.DELIVERED for d in deliveries(ctx, pid))
            and len(deliveries(ctx, pid)) == 2
        )
    )
    assert upstream.store[ra_key]["status"] == "amended"
    assert upstream.versions[ra_key] == 2 and len(upstream.store) == 3


def test_rejected_writes_end_dead_visibly_and_can_be_requeued(
    ctx: EngineContext, relay: OutboxRelay, upstream: UpstreamFhirDouble, migrated_sqlite: Engine
) -> None:
    upstream.fail_with = 422
    upstream.up()
    pid = seed_committed(migrated_sqlite).prediction_id
    announce(ctx, pid, "created")
    wait_for(lambda: deliveries(ctx, pid)[0][1] is OutboxState.DEAD, timeout=30)
    assert deliveries(ctx, pid)[0][3] == UpstreamRejectedError.__name__
    upstream.fail_with = None
    with transaction(ctx.session_factory) as session:
        assert requeue_dead(session=session) == 1
    relay.wake()
    wait_for(lambda: deliveries(ctx, pid)[0][1] is OutboxState.DELIVERED)
    assert f"RiskAssessment/{pid}" in upstream.store


def test_not_enough_data_writes_nothing(
    ctx: EngineContext, relay: OutboxRelay, upstream: UpstreamFhirDouble, migrated_sqlite: Engine
) -> None:
    upstream.up()
    pid = seed_committed(migrated_sqlite, status=PredictionStatus.INSUFFICIENT_DATA).prediction_id
    announce(ctx, pid, "created")
    wait_for(lambda: deliveries(ctx, pid)[0][1] is OutboxState.DELIVERED)
    assert upstream.requests == []


def test_without_a_server_results_stay_local(migrated_sqlite: Engine, tmp_path: Path) -> None:
    ctx = engine_context(migrated_sqlite, settings_for(migrated_sqlite, tmp_path))
    handler = upstream_handler(ctx)
    pid = seed_committed(migrated_sqlite).prediction_id
    announce(ctx, pid, "created")
    with transaction(ctx.session_factory) as session:
        from sqlalchemy import select

        from cds.core.db.models import OutboxMessage

        message = session.scalar(select(OutboxMessage).where(OutboxMessage.aggregate_id == pid))
        assert message is not None
        handler(session, message)  # no server configured: nothing to do, nothing raised
