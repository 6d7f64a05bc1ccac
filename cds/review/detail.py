"""What the prediction page shows, gathered from the database into plain values.

The bundle's inputs with their provenance (protocol, sender, ids, arrival time), the
charts and the note-token highlights built from the model's attributions, the history of
the bundle's versions and their predictions, the feedback received (CDS Hooks feedback
from the audit log, reviewers' verdicts) and the calibration note.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from cds.core.db.models import (
    AuditEntry,
    Bundle,
    BundleMember,
    EventKind,
    EventStatus,
    PatientIdentifier,
    Prediction,
    ReviewUser,
    ReviewVerdict,
    SourceItem,
    TimelineEvent,
)
from cds.fhir.levels import RiskLevels
from cds.review.charts import Mark, Point, series_svg, timeline_svg
from cds.review.imaging import heatmap_of
from cds.review.listing import CDS_FEEDBACK
from cds.review.notes import TokenView, highlight_tokens

#: Two observation times closer than this (seconds) are the same attributed value.
_SAME_TIME_S = 1.0


@dataclass(frozen=True)
class InputRow:
    """One bundle member and where it came from."""

    modality: str
    kind: str
    name: str
    value: str
    effective_at: dt.datetime
    relative_s: float
    protocol: str
    sender: str
    namespace: str
    item_id: str
    item_version: str
    received_at: dt.datetime
    event_status: str
    contribution: float | None = None
    value_num: float | None = None
    unit: str = ""

    @property
    def relative_h(self) -> str:
        return f"{self.relative_s / 3600:+.1f} h"


@dataclass(frozen=True)
class NoteView:
    """A note of the bundle, with its time and source."""

    effective_at: dt.datetime
    relative_s: float
    text: str


@dataclass(frozen=True)
class HistoryRow:
    """One version of this bundle and its prediction(s)."""

    bundle_version: int
    bundle_status: str
    prediction_id: uuid.UUID | None
    status: str | None
    probability: float | None
    created_at: dt.datetime
    current: bool


@dataclass(frozen=True)
class CdsFeedbackRow:
    """CDS Hooks feedback on the card (CDS Hooks 2.0 §Feedback), from the audit log."""

    at: dt.datetime
    actor: str
    outcome: str
    override_reason: str | None
    accepted_suggestions: int


@dataclass(frozen=True)
class VerdictRow:
    """A reviewer's verdict."""

    at: dt.datetime
    username: str
    verdict: str
    comment: str


@dataclass
class PredictionView:
    """Everything the prediction page renders (see ``templates/prediction.html``)."""

    prediction: Prediction
    bundle: Bundle
    level: str | None
    identifiers: list[tuple[str, str]]
    inputs: list[InputRow]
    timeline: str
    charts: list[str]
    notes: list[NoteView]
    tokens: list[TokenView]
    has_image: bool
    has_heatmap: bool
    missing: list[str]
    unreadable: dict[str, str]
    calibration_note: str
    demographics: dict[str, float]
    history: list[HistoryRow]
    cds_feedback: list[CdsFeedbackRow]
    verdicts: list[VerdictRow]
    card: dict[str, Any] | None = None
    outputs: dict[str, Any] = field(default_factory=dict)


def calibration_note(outputs: dict[str, Any]) -> str:
    """A sentence on how far the probability and interval can be trusted."""
    coverage = outputs.get("coverage")
    pattern = outputs.get("missingness_pattern") or "all modalities"
    cover = (
        f"; the interval covers the outcome with probability at least "
        f"{float(coverage) * 100:.0f}% for predictions made from {pattern}"
        if isinstance(coverage, int | float)
        else ""
    )
    if outputs.get("calibrated"):
        return (
            "Calibrated on held-out data: temperature-scaled probability, split-conformal "
            f"interval{cover}."
        )
    return (
        "Not calibrated on held-out data: probability and interval come straight from the "
        f"model{cover}. Read them as uncalibrated."
    )


def _value(event: TimelineEvent) -> str:
    if event.value_num is not None:
        return f"{event.value_num:g} {event.unit or ''}".strip()
    if event.kind is EventKind.NOTE:
        return f"note, {len(event.value_text or '')} characters"
    if event.kind is EventKind.DEMOGRAPHICS:
        details = event.details or {}
        return ", ".join(f"{k} {v}" for k, v in sorted(details.items()) if k in ("gender", "sex"))
    return (event.value_text or "")[:80]


