"""Anchors that are not clinical data: scheduled assessments and CDS Hooks calls."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cds.core.aligner.task import TaskDefinition
from cds.core.clinical import EventIn, IdentifierIn, ItemIn, SourceItemIn
from cds.core.db.models import Bundle, EventKind, Protocol, SourceItem
from cds.core.pipeline.anchors import anchored_tasks
from cds.core.pipeline.bundles import assemble_bundle
from cds.core.pipeline.triggers import record_trigger, tick_schedules
from cds.core.repository.ingest import ingest_item

pytestmark = pytest.mark.integration

NOW = dt.datetime(2026, 7, 1, 9, 30, tzinfo=dt.UTC)


def _task(kind: str) -> TaskDefinition:
    anchor: dict[str, object] = {"kind": kind}
    if kind == "schedule":
        anchor["every"] = "6h"
    return TaskDefinition.model_validate(
        {
            "id": f"{kind}-task",
            "version": "1",
            "title": f"{kind} task",
            "outcome": {"display": "outcome"},
            "anchor": anchor,
            "modalities": {
                "vitals": {
                    "kind": "observation",
                    "category": "vital-signs",
                    "window": {"start": "-12h", "end": "0"},
                    "required": True,
                }
            },
        }
    )


def _patient_with(session: Session, *, encounter_end: dt.datetime | None) -> uuid.UUID:
    mrn = uuid.uuid4().hex
    body = mrn.encode()
    events = (
        EventIn(
            kind=EventKind.ENCOUNTER,
            lineage_key=f"test|{mrn}|enc",
            effective_at=NOW - dt.timedelta(days=1),
            effective_end=encounter_end,
            code="IMP",
        ),
        EventIn(
            kind=EventKind.OBSERVATION,
            lineage_key=f"test|{mrn}|hr",
            event_key="hr",
            effective_at=NOW - dt.timedelta(hours=1),
            category="vital-signs",
            code_system="http://loinc.org",
            code="8867-4",
            value_num=88,
        ),
    )
    result = ingest_item(
        session=session,
        item=ItemIn(
            SourceItemIn(
                protocol=Protocol.HL7V2,
                namespace="ADT^T",
                item_id=mrn,
                content_sha256=SourceItemIn.sha256(body),
                received_at=NOW,
            ),
            (IdentifierIn("T", mrn),),
            None,
            events,
        ),
    )
    assert result.patient_id is not None
    return result.patient_id


def _triggers(session: Session, patient: uuid.UUID) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(SourceItem)
            .where(SourceItem.namespace == "trigger", SourceItem.patient_id == patient)
        )
        or 0
    )


def test_schedule_triggers_once_per_period_for_open_encounters(session: Session) -> None:
    task = _task("schedule")
    inpatient = _patient_with(session, encounter_end=None)
    discharged = _patient_with(session, encounter_end=NOW - dt.timedelta(hours=2))
    tick_schedules(session=session, tasks=[task], now=NOW)
    tick_schedules(session=session, tasks=[task], now=NOW + dt.timedelta(minutes=20))
    assert _triggers(session, inpatient) == 1
    assert _triggers(session, discharged) == 0
    tick_schedules(session=session, tasks=[task], now=NOW + dt.timedelta(hours=6))
    assert _triggers(session, inpatient) == 2


@pytest.mark.parametrize("kind", ["schedule", "cds-hooks"])
def test_a_trigger_anchors_its_task_and_builds_a_bundle(session: Session, kind: str) -> None:
    task = _task(kind)
    patient = _patient_with(session, encounter_end=None)
    first = record_trigger(
        session=session,
        task=task,
        patient_id=patient,
        reason=kind,
        at=NOW,
        period=dt.timedelta(hours=1),
    )
    again = record_trigger(
        session=session,
        task=task,
        patient_id=patient,
        reason=kind,
        at=NOW + dt.timedelta(minutes=10),
        period=dt.timedelta(hours=1),
    )
    assert again.duplicate and first.patient_id == patient
    (event_id,) = first.event_ids
    assert anchored_tasks(
        [task, _task("encounter")],
        kind=EventKind.TRIGGER,
        code=None,
        details={"task": task.id},
    ) == [task]
    result = assemble_bundle(session=session, task=task, anchor_event_id=event_id)
    bundle = session.get(Bundle, result.bundle_id)
    assert bundle is not None and bundle.patient_id == patient
    assert bundle.anchor_at == NOW
    assert result.aligned is not None and result.aligned.present == ("vitals",)


def test_tasks_without_schedule_anchor_are_not_ticked(session: Session, tmp_path: Path) -> None:
    patient = _patient_with(session, encounter_end=None)
    assert tick_schedules(session=session, tasks=[], now=NOW) == 0
    assert _triggers(session, patient) == 0
