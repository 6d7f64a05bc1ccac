"""Set-based reads of a batch of bundles give the inputs that per-bundle reads give.

The reference is the per-bundle reader the worker used before reads were set-based (a
query for the members of each bundle, one for each study's images, decode in turn),
kept here as the oracle. Batched, one bundle at a time, and with a decode thread pool,
the inputs must be the same; and the number of queries must not grow with the batch.
"""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cds.core.db.models import (
    Bundle,
    BundleMember,
    EventKind,
    ImagingInstance,
    ImagingSeries,
    SourceItem,
    TimelineEvent,
)
from fusion.inputs import BundleInput, Demographics, NoteItem, ObsItem
from tests.worker.conftest import World, counting_statements
from worker.features import (
    BuiltInput,
    age_in_years,
    build_input,
    build_inputs,
    read_pixels,
    read_records,
)

pytestmark = [pytest.mark.integration]

_VIEW_PREFERENCE = {"PA": 0, "AP": 1, "": 2, "LL": 3, "LATERAL": 3, "RL": 3}


def reference_input(session: Session, bundle: Bundle, data_dir: Path) -> BuiltInput:
    """The per-bundle reader (two queries per bundle), members ordered with the event id
    as the tie-break."""
    rows = session.execute(
        select(BundleMember.relative_seconds, TimelineEvent)
        .join(TimelineEvent, TimelineEvent.id == BundleMember.event_id)
        .where(BundleMember.bundle_id == bundle.id)
        .order_by(BundleMember.modality, BundleMember.relative_seconds, BundleMember.event_id)
    ).all()
    built = BuiltInput(input=BundleInput(bundle_id=str(bundle.id)))
    for relative, ev in rows:
        if ev.kind is EventKind.OBSERVATION and ev.value_num is not None:
            built.input.observations.append(
                ObsItem(
                    code_system=ev.code_system or "",
                    code=ev.code or "",
                    value=float(ev.value_num),
                    unit=ev.unit or "",
                    relative_seconds=float(relative),
                    category=ev.category or "",
                )
            )
        elif ev.kind is EventKind.NOTE and ev.value_text:
            built.input.notes.append(NoteItem(text=ev.value_text, relative_seconds=relative))
        elif ev.kind is EventKind.DEMOGRAPHICS:
            details: dict[str, Any] = ev.details or {}
            built.input.demographics = Demographics(
                age_years=age_in_years(details.get("birthDate"), bundle.anchor_at),
                sex=details.get("gender") or details.get("sex"),
            )
        elif ev.kind is EventKind.IMAGING_STUDY and ev.imaging_study_id is not None:
            instances = session.execute(
                select(
                    ImagingInstance.SOPInstanceUID,
                    ImagingInstance.ViewPosition,
                    SourceItem.storage_key,
                )
                .join(ImagingSeries, ImagingSeries.id == ImagingInstance.series_id)
                .join(SourceItem, SourceItem.id == ImagingInstance.source_item_id)
                .where(ImagingSeries.study_id == ev.imaging_study_id)
            ).all()
            ordered = sorted(
                instances,
                key=lambda r: (_VIEW_PREFERENCE.get((r.ViewPosition or "").upper(), 2), r[0]),
            )
            reasons = []
            for sop_uid, _view, key in ordered:
                if not key:
                    continue
                try:
                    built.input.image = read_pixels(data_dir / key)
                    built.image_instance = sop_uid
                    break
                except Exception as exc:  # noqa: BLE001 - as the worker does
                    reasons.append(type(exc).__name__)
            else:
                if ordered:
                    built.unreadable["image"] = "no decodable image in the study" + (
                        f" ({', '.join(sorted(set(reasons)))})" if reasons else ""
                    )
    return built


def assert_same(got: BuiltInput | Exception, want: BuiltInput) -> None:
    assert isinstance(got, BuiltInput), got
    assert got.input.bundle_id == want.input.bundle_id
    assert got.input.observations == want.input.observations
    assert got.input.notes == want.input.notes
    assert got.input.demographics == want.input.demographics
    assert got.unreadable == want.unreadable
    assert got.image_instance == want.image_instance
    if want.input.image is None:
        assert got.input.image is None
    else:
        assert got.input.image is not None
        np.testing.assert_array_equal(got.input.image, want.input.image)