def _name(event: TimelineEvent) -> str:
    return event.display or event.code or event.kind.value


def _contributions(outputs: dict[str, Any]) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """(code system, code) -> [(relative seconds, contribution)] from the attributions."""
    found: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    attributions = outputs.get("attributions")
    observations = attributions.get("observations") if isinstance(attributions, dict) else None
    for item in observations if isinstance(observations, list) else ():
        if not isinstance(item, dict):
            continue
        try:
            key = (str(item.get("code_system") or ""), str(item.get("code") or ""))
            found[key].append((float(item["relative_seconds"]), float(item["contribution"])))
        except (KeyError, TypeError, ValueError):
            continue
    return found


def _contribution_for(
    found: dict[tuple[str, str], list[tuple[float, float]]], event: TimelineEvent, rel: float
) -> float | None:
    for seconds, contribution in found.get((event.code_system or "", event.code or ""), ()):
        if abs(seconds - rel) <= _SAME_TIME_S:
            return contribution
    return None


def load_inputs(
    *, session: Session, bundle: Bundle, outputs: dict[str, Any]
) -> tuple[list[InputRow], list[NoteView]]:
    """The bundle members, oldest first, with provenance; and the notes' texts."""
    found = _contributions(outputs)
    rows = session.execute(
        select(BundleMember, TimelineEvent, SourceItem)
        .join(TimelineEvent, TimelineEvent.id == BundleMember.event_id)
        .join(SourceItem, SourceItem.id == TimelineEvent.source_item_id)
        .where(BundleMember.bundle_id == bundle.id)
        .order_by(BundleMember.relative_seconds, BundleMember.modality)
    ).all()
    inputs: list[InputRow] = []
    notes: list[NoteView] = []
    for member, event, source in rows:
        rel = float(member.relative_seconds)
        inputs.append(
            InputRow(
                modality=member.modality,
                kind=event.kind.value,
                name=_name(event),
                value=_value(event),
                effective_at=event.effective_at,
                relative_s=rel,
                protocol=source.protocol.value,
                sender=source.sender or source.namespace,
                namespace=source.namespace,
                item_id=source.item_id,
                item_version=source.item_version,
                received_at=source.received_at,
                event_status=event.status.value,
                contribution=_contribution_for(found, event, rel),
                value_num=event.value_num,
                unit=event.unit or "",
            )
        )
        if event.kind is EventKind.NOTE and event.value_text:
            notes.append(NoteView(event.effective_at, rel, event.value_text))
    return inputs, notes


def timeline_of(inputs: list[InputRow], bundle: Bundle) -> str:
    """The one-axis timeline of every input around the anchor."""
    lanes: dict[str, list[Mark]] = defaultdict(list)
    for row in inputs:
        css = "superseded" if row.event_status != EventStatus.CURRENT.value else row.kind
        label = f"{row.name}: {row.value} at {row.relative_h} ({row.protocol})"
        lanes[row.modality].append(Mark(row.relative_s, label, css))
    start = (bundle.window_start - bundle.anchor_at).total_seconds()
    end = (bundle.window_end - bundle.anchor_at).total_seconds()
    return timeline_svg(sorted(lanes.items()), start_s=start, end_s=end)


def charts_of(inputs: list[InputRow], bundle: Bundle) -> list[str]:
    """One chart per observation code (labs first, then vitals)."""
    series: dict[tuple[str, str], list[Point]] = defaultdict(list)
    units: dict[tuple[str, str], str] = {}
    for row in inputs:
        if row.kind != EventKind.OBSERVATION.value or row.value_num is None:
            continue
        key = (row.modality, row.name)
        units[key] = row.unit
        weighed = f", contribution {row.contribution:+.3f}" if row.contribution is not None else ""
        label = f"{row.value} at {row.relative_h}{weighed}"
        series[key].append(Point(row.relative_s, row.value_num, label, row.contribution))
    start = (bundle.window_start - bundle.anchor_at).total_seconds()
    end = (bundle.window_end - bundle.anchor_at).total_seconds()
    return [
        series_svg(f"{key[1]} ({key[0]})", units[key], points, start_s=start, end_s=end)
        for key, points in sorted(series.items())
    ]


