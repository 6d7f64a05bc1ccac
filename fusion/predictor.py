"""Inference: a verified checkpoint, batched predictions with calibration and attributions."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fusion.attribution import explain
from fusion.batch import bucket_by_length, collate
from fusion.checkpoint import LoadedCheckpoint, load_checkpoint
from fusion.features import EncodedBundle
from fusion.inputs import MODALITIES, BundleInput, PredictionOutput, pattern_key
from fusion.training import autocast

logger = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


class Predictor:
    """Loads a hash-verified checkpoint and predicts risk for BundleInputs.

    Args:
        checkpoint: Checkpoint directory (see :mod:`fusion.checkpoint`).
        device: Torch device, e.g. ``cpu`` or ``cuda:0``. Defaults to ``cpu``.
        dtype: ``float32`` or ``bfloat16`` (autocast, CUDA only; ignored on CPU).
            Defaults to ``float32``.
        expected_sha256: Pin the checkpoint hash (recommended in production).
        batch_size: Bundles per forward pass. Defaults to 32.
        max_heatmap_side: Largest returned heatmap side, pixels. Defaults to the model's
            input side (``config.image.image_size``): the gradient has no finer detail,
            and a larger map only makes every stored prediction bigger (a 512-pixel map
            is about 2 MB of JSON); the review page interpolates it to the display.

    Raises:
        CheckpointIntegrityError: The checkpoint fails its hash check.
        CheckpointError: The checkpoint cannot be read.
    """

    def __init__(
        self,
        checkpoint: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: str | torch.dtype = "float32",
        expected_sha256: str | None = None,
        batch_size: int = 32,
        max_heatmap_side: int | None = None,
    ) -> None:
        self.checkpoint: LoadedCheckpoint = load_checkpoint(
            checkpoint, expected_sha256=expected_sha256
        )
        self.device = torch.device(device)
        self.dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
        self.batch_size = batch_size
        self.model = self.checkpoint.model.to(self.device).eval()
        self.max_heatmap_side = max_heatmap_side or self.checkpoint.config.image.image_size

    @property
    def model_name(self) -> str:
        """Checkpoint model name."""
        return self.checkpoint.name

    @property
    def model_version(self) -> str:
        """Checkpoint model version."""
        return self.checkpoint.version

    @property
    def sha256(self) -> str:
        """sha256 of the checkpoint weights file."""
        return self.checkpoint.sha256

    def warm_up_buckets(self, *, attributions: bool = True) -> int:
        """Run the encoders on every shape bucket (see ``FusionModel.shape_buckets``).

        Done at start-up by a worker with compiled encoders, so that every compiled graph
        exists before the first job. ``attributions`` must match how ``predict`` will be
        called (compiled graphs are specialised on gradient mode).

        Returns:
            The number of encoder calls made (0 when no buckets are set).
        """
        with autocast(self.device, self.dtype):
            return self.model.warm_up_buckets(grad=attributions)

    def missing_modalities(self, item: BundleInput) -> list[str]:
        """Modalities the model will treat as missing for ``item`` (absent or not used)."""
        used = set(self.checkpoint.config.modalities)
        present = set(item.present_modalities()) & used
        return [m for m in MODALITIES if m not in present]

    def insufficient_data(self, item: BundleInput) -> list[str]:
        """Required modalities (``config.required_modalities``) that ``item`` lacks.

        An empty list means the model has what its configuration requires; the aligner
        decides what to do otherwise (wait, or predict anyway and say so).
        """
        missing = set(self.missing_modalities(item))
        return [m for m in self.checkpoint.config.required_modalities if m in missing]

    def predict(
        self, batch: Sequence[BundleInput], *, attributions: bool = True
    ) -> list[PredictionOutput]:
        """Predict risk for bundles, in input order.

        Args:
            batch: The bundles (any number; split internally by token length).
            attributions: Compute gradient x input attributions (one backward pass per
                batch). Defaults to True.

        Returns:
            One PredictionOutput per bundle.
        """
        items = list(batch)
        return self.predict_encoded(
            items, [self.encode(item) for item in items], attributions=attributions
        )

    def encode(self, item: BundleInput) -> EncodedBundle:
        """The model's arrays for one bundle (tokens, resized image): CPU work that a
        pipelined caller does ahead of :meth:`predict_encoded`, off the device's path.

        Raises:
            Whatever the featurizer raises for an input it cannot encode.
        """
        return self.checkpoint.featurizer.encode(item)

    def predict_encoded(
        self,
        batch: Sequence[BundleInput],
        encoded: Sequence[EncodedBundle],
        *,
        attributions: bool = True,
    ) -> list[PredictionOutput]:
        """:meth:`predict` for bundles already passed through :meth:`encode`.

        Args:
            batch: The bundles.
            encoded: ``encode(item)`` of each, in the same order.
            attributions: As in :meth:`predict`.

        Returns:
            One PredictionOutput per bundle.
        """
        items = list(batch)
        encoded = list(encoded)
        if len(encoded) != len(items):
            raise ValueError(f"{len(items)} bundles but {len(encoded)} encodings")
        calibration = self.checkpoint.calibration
        results: list[PredictionOutput | None] = [None] * len(items)
        size = self.checkpoint.config.image.image_size
        for index in bucket_by_length([e.length for e in encoded], self.batch_size):
            chunk = collate([encoded[i] for i in index], size).to(self.device)
            chunk = self.model.restrict(chunk)
            with torch.set_grad_enabled(attributions):
                if attributions:
                    chunk.image.requires_grad_(True)
                with autocast(self.device, self.dtype):
                    logits, captured = self.model(chunk, capture=attributions)
                explanations: list[dict[str, object]] = [{} for _ in index]
                if attributions and captured is not None:
                    self.model.zero_grad(set_to_none=True)
                    logits.float().sum().backward()
                    explanations = explain(
                        chunk,
                        captured,
                        [encoded[i] for i in index],
                        [items[i] for i in index],
                        self.max_heatmap_side,
                    )
            raw = logits.detach().float().cpu().numpy().astype(np.float64)
            probabilities = calibration.probability(raw)
            presence = chunk.presence().cpu().numpy()
            for k, i in enumerate(index):
                present = [m for m, p in zip(MODALITIES, presence[k], strict=True) if p]
                key = pattern_key(present)
                low, high = calibration.interval(float(probabilities[k]), key)
                results[i] = PredictionOutput(
                    probability=float(probabilities[k]),
                    logit=float(raw[k]),
                    interval_low=low,
                    interval_high=high,
                    coverage=calibration.coverage,
                    calibrated=calibration.fitted,
                    attributions=dict(explanations[k]),
                    missing_modalities=[m for m in MODALITIES if m not in present],
                    missingness_pattern=key,
                    model_name=self.model_name,
                    model_version=self.model_version,
                    model_sha256=self.sha256,
                )
        logger.info("predicted %d bundles with %s", len(items), self.sha256[:12])
        return [r for r in results if r is not None]
