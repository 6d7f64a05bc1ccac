"""The aligner: (task, anchor, timeline events) -> bundle. Pure: no I/O, no clock.

Membership rule, per modality of the task:

1. an event is a *candidate* when its kind, category and code match the modality and its
   time relative to the anchor lies inside the modality's window (both ends included);
   ``source: anchor`` modalities take exactly the anchor event;
2. the selection picks members among candidates: ``all`` and ``aggregate`` take every
   candidate, ``latest`` the most recent one, ``last_n_per_code`` the ``n`` most recent per
   (code system, code). Ties in time are broken by event id, so the result does not depend
   on the order events arrived in.

The content hash covers the task (id, version), the anchor and the sorted members, so the
same timeline always gives the same hash and any change of membership changes it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cds.core.aligner.task import ModalitySpec, TaskDefinition
from cds.core.db.models import EventKind


@dataclass(frozen=True, slots=True)
class EventView:
    """What the aligner needs to know of a timeline event (current versions only)."""

    id: uuid.UUID
    kind: EventKind
    effective_at: dt.datetime
    category: str | None = None
    code_system: str | None = None
    code: str | None = None


@dataclass(frozen=True, slots=True)
class Anchor:
    """The event a bundle is built around.

    Attributes:
        event_id: the anchor event (e.g. the completed study's timeline event).
        key: the anchor's lineage key; bundle versions are counted per task and key.
        at: the anchor time.
        kind: the anchor event's kind.
    """

    event_id: uuid.UUID
    key: str
    at: dt.datetime
    kind: EventKind


@dataclass(frozen=True, slots=True)
class Member:
    """One event in one modality, with its time relative to the anchor (seconds)."""

    event_id: uuid.UUID
    modality: str
    relative_seconds: float


@dataclass(frozen=True, slots=True)
class AlignedBundle:
    """The aligner's result.

    Attributes:
        members: sorted by (modality, relative time, event id).
        present: modalities with at least one member, sorted.
        missing_required: required modalities without members, sorted.
        sufficient: enough data for a prediction (no required modality missing and at
            least ``minimum.modalities_present`` modalities present).
        window_start, window_end: the union of the modality windows, as absolute times
            (``window_start`` is the earliest member time when a window is unbounded).
        late_until: until when late data makes a new version.
        content_hash: sha256 over task, anchor and members.
    """

    task_id: str
    task_version: str
    anchor: Anchor
    members: tuple[Member, ...]
    present: tuple[str, ...]
    missing_required: tuple[str, ...]
    sufficient: bool
    window_start: dt.datetime
    window_end: dt.datetime
    late_until: dt.datetime
    content_hash: str

    def members_of(self, modality: str) -> tuple[Member, ...]:
        return tuple(m for m in self.members if m.modality == modality)


def _recency_key(event: EventView) -> tuple[dt.datetime, str]:
    return (event.effective_at, str(event.id))


def candidates(spec: ModalitySpec, anchor: Anchor, events: Iterable[EventView]) -> list[EventView]:
    """Events of ``spec``'s kind, category and codes inside its window."""
    assert spec.window is not None
    return [
        e
        for e in events
        if spec.matches(e.kind, e.category, e.code_system, e.code)
        and spec.window.contains(e.effective_at - anchor.at)
    ]


def select(spec: ModalitySpec, found: Sequence[EventView]) -> list[EventView]:
    """Apply the modality's selection to its candidates."""
    mode = spec.selection.mode
    if mode in ("all", "aggregate"):
        return list(found)
    if mode == "latest":
        return [max(found, key=_recency_key)] if found else []
    groups: dict[tuple[str | None, str | None], list[EventView]] = defaultdict(list)
    for event in found:
        groups[(event.code_system, event.code)].append(event)
    chosen: list[EventView] = []
    for group in groups.values():
        chosen.extend(sorted(group, key=_recency_key, reverse=True)[: spec.selection.n])
    return chosen


def align(task: TaskDefinition, anchor: Anchor, events: Iterable[EventView]) -> AlignedBundle:
    """Build the bundle for ``anchor`` from the patient's current timeline ``events``.

    Args:
        task: the prediction task.
        anchor: the anchor; for ``source: anchor`` modalities it is the member.
        events: the patient's current events (any superset of the windows is fine).
    """
    pool = list({e.id: e for e in events}.values())  # the same event twice counts once
    members: list[Member] = []
    for name, spec in task.modalities.items():
        if spec.source == "anchor":
            members.append(Member(anchor.event_id, name, 0.0))
            continue
        for event in select(spec, candidates(spec, anchor, pool)):
            offset = (event.effective_at - anchor.at).total_seconds()
            members.append(Member(event.id, name, offset))
    members.sort(key=lambda m: (m.modality, m.relative_seconds, str(m.event_id)))

    present = tuple(sorted({m.modality for m in members}))
    missing = tuple(
        sorted(name for name, s in task.modalities.items() if s.required and name not in present)
    )
    sufficient = not missing and len(present) >= task.minimum.modalities_present

    earliest = task.reach_before
    if earliest is None:
        first = min((m.relative_seconds for m in members), default=0.0)
        window_start = anchor.at + dt.timedelta(seconds=min(first, 0.0))
    else:
        window_start = anchor.at + earliest
    window_end = anchor.at + task.reach_after
    return AlignedBundle(
        task_id=task.id,
        task_version=task.version,
        anchor=anchor,
        members=tuple(members),
        present=present,
        missing_required=missing,
        sufficient=sufficient,
        window_start=window_start,
        window_end=window_end,
        late_until=window_end + task.late_data_grace,
        content_hash=content_hash(task, anchor, members),
    )


def content_hash(task: TaskDefinition, anchor: Anchor, members: Sequence[Member]) -> str:
    """sha256 over the canonical JSON of task, anchor and members."""
    doc = {
        "task": [task.id, task.version],
        "anchor": [str(anchor.event_id), anchor.key, anchor.at.astimezone(dt.UTC).isoformat()],
        "members": sorted(
            [m.modality, str(m.event_id), round(m.relative_seconds, 3)] for m in members
        ),
    }
    return hashlib.sha256(json.dumps(doc, separators=(",", ":")).encode()).hexdigest()
