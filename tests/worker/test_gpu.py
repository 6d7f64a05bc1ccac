"""GPU paths of the worker (marked ``gpu``; skipped without CUDA)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry, generate_latest

from fusion.synthetic import generate_cohort
from tests.integration.pipeline_support import tiny_checkpoint
from worker.gpu import register_gpu_metrics
from worker.model import load_predictor

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

#: bf16 autocast and compiled kernels against fp32 eager: the probability may move this much.
PROBABILITY_TOLERANCE = 0.02


@pytest.mark.gpu
@needs_cuda
def test_compiled_bf16_model_agrees_with_eager_fp32(tmp_path: Path) -> None:
    checkpoint = tiny_checkpoint(tmp_path / "model")
    inputs = [p.to_bundle_input() for p in generate_cohort(16, seed=9)]
    eager = load_predictor(checkpoint, device="cpu", compile_model=False)
    compiled = load_predictor(
        checkpoint, device="cuda", compile_model=True, warm_up_batches=(1, 16)
    )
    reference = np.array([o.probability for o in eager.predict(inputs, attributions=False)])
    fast = np.array([o.probability for o in compiled.predict(inputs, attributions=False)])
    assert np.all(np.isfinite(fast))
    assert np.max(np.abs(fast - reference)) < PROBABILITY_TOLERANCE


@pytest.mark.gpu
@needs_cuda
def test_compiled_worker_model_serves_any_batch_without_recompiling(tmp_path: Path) -> None:
    checkpoint = tiny_checkpoint(tmp_path / "model")
    rates = {"image": 0.3, "notes": 0.3, "labs": 0.2, "vitals": 0.2}
    inputs = [p.to_bundle_input() for p in generate_cohort(40, seed=4, missing_rates=rates)]
    compiled = load_predictor(checkpoint, device="cuda", batch_size=16, compile_model=True)
    with torch.compiler.set_stance("fail_on_recompile"):
        for start, size in ((0, 1), (1, 3), (4, 7), (11, 16), (27, 13)):
            outputs = compiled.predict(inputs[start : start + size])
            assert all(np.isfinite(o.probability) for o in outputs)


@pytest.mark.gpu
@needs_cuda
def test_cuda_graphs_agree_with_eager_fp32(tmp_path: Path) -> None:
    checkpoint = tiny_checkpoint(tmp_path / "model")
    rates = {"image": 0.3, "notes": 0.3, "labs": 0.2, "vitals": 0.2}
    inputs = [p.to_bundle_input() for p in generate_cohort(24, seed=5, missing_rates=rates)]
    eager = load_predictor(checkpoint, device="cpu", compile_model=False)
    graphed = load_predictor(
        checkpoint, device="cuda", batch_size=16, compile_model=True, cuda_graphs=True
    )
    for start, size in ((0, 1), (1, 5), (6, 16), (22, 2)):
        chunk = inputs[start : start + size]
        reference = np.array([o.probability for o in eager.predict(chunk)])
        outputs = graphed.predict(chunk)
        fast = np.array([o.probability for o in outputs])
        assert np.max(np.abs(fast - reference)) < PROBABILITY_TOLERANCE
        assert all(
            o.attributions["image"] is None or o.attributions["image"]["heatmap"] for o in outputs
        )


@pytest.mark.gpu
@needs_cuda
def test_gpu_memory_is_exported() -> None:
    registry = CollectorRegistry()
    register_gpu_metrics(registry)
    torch.ones(1024, device="cuda")
    assert b"cdsfusion_gpu_memory_allocated_bytes" in generate_latest(registry)


def test_gpu_metrics_are_absent_without_cuda() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    registry = CollectorRegistry()
    register_gpu_metrics(registry)
    assert b"cdsfusion_gpu" not in generate_latest(registry)
