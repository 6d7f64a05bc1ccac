"""The prediction list: filters, newest first, keyset pages.

Filters live in the server-side session (a patient identifier is PHI and never goes into
a URL): they are posted, resolved (an identifier becomes internal patient ids) and stored.
Pages are keyset pages on ``(created_at, id)`` served by ``ix_predictions_created_at_id``,
so page 1 000 costs what page 1 costs; the cursor in the URL is a prediction id.

Feedback outcome filters: ``accepted`` / ``overridden`` are CDS Hooks feedback (audit
entries ``cds.feedback`` whose entity is the card, whose uuid is the prediction id);
``agree`` / ``disagree`` are reviewer verdicts; ``none`` is neither.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, or_, select, tuple_
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.types import String

from cds.core.db.models import (
    AuditEntry,
    Patient,
    PatientIdentifier,
    Prediction,
    PredictionStatus,
    ReviewVerdict,
    Verdict,
)
from cds.fhir.levels import RiskLevels

RISK_LEVELS = ("high", "moderate", "low", "none")
FEEDBACK_OUTCOMES = ("accepted", "overridden", "agree", "disagree", "none")
CDS_FEEDBACK = "cds.feedback"


class uuid_text(FunctionElement[str]):  # noqa: N801 - reads as the SQL function it emits
    """A UUID column as its canonical text (``8-4-4-4-12`` lower-case hex) on both engines.

    Audit entries name entities by text; PostgreSQL stores UUIDs natively and SQLite as 32
    hex digits, so the comparison needs the text form built in SQL.
    """

    type = String()
    inherit_cache = True


@compiles(uuid_text, "postgresql")
def _uuid_text_pg(element: uuid_text, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CAST({compiler.process(element.clauses, **kw)} AS TEXT)"


@compiles(uuid_text)
def _uuid_text_default(element: uuid_text, compiler: SQLCompiler, **kw: Any) -> str:
    col = compiler.process(element.clauses, **kw)
    pieces = " || '-' || ".join(
        f"substr({col}, {start}, {length})"
        for start, length in ((1, 8), (9, 4), (13, 4), (17, 4), (21, 12))
    )
    return f"lower({pieces})"


@dataclass(frozen=True)
class ListFilters:
    """What the list is narrowed to; stored as JSON in the review session.

    Attributes:
        patient_ids: internal ids of the patient named by the identifier filter (with the
            patients merged into it); ``None``: no patient filter; empty: no match.
        date_from, date_to: prediction dates (UTC, inclusive), ISO ``YYYY-MM-DD``.
        task_id, model_version, status: exact matches.
        risk: ``high``, ``moderate``, ``low`` or ``none`` (no number).
        feedback: one of :data:`FEEDBACK_OUTCOMES`.
    """

    patient_ids: tuple[str, ...] | None = None
    date_from: str | None = None
    date_to: str | None = None
    task_id: str | None = None
    model_version: str | None = None
    status: str | None = None
    risk: str | None = None
    feedback: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        if self.patient_ids is not None:
            data["patient_ids"] = list(self.patient_ids)
        return {k: v for k, v in data.items() if v is not None}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> ListFilters:
        if not data:
            return cls()
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if known.get("patient_ids") is not None:
            known["patient_ids"] = tuple(str(v) for v in known["patient_ids"])
        return cls(**known)

    @property
    def active(self) -> bool:
        return bool(self.to_json())

    def audit_details(self) -> dict[str, Any]:
        """What the audit entry records: filter names and non-PHI values, patient ids."""
        return self.to_json()


def _date(value: str | None) -> dt.date | None:
    if not value:
        return None
    try:
        return dt.date.fromisoformat(value)
    except ValueError:
        return None


def parse_filters(form: Mapping[str, str], *, session: Session) -> ListFilters:
    """Filters from a posted form; the patient identifier is resolved here and dropped."""

    def choice(name: str, allowed: Sequence[str] | None = None) -> str | None:
        value = (form.get(name) or "").strip()[:128]
        if not value or (allowed is not None and value not in allowed):
            return None
        return value

    identifier = (form.get("patient_identifier") or "").strip()[:255]
    date_from, date_to = _date(form.get("date_from")), _date(form.get("date_to"))
    return ListFilters(
        patient_ids=patients_with_identifier(session=session, value=identifier)
        if identifier
        else None,
        date_from=date_from.isoformat() if date_from else None,
        date_to=date_to.isoformat() if date_to else None,
        task_id=choice("task_id"),
        model_version=choice("model_version"),
        status=choice("status", [s.value for s in PredictionStatus]),
        risk=choice("risk", RISK_LEVELS),
        feedback=choice("feedback", FEEDBACK_OUTCOMES),
    )


def patients_with_identifier(*, session: Session, value: str) -> tuple[str, ...]:
    """Internal ids of the patients holding identifier ``value`` (any system), and of the
    patients merged into them."""
    found = list(
        session.scalars(
            select(PatientIdentifier.patient_id).where(PatientIdentifier.value == value)
        )
    )
    merged = (
        list(session.scalars(select(Patient.id).where(Patient.merged_into_id.in_(found))))
        if found
        else []
    )
    return tuple(sorted({str(p) for p in [*found, *merged]}))


def _cds_feedback(outcome: str | None = None) -> ColumnElement[bool]:
    conditions = [
        AuditEntry.entity_id == uuid_text(Prediction.id),
        AuditEntry.action == CDS_FEEDBACK,
    ]
    if outcome is not None:
        conditions.append(AuditEntry.details["outcome"].as_string() == outcome)
    return exists(select(AuditEntry.id).where(*conditions))


def _verdict(verdict: Verdict | None = None) -> ColumnElement[bool]:
    conditions = [ReviewVerdict.prediction_id == Prediction.id]
    if verdict is not None:
        conditions.append(ReviewVerdict.verdict == verdict)
    return exists(select(ReviewVerdict.id).where(*conditions))


def _risk(risk: str | None, levels: RiskLevels) -> list[ColumnElement[bool]]:
    if risk == "high":
        return [Prediction.probability >= levels.high]
    if risk == "moderate":
        return [
            and_(Prediction.probability >= levels.moderate, Prediction.probability < levels.high)
        ]
    if risk == "low":
        return [Prediction.probability < levels.moderate]
    if risk == "none":
        return [Prediction.probability.is_(None)]
    return []


def _feedback(outcome: str | None) -> list[ColumnElement[bool]]:
    if outcome in ("accepted", "overridden"):
        return [_cds_feedback(outcome)]
    if outcome in ("agree", "disagree"):
        return [_verdict(Verdict(outcome))]
    if outcome == "none":
        return [~or_(_cds_feedback(), _verdict())]
    return []


def conditions(filters: ListFilters, levels: RiskLevels) -> list[ColumnElement[bool]]:
    """The WHERE clauses for ``filters``."""
    where: list[ColumnElement[bool]] = []
    if filters.patient_ids is not None:
        where.append(Prediction.patient_id.in_([uuid.UUID(p) for p in filters.patient_ids]))
    start, end = _date(filters.date_from), _date(filters.date_to)
    if start is not None:
        where.append(Prediction.created_at >= dt.datetime.combine(start, dt.time(), dt.UTC))
    if end is not None:
        until = dt.datetime.combine(end + dt.timedelta(days=1), dt.time(), dt.UTC)
        where.append(Prediction.created_at < until)
    if filters.task_id:
        where.append(Prediction.task_id == filters.task_id)
    if filters.model_version:
        where.append(Prediction.model_version == filters.model_version)
    if filters.status:
        where.append(Prediction.status == PredictionStatus(filters.status))
    where += _risk(filters.risk, levels) + _feedback(filters.feedback)
    return where


@dataclass(frozen=True)
class Page:
    """One page of the list: rows newest first, and cursors for the neighbours."""

    rows: list[Prediction]
    newer: uuid.UUID | None
    older: uuid.UUID | None


def list_query(
    filters: ListFilters,
    levels: RiskLevels,
    *,
    limit: int,
    after: tuple[dt.datetime, uuid.UUID] | None = None,
    before: tuple[dt.datetime, uuid.UUID] | None = None,
) -> Any:
    """The SELECT of one page (exposed so tests can EXPLAIN it)."""
    key = tuple_(Prediction.created_at, Prediction.id)
    query = select(Prediction).where(*conditions(filters, levels))
    if before is not None:
        return (
            query.where(key > tuple_(*before))
            .order_by(Prediction.created_at.asc(), Prediction.id.asc())
            .limit(limit)
        )
    if after is not None:
        query = query.where(key < tuple_(*after))
    return query.order_by(Prediction.created_at.desc(), Prediction.id.desc()).limit(limit)


def _cursor(
    session: Session, prediction_id: uuid.UUID | None
) -> tuple[dt.datetime, uuid.UUID] | None:
    if prediction_id is None:
        return None
    created = session.scalar(select(Prediction.created_at).where(Prediction.id == prediction_id))
    return (created, prediction_id) if created is not None else None


def list_page(
    *,
    session: Session,
    filters: ListFilters,
    levels: RiskLevels,
    page_size: int,
    after: uuid.UUID | None = None,
    before: uuid.UUID | None = None,
) -> Page:
    """One page of predictions matching ``filters``, older than ``after`` or newer than
    ``before`` (prediction ids from the previous page)."""
    after_key, before_key = _cursor(session, after), _cursor(session, before)
    if before_key is not None:
        rows = list(
            session.scalars(list_query(filters, levels, limit=page_size + 1, before=before_key))
        )
        more_newer = len(rows) > page_size
        rows = list(reversed(rows[:page_size]))
        return Page(
            rows, rows[0].id if more_newer and rows else None, rows[-1].id if rows else None
        )
    rows = list(session.scalars(list_query(filters, levels, limit=page_size + 1, after=after_key)))
    more_older = len(rows) > page_size
    rows = rows[:page_size]
    return Page(
        rows,
        rows[0].id if after_key is not None and rows else None,
        rows[-1].id if more_older and rows else None,
    )


@dataclass(frozen=True)
class FeedbackSummary:
    """Feedback on one prediction, for the list: CDS Hooks outcomes and reviewer verdicts."""

    cds: tuple[str, ...] = ()
    verdicts: tuple[str, ...] = ()


def feedback_summaries(
    *, session: Session, prediction_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, FeedbackSummary]:
    """Feedback per prediction for one page (two indexed queries)."""
    if not prediction_ids:
        return {}
    by_text = {str(p): p for p in prediction_ids}
    cds: dict[uuid.UUID, list[str]] = defaultdict(list)
    for entity_id, details in session.execute(
        select(AuditEntry.entity_id, AuditEntry.details).where(
            AuditEntry.entity_id.in_(list(by_text)), AuditEntry.action == CDS_FEEDBACK
        )
    ):
        outcome = details.get("outcome") if isinstance(details, dict) else None
        cds[by_text[entity_id]].append(str(outcome or "feedback"))
    verdicts: dict[uuid.UUID, list[str]] = defaultdict(list)
    for prediction_id, verdict in session.execute(
        select(ReviewVerdict.prediction_id, ReviewVerdict.verdict).where(
            ReviewVerdict.prediction_id.in_(list(prediction_ids))
        )
    ):
        verdicts[prediction_id].append(verdict.value)
    return {
        p: FeedbackSummary(tuple(cds.get(p, ())), tuple(verdicts.get(p, ())))
        for p in prediction_ids
    }


def first_identifiers(
    *, session: Session, patient_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, str]:
    """One displayable identifier per patient (the first recorded, FHIR pseudo-ids skipped)."""
    shown: dict[uuid.UUID, str] = {}
    if not patient_ids:
        return shown
    for patient_id, system, value in session.execute(
        select(PatientIdentifier.patient_id, PatientIdentifier.system, PatientIdentifier.value)
        .where(PatientIdentifier.patient_id.in_(list(set(patient_ids))))
        .order_by(PatientIdentifier.created_at)
    ):
        if not system.startswith("urn:cdsfusion:") and patient_id not in shown:
            shown[patient_id] = value
    return shown
