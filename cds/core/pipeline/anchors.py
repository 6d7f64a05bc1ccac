"""Which tasks a timeline event anchors. Pure."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cds.core.aligner.task import TaskDefinition
from cds.core.db.models import EventKind


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def anchored_tasks(
    tasks: Iterable[TaskDefinition],
    *,
    kind: EventKind,
    code: str | None,
    details: dict[str, Any] | None,
    trigger_task: str | None = None,
) -> list[TaskDefinition]:
    """The tasks this event is an anchor for.

    * imaging studies (completed, from the DICOM connector or FHIR ImagingStudy) match a
      task's ``modalities`` / ``body_parts`` by the event's ``details``; the DICOM
      connector's own routing decision (``details["anchor"] is False``) vetoes it;
    * encounters match ``encounter_classes`` by the event's code or ``details["class"]``;
    * trigger events (CDS Hooks calls, schedule ticks) name their task.
    """
    details = details or {}
    chosen: list[TaskDefinition] = []
    for task in tasks:
        spec = task.anchor
        if kind is EventKind.TRIGGER:
            if details.get("task") == task.id or trigger_task == task.id:
                chosen.append(task)
        elif kind is EventKind.IMAGING_STUDY and spec.kind == "imaging-study":
            if details.get("anchor") is False:
                continue
            modalities = _as_list(details.get("modalities")) or _as_list(code)
            if spec.matches_study(modalities, _as_list(details.get("body_parts"))):
                chosen.append(task)
        elif kind is EventKind.ENCOUNTER and spec.kind == "encounter":
            classes = {c.upper() for c in spec.encounter_classes}
            found = {c.upper() for c in [*_as_list(code), *_as_list(details.get("class"))]}
            if not classes or classes & found:
                chosen.append(task)
    return chosen
