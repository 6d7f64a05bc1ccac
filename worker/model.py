"""Loading the model once per worker process: verified, on its device, warmed up."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from fusion.inputs import BundleInput
from fusion.model.network import ShapeBuckets
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


def compile_encoders(
    predictor: Predictor, *, backend: str = "inductor", cuda_graphs: bool = False
) -> ShapeBuckets:
    """``torch.compile`` the image and note encoders, where the model's FLOPs are.

    The fusion layers index by which modalities are present, so they stay eager. The
    encoders get fixed shapes: their inputs are padded to the model's
    :class:`~fusion.model.network.ShapeBuckets` (rows, note length), each compiled once by
    :meth:`Predictor.warm_up_buckets`; the recompile limit is raised to the number of
    buckets, so no shape ever falls back to eager.

    Args:
        predictor: The loaded predictor (its model is changed in place).
        backend: ``torch.compile`` backend; ``eager`` (tests) only traces.
        cuda_graphs: compile mode ``reduce-overhead``: each bucket's kernels replayed as one
            CUDA graph (CUDA only; what launch overhead costs small batches).

    Returns:
        The shape buckets set on the model.
    """
    import torch
    import torch._dynamo.config

    model = predictor.model
    buckets = ShapeBuckets.for_model(model.config, predictor.batch_size)
    model.shape_buckets = buckets
    limit = torch._dynamo.config.recompile_limit
    torch._dynamo.config.recompile_limit = max(limit, buckets.shapes + 8)
    mode = "reduce-overhead" if cuda_graphs else None
    model.image.backbone = torch.compile(
        model.image.backbone, dynamic=False, backend=backend, mode=mode
    )
    model.notes.encoder = torch.compile(
        model.notes.encoder, dynamic=False, backend=backend, mode=mode
    )
    return buckets


def warm_up_inputs(size: int) -> list[BundleInput]:
    """``size`` synthetic bundles (no patient data) with every modality present."""
    from fusion.synthetic import generate_cohort

    complete = {"image": 0.0, "notes": 0.0, "labs": 0.0, "vitals": 0.0}
    cohort = generate_cohort(max(1, size), seed=7, missing_rates=complete)
    return [patient.to_bundle_input() for patient in cohort[:size]]


def load_predictor(
    checkpoint: Path,
    *,
    device: str = "auto",
    expected_sha256: str | None = None,
    batch_size: int = 32,
    compile_model: bool | None = None,
    cuda_graphs: bool = False,
    warm_up_batches: tuple[int, ...] = (1,),
) -> Predictor:
    """Load and hash-verify ``checkpoint``, optionally compile it, then warm it up.

    Args:
        checkpoint: the checkpoint directory.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        expected_sha256: refuse a checkpoint with another hash.
        batch_size: the largest batch per forward pass.
        compile_model: compile the encoders; default: on CUDA only.
        cuda_graphs: compiled with CUDA graphs (on CUDA only; ignored on CPU).
        warm_up_batches: after the shape buckets (when compiled), batch sizes to run once
            before serving, as the worker runs them
            (every modality present, attributions on), so kernels are chosen, memory is
            reserved and compiled graphs exist before the first job.

    Raises:
        fusion.errors.CheckpointError: missing, unreadable or tampered checkpoint.
    """
    dev, dtype = pick_device(device)
    predictor = Predictor(
        checkpoint, device=dev, dtype=dtype, expected_sha256=expected_sha256, batch_size=batch_size
    )
    if compile_model if compile_model is not None else dev.startswith("cuda"):
        buckets = compile_encoders(predictor, cuda_graphs=cuda_graphs and dev.startswith("cuda"))
        started = time.perf_counter()
        calls = predictor.warm_up_buckets(attributions=True)
        logger.info(
            "compiled the encoders for %d shapes (rows %s, note lengths %s) in %.1f s",
            calls,
            buckets.rows,
            buckets.note_lengths,
            time.perf_counter() - started,
        )
    for size in warm_up_batches:
        predictor.predict(warm_up_inputs(size))
    logger.info(
        "model %s %s (sha256 %s) loaded on %s/%s",
        predictor.model_name,
        predictor.model_version,
        predictor.sha256[:12],
        dev,
        dtype,
    )
    return predictor
