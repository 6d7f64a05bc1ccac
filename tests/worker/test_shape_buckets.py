"""Compiled encoders see only bucketed shapes: compiled once at warm-up, never again.

Runs on CPU with the ``eager`` compile backend: TorchDynamo traces and guards exactly as
with inductor on a GPU (a new input shape is a recompile), without generating kernels.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch._dynamo

from fusion.model.network import ShapeBuckets
from fusion.predictor import Predictor
from fusion.synthetic import generate_cohort
from tests.integration.pipeline_support import tiny_checkpoint
from worker.model import compile_encoders

#: Batch sizes a dynamic batcher produces under changing load, with modalities missing.
BATCHES = (1, 3, 5, 9, 16)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_checkpoint(tmp_path_factory.mktemp("buckets") / "model")


@pytest.fixture(autouse=True)
def fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _cohorts() -> list[list[object]]:
    rates = {"image": 0.3, "notes": 0.3, "labs": 0.2, "vitals": 0.2}
    patients = generate_cohort(sum(BATCHES), seed=21, missing_rates=rates)
    cohort = [p.to_bundle_input() for p in patients]
    out, start = [], 0
    for size in BATCHES:
        out.append(cohort[start : start + size])
        start += size
    return out


def test_buckets_cover_the_batch_size_and_note_lengths() -> None:
    from fusion.config import preset

    config = preset("production")
    buckets = ShapeBuckets.for_model(config, 32)
    assert buckets.rows == (1, 4, 16, 32)
    assert buckets.note_lengths == (128, 256, 512)
    assert ShapeBuckets.fit(5, buckets.rows) == 16
    assert ShapeBuckets.fit(32, buckets.rows) == 32
    assert ShapeBuckets.fit(300, buckets.note_lengths) == 512


def test_padded_encoders_give_the_same_predictions(checkpoint: Path) -> None:
    exact = Predictor(checkpoint, batch_size=16)
    padded = Predictor(checkpoint, batch_size=16)
    padded.model.shape_buckets = ShapeBuckets.for_model(padded.model.config, 16)
    for inputs in _cohorts():
        a = exact.predict(inputs)
        b = padded.predict(inputs)
        assert np.allclose([o.probability for o in a], [o.probability for o in b], atol=1e-5)
        for x, y in zip(a, b, strict=True):
            if x.attributions["image"] is not None:
                heatmap = y.attributions["image"]["heatmap"]
                assert np.allclose(x.attributions["image"]["heatmap"], heatmap, atol=1e-3)
            contributions = [o["contribution"] for o in y.attributions["observations"]]
            assert [o["contribution"] for o in x.attributions["observations"]] == pytest.approx(
                contributions, abs=1e-4
            )
            if x.attributions["notes"] is not None:
                scores = [t["score"] for t in y.attributions["notes"]]
                assert [t["score"] for t in x.attributions["notes"]] == pytest.approx(
                    scores, abs=1e-4
                )


def test_compiled_encoders_never_recompile_after_warm_up(checkpoint: Path) -> None:
    predictor = Predictor(checkpoint, batch_size=16)
    buckets = compile_encoders(predictor, backend="eager")
    assert predictor.warm_up_buckets(attributions=True) == buckets.shapes
    with torch.compiler.set_stance("fail_on_recompile"):
        for inputs in _cohorts():
            outputs = predictor.predict(inputs)
            assert all(np.isfinite(o.probability) for o in outputs)


def test_without_buckets_a_new_batch_shape_recompiles(checkpoint: Path) -> None:
    """The control: the check above does catch a recompile."""
    predictor = Predictor(checkpoint, batch_size=16)
    compile_encoders(predictor, backend="eager")
    predictor.model.shape_buckets = None
    first, *others = _cohorts()
    predictor.predict(first)
    with (
        pytest.raises(RuntimeError, match="recompil"),
        torch.compiler.set_stance("fail_on_recompile"),
    ):
        for inputs in others:
            predictor.predict(inputs)
