"""The Predictor: batched outputs, intervals, attributions, insufficient data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fusion.inputs import MODALITIES, BundleInput, Demographics, NoteItem, ObsItem
from fusion.predictor import Predictor
from fusion.synthetic import SyntheticPatient


@pytest.fixture(scope="module")
def predictor(checkpoint_dir: Path) -> Predictor:
    return Predictor(checkpoint_dir, batch_size=8)


def test_one_output_per_input_in_order(predictor: Predictor, inputs: list[BundleInput]) -> None:
    outputs = predictor.predict(inputs[:20], attributions=False)
    assert len(outputs) == 20
    again = [predictor.predict([item], attributions=False)[0] for item in inputs[:20:7]]
    for single, batched in zip(again, outputs[:20:7], strict=True):
        assert np.isclose(single.probability, batched.probability, atol=1e-5)
    for out, item in zip(outputs, inputs[:20], strict=True):
        assert 0.0 <= out.interval_low <= out.probability <= out.interval_high <= 1.0
        assert out.missing_modalities == item.missing_modalities()
        assert out.model_sha256 == predictor.sha256
        assert out.model_version == "0.0.1-test"


def test_outputs_are_json_serialisable(predictor: Predictor, inputs: list[BundleInput]) -> None:
    for out in predictor.predict(inputs[:6]):
        json.dumps(out.to_dict())


def test_attribution_shapes(
    predictor: Predictor, cohort: list[SyntheticPatient], inputs: list[BundleInput]
) -> None:
    full = next(i for i in inputs if not i.missing_modalities())
    big = BundleInput(
        image=np.repeat(np.repeat(full.image, 3, axis=0), 2, axis=1),
        notes=full.notes,
        observations=full.observations,
        demographics=full.demographics,
    )
    out_full, out_big = predictor.predict([full, big])
    attributions = out_full.attributions
    side = predictor.checkpoint.config.image.image_size  # the default cap: no finer detail
    assert attributions["image"]["image_shape"] == list(full.image.shape)
    heatmap = np.array(attributions["image"]["heatmap"])
    assert max(heatmap.shape) == min(side, max(full.image.shape))
    assert heatmap.min() >= 0.0 and np.isclose(heatmap.max(), 1.0)
    big_map = out_big.attributions["image"]
    assert big_map["image_shape"] == [3 * full.image.shape[0], 2 * full.image.shape[1]]
    assert np.array(big_map["heatmap"]).shape == (side, round(side * 2 / 3))
    wide = Predictor(predictor.checkpoint.directory, max_heatmap_side=512).predict([big])[0]
    assert np.array(wide.attributions["image"]["heatmap"]).shape == (192, 128)
    notes = attributions["notes"]
    assert notes[0]["token"] == "[CLS]"
    assert {"token", "score"} <= set(notes[1])
    assert any(entry["token"] == "progress" for entry in notes)
    kept = min(len(full.observations), predictor.checkpoint.config.max_obs_tokens)
    assert len(attributions["observations"]) == kept
    first = attributions["observations"][0]
    assert first["code"] == full.observations[first["index"]].code
    assert set(attributions["demographics"]) == {"age", "sex"}


def test_heatmap_is_capped(checkpoint_dir: Path, inputs: list[BundleInput]) -> None:
    capped = Predictor(checkpoint_dir, max_heatmap_side=16)
    item = next(i for i in inputs if i.image is not None)
    heatmap = capped.predict([item])[0].attributions["image"]
    assert heatmap["shape"] == [16, 16]
    assert heatmap["image_shape"] == list(item.image.shape)


def test_everything_missing_still_gives_a_probability(predictor: Predictor) -> None:
    (out,) = predictor.predict([BundleInput()])
    assert 0.0 < out.probability < 1.0
    assert out.missing_modalities == list(MODALITIES)
    assert out.missingness_pattern == "none"
    assert out.attributions["image"] is None and out.attributions["notes"] is None


def test_hand_built_bundle(predictor: Predictor) -> None:
    item = BundleInput(
        image=np.random.default_rng(0).integers(0, 4096, size=(300, 200)).astype(np.uint16),
        notes=[NoteItem("No consolidation. Afebrile.", -3600.0)],
        observations=[
            ObsItem("http://loinc.org", "8867-4", 120.0, "/min", -600.0, "vital-signs"),
            ObsItem("http://loinc.org", "99999-9", 3.0, "mg/L", -60.0, "laboratory"),
            ObsItem("http://loinc.org", "8867-4", 80.0, "/min", -60.0, "social-history"),
        ],
        demographics=Demographics(age_years=None, sex=None),
    )
    (out,) = predictor.predict([item])
    assert out.missing_modalities == []
    assert len(out.attributions["observations"]) == 2
    side = predictor.checkpoint.config.image.image_size
    assert np.array(out.attributions["image"]["heatmap"]).shape == (side, round(side * 2 / 3))
    assert out.attributions["image"]["image_shape"] == [300, 200]


def test_insufficient_data(checkpoint_dir: Path, inputs: list[BundleInput]) -> None:
    predictor = Predictor(checkpoint_dir)
    predictor.checkpoint.config.required_modalities = ("image", "labs")
    assert predictor.insufficient_data(BundleInput()) == ["image", "labs"]
    full = next(i for i in inputs if not i.missing_modalities())
    assert predictor.insufficient_data(full) == []
