"""Property tests of the pure aligner (STYLE.md habit 1).

The oracle below restates the membership rule independently of the implementation: an
event is a member exactly when it falls in its modality's window and its selection keeps
it; the bundle does not depend on arrival order or repeats; the same timeline gives the
same hash.
"""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cds.core.aligner.align import Anchor, EventView, align
from cds.core.aligner.task import (
    ModalitySpec,
    Selection,
    TaskDefinition,
    Window,
    load_tasks,
    parse_duration,
)
from cds.core.db.models import EventKind
from cds.core.errors import ConfigurationError

ANCHOR_AT = dt.datetime(2026, 6, 1, 12, 0, tzinfo=dt.UTC)
LOINC = "http://loinc.org"
CODES = ["6690-2", "1988-5", "8867-4"]
CATEGORIES = ["laboratory", "vital-signs"]

hours = st.integers(min_value=-24 * 10, max_value=24 * 3)


@st.composite
def windows(draw: st.DrawFn) -> Window:
    end = draw(hours)
    start = draw(st.one_of(st.none(), st.integers(min_value=-24 * 10, max_value=end)))
    return Window(
        start=None if start is None else dt.timedelta(hours=start), end=dt.timedelta(hours=end)
    )


@st.composite
def selections(draw: st.DrawFn) -> Selection:
    mode = draw(st.sampled_from(["all", "latest", "last_n_per_code", "aggregate"]))
    if mode == "aggregate":
        return Selection(mode="aggregate", aggregates=("mean", "last"))
    return Selection(mode=mode, n=draw(st.integers(1, 3)))


@st.composite
def tasks(draw: st.DrawFn) -> TaskDefinition:
    modalities = {
        "image": ModalitySpec(source="anchor", kind=EventKind.IMAGING_STUDY, required=True),
        "labs": ModalitySpec(
            kind=EventKind.OBSERVATION,
            category="laboratory",
            codes=tuple(draw(st.lists(st.sampled_from(CODES), max_size=3, unique=True))),
            window=draw(windows()),
            selection=draw(selections()),
            required=draw(st.booleans()),
        ),
        "vitals": ModalitySpec(
            kind=EventKind.OBSERVATION,
            category="vital-signs",
            window=draw(windows()),
            selection=draw(selections()),
        ),
        "notes": ModalitySpec(
            kind=EventKind.NOTE, window=draw(windows()), selection=draw(selections())
        ),
    }
    return TaskDefinition(
        id="prop-task",
        version="1",
        title="property task",
        outcome={"display": "outcome"},
        anchor={"kind": "imaging-study"},
        modalities=modalities,
        minimum={"modalities_present": draw(st.integers(1, 4))},
    )


@st.composite
def events(draw: st.DrawFn) -> EventView:
    kind = draw(st.sampled_from([EventKind.OBSERVATION, EventKind.NOTE, EventKind.ENCOUNTER]))
    offset = draw(st.integers(min_value=-24 * 12 * 60, max_value=24 * 4 * 60))  # minutes
    observation = kind is EventKind.OBSERVATION
    return EventView(
        id=uuid.UUID(int=draw(st.integers(0, 2**64))),
        kind=kind,
        effective_at=ANCHOR_AT + dt.timedelta(minutes=offset),
        category=draw(st.sampled_from(CATEGORIES)) if observation else None,
        code_system=LOINC if observation else None,
        code=draw(st.sampled_from(CODES)) if observation else None,
    )


ANCHOR = Anchor(
    event_id=uuid.UUID(int=2**100),
    key="dicom-study|1.2.3",
    at=ANCHOR_AT,
    kind=EventKind.IMAGING_STUDY,
)