def test_the_world_has_every_shape(world: World) -> None:
    assert len(world.bundles()) == 7
    assert [b.version for b in world.bundles_of("two-versions")] == [1, 2]


def test_batched_reads_give_the_per_bundle_inputs(world: World) -> None:
    bundles = world.bundles()
    data_dir = world.wctx.data_dir
    with world.ctx.session_factory() as session:
        want = {b.id: reference_input(session, b, data_dir) for b in bundles}
        batched = build_inputs(session=session, bundles=bundles, data_dir=data_dir)
        one_by_one = {
            b.id: build_input(session=session, bundle=b, data_dir=data_dir) for b in bundles
        }
        with ThreadPoolExecutor(4) as pool:
            pooled = build_inputs(session=session, bundles=bundles, data_dir=data_dir, pool=pool)
    assert set(batched) == set(want) == set(pooled)
    for bundle_id, reference in want.items():
        assert_same(batched[bundle_id], reference)
        assert_same(one_by_one[bundle_id], reference)
        assert_same(pooled[bundle_id], reference)
    # The shapes really are different: the test would not pass on empty inputs.
    (full,) = world.bundles_of("full-a")
    assert want[full.id].input.image is not None and want[full.id].input.observations
    assert want[full.id].input.notes and want[full.id].input.demographics is not None
    (no_file,) = world.bundles_of("no-file")
    assert "image" in want[no_file.id].unreadable
    (fallback,) = world.bundles_of("bad-first-image")
    assert want[fallback.id].input.image is not None
    assert (want[fallback.id].image_instance or "").startswith("2.25.")  # not the 1.0. one


def test_members_come_in_a_stable_order(world: World) -> None:
    """Ties in (modality, time) are broken by the event id, so the model always sees a
    bundle's observations in the same order."""
    (bundle,) = world.bundles_of("full-b")
    with world.ctx.session_factory() as session:
        records = read_records(session, [bundle])
        expected = session.execute(
            select(
                BundleMember.modality, BundleMember.relative_seconds, BundleMember.event_id
            ).where(BundleMember.bundle_id == bundle.id)
        ).all()
    assert len(records[bundle.id].members) == len(expected)
    times = [row.relative_seconds for row in records[bundle.id].members]
    by_key = sorted(expected, key=lambda r: (r.modality, r.relative_seconds, r.event_id))
    assert times == [r.relative_seconds for r in by_key]


def test_reads_take_the_same_number_of_queries_for_one_bundle_or_many(world: World) -> None:
    bundles = world.bundles()
    data_dir = world.wctx.data_dir
    with (
        world.ctx.session_factory() as session,
        counting_statements(world.ctx.engine, frozenset({"SELECT"})) as one,
    ):
        build_inputs(session=session, bundles=bundles[:1], data_dir=data_dir)
    with (
        world.ctx.session_factory() as session,
        counting_statements(world.ctx.engine, frozenset({"SELECT"})) as many,
    ):
        build_inputs(session=session, bundles=bundles, data_dir=data_dir)
    assert len(many) == len(one) == 2  # members, then study images


def test_a_bundle_that_cannot_be_built_fails_alone(world: World) -> None:
    (bad,) = world.bundles_of("full-a")
    with world.ctx.session_factory() as session, session.begin():
        demographics = session.scalars(
            select(TimelineEvent.id)
            .join(BundleMember, BundleMember.event_id == TimelineEvent.id)
            .where(BundleMember.bundle_id == bad.id, TimelineEvent.kind == EventKind.DEMOGRAPHICS)
        ).all()
        session.execute(
            update(TimelineEvent)
            .where(TimelineEvent.id.in_(demographics))
            .values(details=["not", "an", "object"])
        )
    bundles = world.bundles()
    with world.ctx.session_factory() as session:
        built = build_inputs(session=session, bundles=bundles, data_dir=world.wctx.data_dir)
    assert isinstance(built[bad.id], AttributeError)
    assert all(isinstance(built[b.id], BuiltInput) for b in bundles if b.id != bad.id)


def test_no_bundles_no_queries(world: World) -> None:
    with (
        world.ctx.session_factory() as session,
        counting_statements(world.ctx.engine, frozenset({"SELECT"})) as seen,
    ):
        assert build_inputs(session=session, bundles=[], data_dir=world.wctx.data_dir) == {}
    assert seen == []
    assert uuid.UUID(int=0) not in world.jobs
