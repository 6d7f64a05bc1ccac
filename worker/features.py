"""Stored bundle -> model input (:class:`fusion.inputs.BundleInput`).

Reads only what the bundle's members point at: observations and notes from the timeline,
the anchor study's image from the DICOM store. Pixel data is decoded here, on the worker,
never on the ingest path.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
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


def age_in_years(birth_date: str | None, at: dt.datetime) -> float | None:
    if not birth_date:
        return None
    try:
        born = dt.date.fromisoformat(birth_date[:10])
    except ValueError:
        return None
    return (at.date() - born).days / 365.25


def build_input(*, session: Session, bundle: Bundle, data_dir: Path) -> BuiltInput:
    """The model input for ``bundle`` (members only)."""
    rows = session.execute(
        select(BundleMember.modality, BundleMember.relative_seconds, TimelineEvent)
        .join(TimelineEvent, TimelineEvent.id == BundleMember.event_id)
        .where(BundleMember.bundle_id == bundle.id)
        .order_by(BundleMember.modality, BundleMember.relative_seconds)
    ).all()
    built = BuiltInput(input=BundleInput(bundle_id=str(bundle.id)))
    for _modality, relative, event in rows:
        if event.kind is EventKind.OBSERVATION and event.value_num is not None:
            built.input.observations.append(
                ObsItem(
                    code_system=event.code_system or "",
                    code=event.code or "",
                    value=float(event.value_num),
                    unit=event.unit or "",
                    relative_seconds=float(relative),
                    category=event.category or "",
                )
            )
        elif event.kind is EventKind.NOTE and event.value_text:
            built.input.notes.append(NoteItem(text=event.value_text, relative_seconds=relative))
        elif event.kind is EventKind.DEMOGRAPHICS:
            details: dict[str, Any] = event.details or {}
            built.input.demographics = Demographics(
                age_years=age_in_years(details.get("birthDate"), bundle.anchor_at),
                sex=details.get("gender") or details.get("sex"),
            )
        elif event.kind is EventKind.IMAGING_STUDY and event.imaging_study_id is not None:
            _attach_image(session, built, event.imaging_study_id, data_dir)
    return built


def _attach_image(session: Session, built: BuiltInput, study_id: uuid.UUID, data_dir: Path) -> None:
    instances = session.execute(
        select(ImagingInstance.SOPInstanceUID, ImagingInstance.ViewPosition, SourceItem.storage_key)
        .join(ImagingSeries, ImagingSeries.id == ImagingInstance.series_id)
        .join(SourceItem, SourceItem.id == ImagingInstance.source_item_id)
        .where(ImagingSeries.study_id == study_id)
    ).all()
    ordered = sorted(
        instances, key=lambda r: (_VIEW_PREFERENCE.get((r.ViewPosition or "").upper(), 2), r[0])
    )
    reasons = []
    for sop_uid, _view, storage_key in ordered:
        if not storage_key:
            continue
        try:
            built.input.image = read_pixels(_safe_path(data_dir, storage_key))
            built.image_instance = sop_uid
            return
        except Exception as exc:  # noqa: BLE001 - any decoder failure: try the next image
            reasons.append(type(exc).__name__)
    if ordered:
        built.unreadable["image"] = "no decodable image in the study" + (
            f" ({', '.join(sorted(set(reasons)))})" if reasons else ""
        )


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
