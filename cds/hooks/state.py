"""What decides a patient's card: the newest shown prediction and the newest bundle.

Read in one round trip (two ``LIMIT 1`` selects joined by ``UNION ALL``) on every call, so
a card always reflects what is stored now, whichever process wrote it.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, String, Uuid, bindparam, cast, literal, or_, select, union_all
from sqlalchemy.orm import Session

from cds.core.db.models import Bundle, BundleStatus, Patient, Prediction, PredictionStatus

#: Predictions a card shows (a superseded or cancelled one never).
SHOWN = (PredictionStatus.FINAL, PredictionStatus.INSUFFICIENT_DATA)


@dataclass(frozen=True)
class ShownState:
    """The newest shown prediction and the newest live bundle of one patient and task.

    Attributes:
        prediction_id, prediction_status: the newest prediction a card may show.
        prediction_anchor: its bundle's anchor time.
        bundle_id, bundle_status, bundle_anchor: the newest bundle not superseded.
    """

    prediction_id: uuid.UUID | None = None
    prediction_status: PredictionStatus | None = None
    prediction_anchor: dt.datetime | None = None
    bundle_id: uuid.UUID | None = None
    bundle_status: BundleStatus | None = None
    bundle_anchor: dt.datetime | None = None

    @property
    def shows_prediction(self) -> bool:
        """Whether the newest prediction is at least as recent as the newest bundle."""
        if self.prediction_id is None:
            return False
        if self.bundle_anchor is None or self.prediction_anchor is None:
            return True
        return self.prediction_anchor >= self.bundle_anchor


def _labelled(what: str, row_id: Any, status: Any) -> Select[Any]:
    """The union's columns: which row, its id, its status as text, the bundle's anchor."""
    return select(
        literal(what).label("what"),
        row_id.label("id"),
        cast(status, String(32)).label("status"),
        Bundle.anchor_at.label("anchor_at"),
    )


def _state_query() -> Select[Any]:
    """The statement, built once: bound ``patient`` and ``task_id``."""
    patient, task_id = bindparam("patient", type_=Uuid), bindparam("task_id", type_=String)
    merged = select(Patient.id).where(Patient.merged_into_id == patient).scalar_subquery()
    prediction = (
        _labelled("p", Prediction.id, Prediction.status)
        .join(Bundle, Bundle.id == Prediction.bundle_id)
        .where(
            or_(Prediction.patient_id == patient, Prediction.patient_id.in_(merged)),
            Prediction.task_id == task_id,
            Prediction.status.in_(SHOWN),
        )
        .order_by(Bundle.anchor_at.desc(), Prediction.created_at.desc())
        .limit(1)
        .subquery()
    )
    bundle = (
        _labelled("b", Bundle.id, Bundle.status)
        .where(
            or_(Bundle.patient_id == patient, Bundle.patient_id.in_(merged)),
            Bundle.task_id == task_id,
            Bundle.status != BundleStatus.SUPERSEDED,
        )
        .order_by(Bundle.anchor_at.desc(), Bundle.created_at.desc())
        .limit(1)
        .subquery()
    )
    return select(union_all(select(prediction), select(bundle)).subquery())


_STATE = _state_query()


def shown_state(session: Session, *, task_id: str, patient: uuid.UUID) -> ShownState:
    """The state of ``patient`` (and the patients merged into it) for ``task_id``.

    Runs on the session's connection as a Core statement built once: this is on every CDS
    Hooks call, where building and ORM-processing the statement would cost more than the
    query itself.
    """
    rows = session.connection().execute(_STATE, {"patient": patient, "task_id": task_id}).all()
    found: dict[str, object] = {}
    for what, row_id, status, anchor_at in rows:
        if what == "p":
            found.update(
                prediction_id=row_id,
                prediction_status=PredictionStatus(status),
                prediction_anchor=anchor_at,
            )
        else:
            found.update(
                bundle_id=row_id, bundle_status=BundleStatus(status), bundle_anchor=anchor_at
            )
    return ShownState(**found)  # type: ignore[arg-type]
