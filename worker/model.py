"""Loading the model once per worker process: verified, on its device, warmed up."""

from __future__ import annotations

import logging
from pathlib import Path

from fusion.inputs import BundleInput
from fusion.predictor import Predictor

logger = logging.getLogger(__name__)


def pick_device(requested: str) -> tuple[str, str]:
    """(device, dtype) for ``requested`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``).

    ``auto`` takes CUDA when present, with bf16 autocast; CPU runs float32.
    """
    import torch

    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = "bfloat16" if requested.startswith("cuda") else "float32"
    return requested, dtype


def load_predictor(
    checkpoint: Path,
    *,
    device: str = "auto",
    expected_sha256: str | None = None,
    batch_size: int = 32,
) -> Predictor:
    """Load and hash-verify ``checkpoint``, then warm it up with one empty bundle.

    Raises:
        fusion.errors.CheckpointError: missing, unreadable or tampered checkpoint.
    """
    dev, dtype = pick_device(device)
    predictor = Predictor(
        checkpoint, device=dev, dtype=dtype, expected_sha256=expected_sha256, batch_size=batch_size
    )
    predictor.predict([BundleInput(bundle_id="warm-up")], attributions=False)
    logger.info(
        "model %s %s (sha256 %s) loaded on %s/%s",
        predictor.model_name,
        predictor.model_version,
        predictor.sha256[:12],
        dev,
        dtype,
    )
    return predictor
