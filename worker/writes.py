"""Set-based writes of a scored batch: a few statements per batch, not per bundle.

One multi-row ``INSERT .. ON CONFLICT DO NOTHING .. RETURNING`` for the predictions (a
conflict is a bundle version this model already scored: idempotent), one for their outbox
announcements, one ``UPDATE`` for the bundles and one for the jobs. Superseding older
versions' predictions is per bundle and only for versions after the first.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Table, select, update
from sqlalchemy.orm import Session

from cds.core.db.models import (
    Bundle,
    BundleStatus,
    OutboxMessage,
    OutboxState,
    Prediction,
    PredictionStatus,
)
from cds.core.db.types import utcnow
from cds.core.db.upsert import insert_ignoring_conflicts
from cds.core.pipeline.jobs import finish_many
from cds.core.repository.outbox import TOPIC_PREDICTION


def supersede_older(session: Session, bundle: Bundle, newest_id: uuid.UUID) -> list[uuid.UUID]:
    """Mark the predictions of ``bundle``'s older versions superseded by ``newest_id``."""
    if bundle.version <= 1:
        return []
    older_bundles = select(Bundle.id).where(
        Bundle.task_id == bundle.task_id,
        Bundle.anchor_key == bundle.anchor_key,
        Bundle.version < bundle.version,
    )
    ids = list(
        session.scalars(
            select(Prediction.id).where(
                Prediction.bundle_id.in_(older_bundles),
                Prediction.status != PredictionStatus.SUPERSEDED,
            )
        )
    )
    if ids:
        session.execute(
            update(Prediction)
            .where(Prediction.id.in_(ids))
            .values(status=PredictionStatus.SUPERSEDED, superseded_by_id=newest_id)
            .execution_options(synchronize_session=False)
        )
    return ids


def announce(session: Session, changes: Sequence[tuple[uuid.UUID, str]]) -> None:
    """Outbox messages for (prediction id, reason) pairs; repeats are ignored."""
    if not changes:
        return
    now = utcnow()
    rows = [
        {
            "id": uuid.uuid4(),
            "topic": TOPIC_PREDICTION,
            "dedup_key": f"prediction|{pid}|{reason}",
            "aggregate_id": pid,
            "payload": {"prediction_id": str(pid), "reason": reason},
            "state": OutboxState.PENDING,
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        }
        for pid, reason in changes
    ]
    table = OutboxMessage.__table__
    assert isinstance(table, Table)
    session.execute(insert_ignoring_conflicts(session, table, ["dedup_key"]), rows)


def write_scored(
    session: Session,
    rows: Sequence[dict[str, Any]],
    job_ids: Sequence[uuid.UUID],
    *,
    bundles: Mapping[uuid.UUID, Bundle] | None = None,
) -> None:
    """Store a batch of prediction rows (column -> value) and finish their jobs.

    Args:
        session: the open transaction.
        rows: prediction rows, one per bundle.
        job_ids: the jobs they finish.
        bundles: the rows' bundles, when the caller has read them already (only their
            task, anchor key and version are used, which never change); the others are
            read here.
    """
    if not rows:
        return
    table = Prediction.__table__
    assert isinstance(table, Table)
    statement = insert_ignoring_conflicts(session, table, ["bundle_id", "model_version"])
    inserted = session.execute(statement.returning(table.c.id, table.c.bundle_id), list(rows)).all()
    bundle_ids = [row["bundle_id"] for row in rows]
    known = dict(bundles or {})
    unknown = [bundle_id for bundle_id in bundle_ids if bundle_id not in known]
    if unknown:
        known.update(
            (b.id, b) for b in session.scalars(select(Bundle).where(Bundle.id.in_(unknown)))
        )
    changes: list[tuple[uuid.UUID, str]] = []
    for prediction_id, bundle_id in inserted:
        changes.append((prediction_id, "created"))
        changes.extend(
            (old, "superseded") for old in supersede_older(session, known[bundle_id], prediction_id)
        )
    announce(session, changes)
    session.execute(
        update(Bundle)
        .where(Bundle.id.in_(bundle_ids), Bundle.status != BundleStatus.SUPERSEDED)
        .values(status=BundleStatus.SCORED)
        .execution_options(synchronize_session=False)
    )
    finish_many(session=session, job_ids=list(job_ids))
