"""Stored bundles -> model inputs (:class:`fusion.inputs.BundleInput`), a batch at a time.

Reads only what the bundles' members point at: observations and notes from the timeline,
the anchor study's image from the DICOM store. Reading is set-based: one query for the
members of every bundle of a batch and one for the images of every study they name,
whatever the batch size. Pixel data is decoded here, on the worker, never on the ingest
path, and outside any transaction, on a thread pool when one is given (file reads and the
compressed-pixel decoders release the GIL).
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Row, select
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

logger = logging.getLogger(__name__)

#: Preferred views for a chest radiograph when a study has several images.
_VIEW_PREFERENCE = {"PA": 0, "AP": 1, "": 2, "LL": 3, "LATERAL": 3, "RL": 3}


@dataclass
class BuiltInput:
    """A model input and what could not be read (reasons without patient data).

    Attributes:
        input: the model input.
        unreadable: modality -> reason, for data the bundle has but the worker could not
            use (e.g. an image whose transfer syntax has no decoder installed).
        image_instance: SOPInstanceUID of the image used, for the review page's heatmap.
    """

    input: BundleInput
    unreadable: dict[str, str] = field(default_factory=dict)
    image_instance: str | None = None


@dataclass(frozen=True, slots=True)
class ImageCandidate:
    """One stored image of a study, in the order the worker tries them."""

    sop_instance_uid: str
    storage_key: str | None


@dataclass
class BundleRecords:
    """What the database holds for one bundle's input, read without decoding pixels.

    Attributes:
        bundle_id: the bundle.
        anchor_at: its anchor time (ages are taken at it).
        members: its member events, by modality, time and event id.
        studies: imaging study id -> its images, preferred view first.
    """

    bundle_id: uuid.UUID
    anchor_at: dt.datetime
    members: list[Row[*tuple[Any, ...]]] = field(default_factory=list)
    studies: dict[uuid.UUID, list[ImageCandidate]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Decoded:
    pixels: np.ndarray | None
    sop_instance_uid: str | None
    reasons: tuple[str, ...]


def age_in_years(birth_date: str | None, at: dt.datetime) -> float | None:
    if not birth_date:
        return None
    try:
        born = dt.date.fromisoformat(birth_date[:10])
    except ValueError:
        return None
    return (at.date() - born).days / 365.25


def read_records(session: Session, bundles: Sequence[Bundle]) -> dict[uuid.UUID, BundleRecords]:
    """The member events and study images of ``bundles``: two queries for the whole batch.

    Members come ordered by modality, time and event id (the event id breaks ties, so two
    observations taken at the same second always reach the model in the same order).
    """
    records = {b.id: BundleRecords(bundle_id=b.id, anchor_at=b.anchor_at) for b in bundles}
    if not records:
        return records
    rows = session.execute(
        select(
            BundleMember.bundle_id,
            BundleMember.relative_seconds,
            TimelineEvent.kind,
            TimelineEvent.category,
            TimelineEvent.code_system,
            TimelineEvent.code,
            TimelineEvent.value_num,
            TimelineEvent.unit,
            TimelineEvent.value_text,
            TimelineEvent.details,
            TimelineEvent.imaging_study_id,
        )
        .join(TimelineEvent, TimelineEvent.id == BundleMember.event_id)
        .where(BundleMember.bundle_id.in_(list(records)))
        .order_by(
            BundleMember.bundle_id,
            BundleMember.modality,
            BundleMember.relative_seconds,
            BundleMember.event_id,
        )
    ).all()
    study_ids: set[uuid.UUID] = set()
    for row in rows:
        records[row.bundle_id].members.append(row)
        if row.kind is EventKind.IMAGING_STUDY and row.imaging_study_id is not None:
            study_ids.add(row.imaging_study_id)
    images = _study_images(session, study_ids)
    for record in records.values():
        for row in record.members:
            if row.kind is EventKind.IMAGING_STUDY and row.imaging_study_id is not None:
                record.studies[row.imaging_study_id] = images.get(row.imaging_study_id, [])
    return records


def _study_images(
    session: Session, study_ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, list[ImageCandidate]]:
    ids = list(study_ids)
    if not ids:
        return {}
    rows = session.execute(
        select(
            ImagingSeries.study_id,
            ImagingInstance.SOPInstanceUID,
            ImagingInstance.ViewPosition,
            SourceItem.storage_key,
        )
        .join(ImagingSeries, ImagingSeries.id == ImagingInstance.series_id)
        .join(SourceItem, SourceItem.id == ImagingInstance.source_item_id)
        .where(ImagingSeries.study_id.in_(ids))
    ).all()
    by_study: dict[uuid.UUID, list[Row[*tuple[Any, ...]]]] = defaultdict(list)
    for row in rows:
        by_study[row.study_id].append(row)
    return {
        study_id: [
            ImageCandidate(r.SOPInstanceUID, r.storage_key)
            for r in sorted(
                found,
                key=lambda r: (
                    _VIEW_PREFERENCE.get((r.ViewPosition or "").upper(), 2),
                    r.SOPInstanceUID,
                ),
            )
        ]
        for study_id, found in by_study.items()
    }


def _first_decodable(candidates: Sequence[ImageCandidate], data_dir: Path) -> _Decoded:
    reasons: list[str] = []
    for candidate in candidates:
        if not candidate.storage_key:
            continue
        try:
            pixels = read_pixels(_safe_path(data_dir, candidate.storage_key))
        except Exception as exc:  # noqa: BLE001 - any decoder failure: try the next image
            reasons.append(type(exc).__name__)
            continue
        return _Decoded(pixels, candidate.sop_instance_uid, ())
    return _Decoded(None, None, tuple(reasons))


def assemble(
    records: dict[uuid.UUID, BundleRecords], data_dir: Path, *, pool: Executor | None = None
) -> dict[uuid.UUID, BuiltInput | Exception]:
    """Decode the images and build each bundle's input (no database access).

    Args:
        records: from :func:`read_records`.
        data_dir: the DICOM store's root.
        pool: decodes images in parallel; without one they are decoded here, in turn.

    Returns:
        bundle id -> its input, or the exception that building it raised (a bundle that
        cannot be built fails alone).
    """
    wanted = [
        (record.bundle_id, study_id, candidates)
        for record in records.values()
        for study_id, candidates in record.studies.items()
    ]

    def decode(job: tuple[uuid.UUID, uuid.UUID, list[ImageCandidate]]) -> _Decoded:
        return _first_decodable(job[2], data_dir)

    decoded_list: Iterable[_Decoded] = (
        pool.map(decode, wanted) if pool is not None and len(wanted) > 1 else map(decode, wanted)
    )
    images: dict[uuid.UUID, dict[uuid.UUID, _Decoded]] = defaultdict(dict)
    for (bundle_id, study_id, _), result in zip(wanted, decoded_list, strict=True):
        images[bundle_id][study_id] = result
    built: dict[uuid.UUID, BuiltInput | Exception] = {}
    for bundle_id, record in records.items():
        try:
            built[bundle_id] = _build(record, images[bundle_id])
        except Exception as exc:  # noqa: BLE001 - a bad bundle fails alone
            built[bundle_id] = exc
    return built


def _build(record: BundleRecords, images: dict[uuid.UUID, _Decoded]) -> BuiltInput:
    built = BuiltInput(input=BundleInput(bundle_id=str(record.bundle_id)))
    for row in record.members:
        kind = row.kind
        if kind is EventKind.OBSERVATION and row.value_num is not None:
            built.input.observations.append(
                ObsItem(
                    code_system=row.code_system or "",
                    code=row.code or "",
                    value=float(row.value_num),
                    unit=row.unit or "",
                    relative_seconds=float(row.relative_seconds),
                    category=row.category or "",
                )
            )
        elif kind is EventKind.NOTE and row.value_text:
            built.input.notes.append(
                NoteItem(text=row.value_text, relative_seconds=row.relative_seconds)
            )
        elif kind is EventKind.DEMOGRAPHICS:
            details: dict[str, Any] = row.details or {}
            built.input.demographics = Demographics(
                age_years=age_in_years(details.get("birthDate"), record.anchor_at),
                sex=details.get("gender") or details.get("sex"),
            )
        elif kind is EventKind.IMAGING_STUDY and row.imaging_study_id is not None:
            _attach_image(built, record.studies[row.imaging_study_id], images[row.imaging_study_id])
    return built


def _attach_image(
    built: BuiltInput, candidates: Sequence[ImageCandidate], decoded: _Decoded
) -> None:
    if decoded.pixels is not None:
        built.input.image = decoded.pixels
        built.image_instance = decoded.sop_instance_uid
    elif candidates:
        reasons = decoded.reasons
        built.unreadable["image"] = "no decodable image in the study" + (
            f" ({', '.join(sorted(set(reasons)))})" if reasons else ""
        )


def build_inputs(
    *, session: Session, bundles: Sequence[Bundle], data_dir: Path, pool: Executor | None = None
) -> dict[uuid.UUID, BuiltInput | Exception]:
    """The model inputs of ``bundles``: :func:`read_records`, then :func:`assemble`."""
    return assemble(read_records(session, bundles), data_dir, pool=pool)


def build_input(*, session: Session, bundle: Bundle, data_dir: Path) -> BuiltInput:
    """The model input for one ``bundle`` (members only).

    Raises:
        Exception: whatever building it raised.
    """
    built = build_inputs(session=session, bundles=[bundle], data_dir=data_dir)[bundle.id]
    if isinstance(built, Exception):
        raise built
    return built


def _safe_path(data_dir: Path, storage_key: str) -> Path:
    root = data_dir.resolve()
    path = (root / storage_key).resolve()
    if root not in path.parents:
        raise ValueError("storage key leaves the data directory")
    return path


def read_pixels(path: Path) -> np.ndarray:
    """The first frame of a DICOM file as a float32 array, rescaled, MONOCHROME1 inverted."""
    import pydicom

    ds = pydicom.dcmread(path)
    pixels = np.asarray(ds.pixel_array)
    if pixels.ndim == 3 and getattr(ds, "SamplesPerPixel", 1) == 1:
        pixels = pixels[0]
    if pixels.ndim == 3:  # colour: luminance
        pixels = pixels[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    out = pixels.astype(np.float32)
    out = out * float(getattr(ds, "RescaleSlope", 1) or 1) + float(
        getattr(ds, "RescaleIntercept", 0) or 0
    )
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        out = out.max() - out
    return out