def oracle_members(task: TaskDefinition, timeline: list[EventView]) -> set[tuple[str, uuid.UUID]]:
    expected: set[tuple[str, uuid.UUID]] = set()
    for name, spec in task.modalities.items():
        if spec.source == "anchor":
            expected.add((name, ANCHOR.event_id))
            continue
        assert spec.window is not None
        start, end = spec.window.start, spec.window.end
        cands = {
            e.id: e
            for e in timeline
            if e.kind == spec.kind
            and (spec.category is None or e.category == spec.category)
            and (not spec.codes or (e.code_system == spec.code_system and e.code in spec.codes))
            and (start is None or e.effective_at - ANCHOR_AT >= start)
            and e.effective_at - ANCHOR_AT <= end
        }
        for e in cands.values():
            newer = [
                o
                for o in cands.values()
                if (o.effective_at, str(o.id)) > (e.effective_at, str(e.id))
            ]
            mode = spec.selection.mode
            keep = (
                mode in ("all", "aggregate")
                or (mode == "latest" and not newer)
                or (
                    mode == "last_n_per_code"
                    and sum(1 for o in newer if (o.code_system, o.code) == (e.code_system, e.code))
                    < spec.selection.n
                )
            )
            if keep:
                expected.add((name, e.id))
    return expected


@settings(max_examples=300, deadline=None)
@given(task=tasks(), timeline=st.lists(events(), unique_by=lambda e: e.id, max_size=40))
def test_member_exactly_when_in_window_and_selected(
    task: TaskDefinition, timeline: list[EventView]
) -> None:
    bundle = align(task, ANCHOR, timeline)
    assert {(m.modality, m.event_id) for m in bundle.members} == oracle_members(task, timeline)
    for member in bundle.members:
        if member.modality != "image":
            spec = task.modalities[member.modality]
            assert spec.window is not None
            assert spec.window.contains(dt.timedelta(seconds=member.relative_seconds))


@settings(max_examples=200, deadline=None)
@given(
    task=tasks(), timeline=st.lists(events(), unique_by=lambda e: e.id, max_size=30), data=st.data()
)
def test_arrival_order_and_repeats_do_not_matter(
    task: TaskDefinition, timeline: list[EventView], data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(timeline))
    repeated = (
        shuffled + data.draw(st.lists(st.sampled_from(timeline), max_size=5)) if timeline else []
    )
    first = align(task, ANCHOR, timeline)
    again = align(task, ANCHOR, repeated)
    assert first == again
    assert first.content_hash == again.content_hash


@settings(max_examples=100, deadline=None)
@given(task=tasks(), timeline=st.lists(events(), unique_by=lambda e: e.id, min_size=1, max_size=30))
def test_hash_changes_when_membership_changes(
    task: TaskDefinition, timeline: list[EventView]
) -> None:
    full = align(task, ANCHOR, timeline)
    fewer = align(task, ANCHOR, timeline[1:])
    same_members = {(m.modality, m.event_id) for m in full.members} == {
        (m.modality, m.event_id) for m in fewer.members
    }
    assert (full.content_hash == fewer.content_hash) == same_members


@settings(max_examples=100, deadline=None)
@given(task=tasks(), timeline=st.lists(events(), unique_by=lambda e: e.id, max_size=30))
def test_sufficiency_follows_required_and_minimum(
    task: TaskDefinition, timeline: list[EventView]
) -> None:
    bundle = align(task, ANCHOR, timeline)
    required = {n for n, s in task.modalities.items() if s.required}
    assert set(bundle.missing_required) == required - set(bundle.present)
    assert bundle.sufficient == (
        not bundle.missing_required and len(bundle.present) >= task.minimum.modalities_present
    )


def test_demo_task_ships_and_validates() -> None:
    task = load_tasks()["cxr-deterioration"]
    assert task.anchor.matches_study(["DX"], ["CHEST"])
    assert not task.anchor.matches_study(["CT"], ["CHEST"])
    assert task.modalities["image"].required
    assert "synthetic" in task.description


@pytest.mark.parametrize(
    ("text", "hours_"), [("-48h", -48), ("2h", 2), ("-7d", -168), ("0", 0), ("30m", 0.5)]
)
def test_durations(text: str, hours_: float) -> None:
    assert parse_duration(text) == dt.timedelta(hours=hours_)


def test_invalid_task_file_names_the_problem(tmp_path: pytest.TempPathFactory) -> None:
    from pathlib import Path

    from cds.core.aligner.task import load_task

    bad = Path(str(tmp_path)) / "bad.yaml"
    bad.write_text(
        "id: x\nversion: '1'\ntitle: t\noutcome: {display: o}\nanchor: {kind: imaging-study}\n"
        "modalities:\n  labs: {kind: observation, window: {start: 2h, end: -2h}}\n"
    )
    with pytest.raises(ConfigurationError, match="window start is after its end"):
        load_task(bad)
