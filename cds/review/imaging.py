"""The prediction's radiograph as PNG, plain and with the model's heatmap over it.

The pixels come from the stored DICOM file of the instance the model read
(``outputs.image_instance``, a SOPInstanceUID). Decoding uses pydicom and numpy only; the
web process never imports torch or the model. The heatmap (``attributions.image.heatmap``,
values in [0, 1], at the model's input resolution, see ``fusion/README.md``) is
interpolated bilinearly to the displayed image and blended with a colour map whose opacity
grows with the value.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from cds.core.db.models import (
    BundleMember,
    EventKind,
    ImagingInstance,
    ImagingSeries,
    Prediction,
    TimelineEvent,
)

#: The displayed image's long side, pixels (the heatmap's cap in fusion).
MAX_SIDE = 512
#: Opacity of the heatmap where it is 1.
MAX_ALPHA = 0.6


class ImageUnavailableError(LookupError):
    """The prediction has no readable image (none in the bundle, file missing or undecodable)."""


def storage_path(data_dir: Path, storage_key: str) -> Path:
    """``data_dir / storage_key``, refusing keys that leave the data directory.

    Raises:
        ImageUnavailableError: the key points outside ``data_dir``.
    """
    root = data_dir.resolve()
    path = (root / storage_key).resolve()
    if root not in path.parents:
        raise ImageUnavailableError("storage key leaves the data directory")
    return path


def image_storage_key(*, session: Session, prediction: Prediction) -> str:
    """Where the image the model read is stored; else the bundle study's first instance.

    Raises:
        ImageUnavailableError: no stored image belongs to the prediction.
    """
    sop_uid = (prediction.outputs or {}).get("image_instance")
    if isinstance(sop_uid, str) and sop_uid:
        key = session.scalar(
            select(ImagingInstance.storage_key).where(ImagingInstance.SOPInstanceUID == sop_uid)
        )
        if key:
            return key
    key = session.scalar(
        select(ImagingInstance.storage_key)
        .join(ImagingSeries, ImagingSeries.id == ImagingInstance.series_id)
        .join(TimelineEvent, TimelineEvent.imaging_study_id == ImagingSeries.study_id)
        .join(BundleMember, BundleMember.event_id == TimelineEvent.id)
        .where(
            BundleMember.bundle_id == prediction.bundle_id,
            TimelineEvent.kind == EventKind.IMAGING_STUDY,
        )
        .order_by(ImagingInstance.SOPInstanceUID)
        .limit(1)
    )
    if not key:
        raise ImageUnavailableError("the prediction has no stored image")
    return key


def read_pixels(path: Path) -> np.ndarray:
    """The first frame of a DICOM file as float32, rescaled, MONOCHROME1 inverted.

    Raises:
        ImageUnavailableError: unreadable file or pixel data.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path)
        pixels = np.asarray(ds.pixel_array)
    except (OSError, InvalidDicomError, AttributeError, ValueError, RuntimeError) as exc:
        raise ImageUnavailableError(f"image not decodable ({type(exc).__name__})") from None
    if pixels.ndim == 3 and int(getattr(ds, "SamplesPerPixel", 1)) == 1:
        pixels = pixels[0]
    if pixels.ndim == 3:
        pixels = pixels[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    out = pixels.astype(np.float32) * float(getattr(ds, "RescaleSlope", 1) or 1) + float(
        getattr(ds, "RescaleIntercept", 0) or 0
    )
    if str(getattr(ds, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        out = out.max() - out
    return out


def resize_nearest(array: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Nearest-neighbour resize of a 2-D array."""
    r = (np.arange(rows) * array.shape[0] / rows).astype(np.intp)
    c = (np.arange(cols) * array.shape[1] / cols).astype(np.intp)
    return np.asarray(array[r[:, None], c[None, :]])


def resize_bilinear(array: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Bilinear resize of a 2-D float array (pixel centres aligned, edges clamped)."""

    def axis(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        low = np.floor(x).astype(np.intp)
        return low, np.minimum(low + 1, n_in - 1), (x - low).astype(np.float32)

    r0, r1, fr = axis(rows, array.shape[0])
    c0, c1, fc = axis(cols, array.shape[1])
    top = array[r0][:, c0] * (1 - fc) + array[r0][:, c1] * fc
    bottom = array[r1][:, c0] * (1 - fc) + array[r1][:, c1] * fc
    return np.asarray(top * (1 - fr[:, None]) + bottom * fr[:, None], dtype=np.float32)


def display_size(shape: tuple[int, ...], max_side: int = MAX_SIDE) -> tuple[int, int]:
    """``shape`` scaled so the long side is at most ``max_side`` (never enlarged)."""
    rows, cols = int(shape[0]), int(shape[1])
    scale = min(1.0, max_side / max(rows, cols, 1))
    return max(1, round(rows * scale)), max(1, round(cols * scale))


def to_grey(pixels: np.ndarray) -> np.ndarray:
    """Downscaled 8-bit greyscale, windowed on the 1st-99th percentiles."""
    small = resize_nearest(pixels, *display_size(pixels.shape))
    low, high = np.percentile(small, [1, 99]) if small.size else (0.0, 1.0)
    scaled = (small - low) / (high - low) if high > low else np.zeros_like(small)
    return np.asarray(np.clip(scaled, 0, 1) * 255, dtype=np.uint8)


def colour_map(values: np.ndarray) -> np.ndarray:
    """A jet-like colour map: [0, 1] -> RGB floats in [0, 1] (blue, cyan, yellow, red)."""
    v = np.clip(values, 0, 1)[..., None]
    centres = np.array([0.75, 0.5, 0.25], np.float32)
    return np.asarray(np.clip(1.5 - np.abs(4 * (v - centres)), 0, 1), dtype=np.float32)


def overlay(grey: np.ndarray, heatmap: np.ndarray) -> np.ndarray:
    """``grey`` (uint8) with ``heatmap`` ([0, 1], any size) blended over it, as RGB uint8."""
    heat = resize_bilinear(np.clip(heatmap.astype(np.float32), 0, 1), *grey.shape)
    base = np.repeat(grey[..., None].astype(np.float32) / 255, 3, axis=2)
    alpha = (MAX_ALPHA * heat)[..., None]
    blended = base * (1 - alpha) + colour_map(heat) * alpha
    return np.asarray(np.clip(blended * 255, 0, 255), dtype=np.uint8)


def heatmap_of(outputs: dict[str, Any] | None) -> np.ndarray | None:
    """The image heatmap from a prediction's outputs, or ``None`` when there is none."""
    attributions = (outputs or {}).get("attributions")
    image = attributions.get("image") if isinstance(attributions, dict) else None
    heatmap = image.get("heatmap") if isinstance(image, dict) else None
    if not isinstance(heatmap, list) or not heatmap:
        return None
    try:
        array = np.asarray(heatmap, dtype=np.float32)
    except (TypeError, ValueError):
        return None
    return array if array.ndim == 2 and array.size else None


def prediction_png(
    *, session: Session, prediction_id: uuid.UUID, data_dir: Path, with_heatmap: bool
) -> bytes:
    """The prediction's image as PNG, with the heatmap overlay when asked and present.

    Raises:
        ImageUnavailableError: no prediction, no image, or an undecodable file.
    """
    from cds.review.png import encode_png

    prediction = session.get(Prediction, prediction_id)
    if prediction is None:
        raise ImageUnavailableError("no such prediction")
    key = image_storage_key(session=session, prediction=prediction)
    grey = to_grey(read_pixels(storage_path(data_dir, key)))
    heatmap = heatmap_of(prediction.outputs) if with_heatmap else None
    return encode_png(overlay(grey, heatmap) if heatmap is not None else grey)
