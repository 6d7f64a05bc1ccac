"""The network on a tiny CPU configuration: shapes, masks, missing data, determinism."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from fusion.batch import Batch, bucket_by_length, collate
from fusion.config import FUSION_KINDS, FusionConfig, preset
from fusion.errors import ConfigError
from fusion.features import Featurizer
from fusion.inputs import MODALITIES, BundleInput
from fusion.model import FusionModel
from fusion.training import build_model


def _batch(featurizer: Featurizer, inputs: list[BundleInput], n: int = 16) -> Batch:
    encoded = [featurizer.encode(item) for item in inputs[:n]]
    return collate(encoded, featurizer.config.image.image_size)


def test_collate_shapes_and_masks(featurizer: Featurizer, inputs: list[BundleInput]) -> None:
    batch = _batch(featurizer, inputs)
    size = featurizer.config.image.image_size
    assert batch.image.shape == (16, 1, size, size)
    assert batch.note_ids.shape == batch.note_mask.shape == batch.note_times.shape
    assert batch.obs_codes.shape == batch.obs_mask.shape == batch.obs_values.shape
    presence = batch.presence().numpy()
    expected = np.array(
        [[m in item.present_modalities() for m in MODALITIES] for item in inputs[:16]]
    )
    assert np.array_equal(presence, expected)
    assert not batch.image[~batch.image_present].any()


@pytest.mark.parametrize("fusion", FUSION_KINDS)
def test_forward_shapes(fusion: str, featurizer: Featurizer, inputs: list[BundleInput]) -> None:
    config = preset("tiny").replace(fusion=fusion)
    model = FusionModel(config, featurizer.n_codes, featurizer.vocab_size).eval()
    logits, captured = model(_batch(featurizer, inputs))
    assert logits.shape == (16,)
    assert captured is None


@pytest.mark.parametrize("fusion", FUSION_KINDS)
def test_no_nan_with_any_subset_missing(
    fusion: str, featurizer: Featurizer, inputs: list[BundleInput]
) -> None:
    config = preset("tiny").replace(fusion=fusion)
    model = FusionModel(config, featurizer.n_codes, featurizer.vocab_size).eval()
    batch = _batch(featurizer, inputs)
    for hidden in itertools.product([False, True], repeat=len(MODALITIES)):
        mask = torch.tensor(hidden).expand(batch.size, len(MODALITIES))
        logits, _ = model(batch.hide(mask))
        assert torch.isfinite(logits).all(), hidden


def test_no_nan_when_everything_is_missing(featurizer: Featurizer) -> None:
    model = FusionModel(preset("tiny"), featurizer.n_codes, featurizer.vocab_size).eval()
    empty = [featurizer.encode(BundleInput()) for _ in range(3)]
    logits, _ = model(collate(empty, featurizer.config.image.image_size))
    assert torch.isfinite(logits).all()
    assert torch.allclose(logits, logits[0].expand(3))


def test_gradients_are_finite_when_everything_is_missing(featurizer: Featurizer) -> None:
    model = FusionModel(preset("tiny"), featurizer.n_codes, featurizer.vocab_size)
    logits, _ = model(collate([featurizer.encode(BundleInput())], 32))
    logits.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_hidden_modality_has_no_influence(
    featurizer: Featurizer, inputs: list[BundleInput]
) -> None:
    model = FusionModel(preset("tiny"), featurizer.n_codes, featurizer.vocab_size).eval()
    batch = _batch(featurizer, inputs)
    hidden = torch.tensor([True, False, False, False]).expand(batch.size, 4)
    masked = batch.hide(hidden)
    scrambled = masked.hide(hidden)
    scrambled.image = torch.randn_like(batch.image)
    assert torch.allclose(model(masked)[0], model(scrambled)[0], atol=1e-6)


def test_single_modality_model_ignores_the_others(
    featurizer: Featurizer, inputs: list[BundleInput]
) -> None:
    config = preset("tiny").replace(modalities=("labs",))
    model = FusionModel(config, featurizer.n_codes, featurizer.vocab_size).eval()
    batch = _batch(featurizer, inputs)
    assert torch.allclose(model(batch)[0], model(batch.keep_only(["labs"]))[0], atol=1e-6)


def test_same_seed_same_model(featurizer: Featurizer, inputs: list[BundleInput]) -> None:
    config = preset("tiny")
    batch = _batch(featurizer, inputs)
    first = build_model(config, featurizer.n_codes, featurizer.vocab_size).eval()
    second = build_model(config, featurizer.n_codes, featurizer.vocab_size).eval()
    assert torch.equal(first(batch)[0], second(batch)[0])


def test_convnext_image_encoder(featurizer: Featurizer, inputs: list[BundleInput]) -> None:
    config = preset("tiny")
    config.image.kind = "convnext"
    model = FusionModel(config, featurizer.n_codes, featurizer.vocab_size).eval()
    logits, _ = model(_batch(featurizer, inputs, n=4))
    assert logits.shape == (4,)
    assert torch.isfinite(logits).all()


def test_cnn_image_encoder(featurizer: Featurizer, inputs: list[BundleInput]) -> None:
    config = preset("tiny")
    config.image.kind, config.image.num_layers = "cnn", 2
    model = FusionModel(config, featurizer.n_codes, featurizer.vocab_size).eval()
    side = config.image.image_size // 4
    assert model.image.n_tokens == side * side
    logits, _ = model(_batch(featurizer, inputs, n=4))
    assert logits.shape == (4,)
    assert torch.isfinite(logits).all()


def test_cnn_shape_probe_leaves_batchnorm_statistics_alone() -> None:
    config = preset("tiny")
    config.image.kind = "cnn"
    model = FusionModel(config, n_codes=4, vocab_size=8)
    for module in model.image.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            assert module.num_batches_tracked.item() == 0
            assert torch.equal(module.running_mean, torch.zeros_like(module.running_mean))
    assert model.image.training


def test_auxiliary_heads(featurizer: Featurizer, inputs: list[BundleInput]) -> None:
    config = preset("tiny")
    config.train.auxiliary_weight = 0.5
    model = FusionModel(config, featurizer.n_codes, featurizer.vocab_size).eval()
    batch = _batch(featurizer, inputs, n=8)
    logits, auxiliary, present = model.forward_with_auxiliary(batch)
    assert torch.equal(logits, model(batch)[0])
    assert auxiliary.shape == present.shape == (8, len(MODALITIES))
    assert torch.equal(present, batch.presence())


def test_no_auxiliary_heads_by_default_keeps_the_state_dict(
    featurizer: Featurizer, inputs: list[BundleInput]
) -> None:
    model = FusionModel(preset("tiny"), featurizer.n_codes, featurizer.vocab_size)
    assert model.auxiliary is None
    assert not any(key.startswith("auxiliary") for key in model.state_dict())
    with pytest.raises(ValueError):
        model.forward_with_auxiliary(_batch(featurizer, inputs, n=2))


def test_config_without_new_training_keys_still_loads() -> None:
    data = preset("tiny").to_dict()
    del data["train"]["single_modality_rate"], data["train"]["auxiliary_weight"]
    del data["train"]["single_view_weight"], data["train"]["ema_decay"]
    config = FusionConfig.from_dict(data)
    assert config.train.single_modality_rate == 0.0
    assert config.train.auxiliary_weight == 0.0
    assert config.train.single_view_weight == 0.0
    assert config.train.ema_decay == 0.0


def test_invalid_config_is_refused() -> None:
    with pytest.raises(ConfigError):
        FusionConfig(fusion="concatenate")
    with pytest.raises(ConfigError):
        FusionConfig(modalities=("image", "genome"))
    with pytest.raises(ConfigError):
        preset("tiny").replace(image={"kind": "resnet"})
    with pytest.raises(ConfigError):
        preset("huge")


@pytest.mark.parametrize("name", ["tiny", "demo", "benchmark", "production"])
def test_config_round_trips(name: str) -> None:
    config = preset(name)
    assert FusionConfig.from_dict(config.to_dict()) == config


def test_benchmark_preset_is_the_demo_architecture_with_its_own_recipe() -> None:
    demo, benchmark = preset("demo").to_dict(), preset("benchmark").to_dict()
    for key in ("image", "text", "d_model", "num_latents", "num_fusion_layers", "fusion"):
        assert benchmark[key] == demo[key], key
    assert benchmark["train"]["single_view_weight"] > 0
    assert benchmark["train"]["ema_decay"] > 0
    assert benchmark["train"]["distill_weight"] == 1.0 and benchmark["train"]["teacher_init"]
    assert benchmark["train"]["teacher_encoder_lr_scale"] == 0.0  # frozen teacher encoders


def test_bucket_by_length_covers_every_index_once() -> None:
    lengths = [5, 1, 9, 3, 3, 7, 2]
    for rng in (None, np.random.default_rng(0)):
        groups = bucket_by_length(lengths, 3, rng)
        assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
        assert all(len(g) <= 3 for g in groups)
    ordered = bucket_by_length(lengths, 3)
    assert [lengths[i] for i in ordered[0]] == [1, 2, 3]


def test_forward_training_views_match_the_hidden_forward(
    featurizer: Featurizer, inputs: list[BundleInput]
) -> None:
    config = preset("tiny")
    config.train.auxiliary_weight = 0.5
    model = FusionModel(config, featurizer.n_codes, featurizer.vocab_size).eval()
    batch = _batch(featurizer, inputs)
    hidden = torch.from_numpy(np.random.default_rng(0).random((batch.size, 4)) < 0.5)
    out = model.forward_training(batch, hidden, single_views=True)
    assert torch.allclose(out.logits, model(batch.hide(hidden))[0], atol=1e-5)
    assert torch.equal(out.present, batch.presence())
    assert out.single is not None and out.auxiliary is not None
    for m, modality in enumerate(MODALITIES):
        rows = out.present[:, m]
        alone = model(batch.keep_only([modality]))[0]
        assert torch.allclose(out.single[rows, m], alone[rows], atol=1e-5), modality
    # The auxiliary heads read every modality the bundle has, whatever the view hides.
    unhidden = model.forward_training(batch)
    assert unhidden.auxiliary is not None
    assert torch.allclose(out.auxiliary, unhidden.auxiliary, atol=1e-6)
    assert unhidden.single is None


def test_subset_logits_equal_the_keep_only_logits(
    featurizer: Featurizer, inputs: list[BundleInput]
) -> None:
    from fusion.training import predict_logits, predict_subset_logits, subset_views

    items = [featurizer.encode(item) for item in inputs]
    for config in (preset("tiny"), preset("tiny").replace(modalities=("labs",))):
        model = FusionModel(config, featurizer.n_codes, featurizer.vocab_size)
        views = predict_subset_logits(model, items, batch_size=8)
        for subset, index in subset_views(items):
            expected = predict_logits(model, [items[i] for i in index], keep=subset)
            assert np.allclose(views[subset], expected, atol=1e-5), subset
