"""bf16 autocast on CUDA agrees with fp32 (skipped without CUDA).

Tolerance: probabilities within 0.02 absolute and logits within 0.1 absolute on every
patient; bf16 keeps 8 mantissa bits, so a relative error near 0.4% per operation is
expected, accumulated over a few layers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fusion.inputs import BundleInput
from fusion.predictor import Predictor

pytestmark = pytest.mark.gpu

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@requires_cuda
def test_bf16_matches_fp32(checkpoint_dir: Path, inputs: list[BundleInput]) -> None:
    fp32 = Predictor(checkpoint_dir, device="cuda", dtype="float32")
    bf16 = Predictor(checkpoint_dir, device="cuda", dtype="bfloat16")
    cpu = Predictor(checkpoint_dir, device="cpu")
    a = fp32.predict(inputs, attributions=False)
    b = bf16.predict(inputs, attributions=True)
    c = cpu.predict(inputs, attributions=False)
    logit_a = np.array([o.logit for o in a])
    logit_b = np.array([o.logit for o in b])
    prob_a = np.array([o.probability for o in a])
    prob_b = np.array([o.probability for o in b])
    print(f"max |logit bf16 - fp32| = {np.abs(logit_a - logit_b).max():.5f}")
    print(f"max |prob bf16 - fp32| = {np.abs(prob_a - prob_b).max():.5f}")
    assert np.abs(logit_a - logit_b).max() < 0.1
    assert np.abs(prob_a - prob_b).max() < 0.02
    assert np.allclose(logit_a, [o.logit for o in c], atol=1e-3)
    assert all(
        np.isfinite(np.array(o.attributions["image"]["heatmap"])).all()
        for o in b
        if o.attributions["image"] is not None
    )