def load_history(*, session: Session, bundle: Bundle, current: uuid.UUID) -> list[HistoryRow]:
    """Every version of this bundle (same task and anchor) with its predictions."""
    rows = session.execute(
        select(Bundle, Prediction)
        .outerjoin(Prediction, Prediction.bundle_id == Bundle.id)
        .where(Bundle.task_id == bundle.task_id, Bundle.anchor_key == bundle.anchor_key)
        .order_by(Bundle.version, Prediction.created_at)
    ).all()
    return [
        HistoryRow(
            bundle_version=b.version,
            bundle_status=b.status.value,
            prediction_id=p.id if p else None,
            status=p.status.value if p else None,
            probability=p.probability if p else None,
            created_at=p.created_at if p else b.created_at,
            current=p is not None and p.id == current,
        )
        for b, p in rows
    ]


def load_feedback(
    *, session: Session, prediction_id: uuid.UUID
) -> tuple[list[CdsFeedbackRow], list[VerdictRow]]:
    """CDS Hooks feedback naming this prediction's card, and reviewers' verdicts."""
    cds = []
    for entry in session.scalars(
        select(AuditEntry)
        .where(AuditEntry.entity_id == str(prediction_id), AuditEntry.action == CDS_FEEDBACK)
        .order_by(AuditEntry.id)
    ):
        details = entry.details or {}
        reason = details.get("override_reason")
        cds.append(
            CdsFeedbackRow(
                at=entry.occurred_at,
                actor=entry.actor,
                outcome=str(details.get("outcome", "")),
                override_reason=str(reason.get("code")) if isinstance(reason, dict) else None,
                accepted_suggestions=len(details.get("accepted_suggestions") or ()),
            )
        )
    verdicts = [
        VerdictRow(v.created_at, username, v.verdict.value, v.comment)
        for v, username in session.execute(
            select(ReviewVerdict, ReviewUser.username)
            .join(ReviewUser, ReviewUser.id == ReviewVerdict.user_id)
            .where(ReviewVerdict.prediction_id == prediction_id)
            .order_by(ReviewVerdict.created_at)
        )
    ]
    return cds, verdicts


def _demographics(outputs: dict[str, Any]) -> dict[str, float]:
    attributions = outputs.get("attributions")
    found = attributions.get("demographics") if isinstance(attributions, dict) else None
    if not isinstance(found, dict):
        return {}
    return {str(k): float(v) for k, v in found.items() if isinstance(v, int | float)}


def load_view(
    *, session: Session, prediction: Prediction, levels: RiskLevels, has_image: bool
) -> PredictionView:
    """Gather the prediction page.

    Raises:
        LookupError: the prediction's bundle is gone (never expected).
    """
    bundle = session.get(Bundle, prediction.bundle_id)
    if bundle is None:
        raise LookupError(f"prediction {prediction.id} has no bundle")
    outputs = dict(prediction.outputs or {})
    inputs, notes = load_inputs(session=session, bundle=bundle, outputs=outputs)
    cds, verdicts = load_feedback(session=session, prediction_id=prediction.id)
    identifiers = [
        (system, value)
        for system, value in session.execute(
            select(PatientIdentifier.system, PatientIdentifier.value)
            .where(PatientIdentifier.patient_id == prediction.patient_id)
            .order_by(PatientIdentifier.created_at)
        )
        if not system.startswith("urn:cdsfusion:")
    ]
    missing_key = "missing" if prediction.probability is None else "missing_modalities"
    missing = [str(m) for m in outputs.get(missing_key) or ()]
    unreadable = outputs.get("unreadable")
    attributions = outputs.get("attributions")
    return PredictionView(
        prediction=prediction,
        bundle=bundle,
        level=levels.level(prediction.probability).value
        if prediction.probability is not None
        else None,
        identifiers=identifiers,
        inputs=inputs,
        timeline=timeline_of(inputs, bundle),
        charts=charts_of(inputs, bundle),
        notes=notes,
        tokens=highlight_tokens(
            attributions.get("notes") if isinstance(attributions, dict) else None
        ),
        has_image=has_image,
        has_heatmap=has_image and heatmap_of(outputs) is not None,
        missing=missing,
        unreadable={str(k): str(v) for k, v in unreadable.items()}
        if isinstance(unreadable, dict)
        else {},
        calibration_note=calibration_note(outputs) if prediction.probability is not None else "",
        demographics=_demographics(outputs),
        history=load_history(session=session, bundle=bundle, current=prediction.id),
        cds_feedback=cds,
        verdicts=verdicts,
        outputs=outputs,
    )
