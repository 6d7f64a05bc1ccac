"""A short training run on the tiny configuration learns; resuming continues exactly."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from fusion import training
from fusion.config import FusionConfig, ImageConfig, preset
from fusion.errors import ConfigError
from fusion.features import Featurizer
from fusion.metrics import auroc
from fusion.model import FusionModel
from fusion.synthetic import generate_cohort
from fusion.training import build_model, calibrate, fit, predict_logits


@pytest.fixture(scope="module")
def data() -> dict[str, object]:
    config = preset("tiny")
    train = generate_cohort(700, seed=21)
    test = generate_cohort(300, seed=22)
    featurizer = Featurizer.fit(config, [p.to_bundle_input() for p in train])
    return {
        "config": config,
        "featurizer": featurizer,
        "train": [featurizer.encode(p.to_bundle_input()) for p in train],
        "train_y": np.array([p.label for p in train]),
        "test": [featurizer.encode(p.to_bundle_input()) for p in test],
        "test_y": np.array([p.label for p in test]),
    }


@pytest.mark.slow
def test_short_training_learns(data: dict[str, object]) -> None:
    torch.set_num_threads(2)
    featurizer = data["featurizer"]
    assert isinstance(featurizer, Featurizer)
    config = preset("tiny")
    config.train.epochs = 5
    model = build_model(config, featurizer.n_codes, featurizer.vocab_size)
    items, labels = data["train"], data["train_y"]
    assert isinstance(items, list) and isinstance(labels, np.ndarray)
    history = fit(model, items[:600], labels[:600], items[600:], labels[600:], show_progress=False)
    assert history["train_loss"][-1] < history["train_loss"][0]
    test_items, test_labels = data["test"], data["test_y"]
    assert isinstance(test_items, list) and isinstance(test_labels, np.ndarray)
    held_out = auroc(test_labels, predict_logits(model, test_items))
    assert held_out > 0.7, held_out
    calibration = calibrate(model, items[600:], labels[600:])
    assert calibration.fitted and 0.2 < calibration.temperature < 5.0
    assert calibration.counts["none"] == 100


@pytest.mark.slow
@pytest.mark.parametrize("ema_decay", [0.0, 0.99])
def test_resume_continues_exactly(
    data: dict[str, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ema_decay: float
) -> None:
    featurizer = data["featurizer"]
    assert isinstance(featurizer, Featurizer)
    items, labels = data["train"], data["train_y"]
    assert isinstance(items, list) and isinstance(labels, np.ndarray)
    items, labels = items[:160], labels[:160]
    config = preset("tiny")
    config.train.epochs, config.train.ema_decay = 2, ema_decay
    interrupted = tmp_path / "after_epoch_1.pt"
    original_save = training._Run.save

    def save_and_keep_first(run: training._Run, path: Path) -> None:
        original_save(run, path)
        if run.epoch == 0:
            shutil.copy(path, interrupted)

    monkeypatch.setattr(training._Run, "save", save_and_keep_first)

    def run(state: Path) -> torch.Tensor:
        model = build_model(config, featurizer.n_codes, featurizer.vocab_size)
        fit(
            model,
            items[:128],
            labels[:128],
            items[128:],
            labels[128:],
            state_path=state,
            show_progress=False,
        )
        return torch.from_numpy(predict_logits(model, items[128:]))

    straight = run(tmp_path / "straight.pt")
    resumed = run(interrupted)
    assert torch.allclose(straight, resumed, atol=1e-5)


def test_modality_dropout_mask_single_views_keep_one_present_modality() -> None:
    rng = np.random.default_rng(0)
    presence = rng.random((500, 4)) < 0.7
    hidden = training.modality_dropout_mask(presence, rng, rate=0.0, single_rate=1.0)
    kept = presence & ~hidden
    has_any = presence.any(axis=1)
    assert (kept[has_any].sum(axis=1) == 1).all()
    for modality in range(4):
        assert kept[:, modality].any()


def test_modality_dropout_mask_without_dropout_hides_nothing() -> None:
    presence = np.ones((64, 4), dtype=bool)
    hidden = training.modality_dropout_mask(
        presence, np.random.default_rng(1), rate=0.0, single_rate=0.0
    )
    assert not hidden.any()


def test_split_sizes() -> None:
    from fusion.pipeline import split_indices

    splits = split_indices(1000, seed=3)
    sizes = {name: len(index) for name, index in splits.items()}
    assert sizes == {"validation": 100, "calibration": 250, "train": 650}
    assert len(np.unique(np.concatenate(list(splits.values())))) == 1000


def test_training_with_single_modality_views_and_auxiliary_heads(
    data: dict[str, object],
) -> None:
    featurizer = data["featurizer"]
    assert isinstance(featurizer, Featurizer)
    config = preset("tiny")
    config.train.epochs, config.train.single_modality_rate = 2, 0.5
    config.train.auxiliary_weight = 0.5
    model = build_model(config, featurizer.n_codes, featurizer.vocab_size)
    assert model.auxiliary is not None
    items, labels = data["train"], data["train_y"]
    assert isinstance(items, list) and isinstance(labels, np.ndarray)
    history = fit(
        model, items[:300], labels[:300], items[300:400], labels[300:400], show_progress=False
    )
    assert np.isfinite(history["train_loss"]).all()
    assert np.isfinite(predict_logits(model, items[400:450])).all()


def test_extra_calibration_patients_go_to_calibration_only() -> None:
    from fusion.pipeline import split_indices

    plain = split_indices(1000, seed=3)
    extra = split_indices(1000, seed=3, extra_calibration=500)
    assert np.array_equal(plain["train"], extra["train"])
    assert np.array_equal(plain["validation"], extra["validation"])
    assert len(extra["calibration"]) == 750
    assert set(extra["calibration"]) - set(plain["calibration"]) == set(range(1000, 1500))


def test_training_with_single_views(data: dict[str, object]) -> None:
    featurizer = data["featurizer"]
    assert isinstance(featurizer, Featurizer)
    config = preset("tiny")
    config.train.epochs, config.train.single_view_weight = 1, 1.0
    model = build_model(config, featurizer.n_codes, featurizer.vocab_size)
    items, labels = data["train"], data["train_y"]
    assert isinstance(items, list) and isinstance(labels, np.ndarray)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    history = fit(
        model, items[:128], labels[:128], items[128:160], labels[128:160], show_progress=False
    )
    assert np.isfinite(history["train_loss"]).all()
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_moving_average_of_the_weights() -> None:
    model = torch.nn.Linear(2, 1)
    run = training._Run(model, torch.optim.SGD(model.parameters()), None)  # type: ignore[arg-type]
    with torch.no_grad():
        model.weight.fill_(1.0)
    run.update_ema(0.5)
    assert run.ema is not None and torch.equal(run.ema["weight"], torch.ones(1, 2))
    with torch.no_grad():
        model.weight.fill_(3.0)
    run.update_ema(0.5)  # rate min(0.5, 2 / 11) = 2 / 11
    expected = 2 / 11 * 1.0 + 9 / 11 * 3.0
    assert torch.allclose(run.ema["weight"], torch.full((1, 2), expected))
    assert torch.allclose(run.evaluated_weights()["weight"], torch.full((1, 2), expected))
    assert torch.equal(model.weight, torch.full((1, 2), 3.0))


def test_each_single_view_counts_like_a_whole_single_modality_loss() -> None:
    logits = torch.tensor([[0.0, 2.0, 0.0, 0.0], [0.0, -2.0, 0.0, 0.0]])
    present = torch.tensor([[True, True, False, False], [False, True, False, False]])
    target = torch.tensor([1.0, 0.0])
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    image = bce(torch.tensor(0.0), torch.tensor(1.0))  # one patient has an image
    notes = bce(torch.tensor([2.0, -2.0]), target)  # both have notes
    assert torch.isclose(training._per_modality_loss(logits, present, target), image + notes)


def test_auxiliary_factors_move_weight_between_encoders() -> None:
    logits = torch.tensor([[0.5, 2.0, 0.0, 0.0], [0.0, -2.0, 0.0, 0.0]])
    present = torch.tensor([[True, True, False, False], [False, True, False, False]])
    target = torch.tensor([1.0, 0.0])
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    image = bce(torch.tensor(0.5), torch.tensor(1.0))
    notes = bce(torch.tensor([2.0, -2.0]), target, reduction="sum")
    plain = training._auxiliary_loss(logits, present, target)
    assert torch.isclose(plain, (image + notes) / 3)  # a mean over the 3 modalities present
    weighted = training._auxiliary_loss(logits, present, target, {"image": 3.0})
    assert torch.isclose(weighted, (3 * image + notes) / 3)


def test_auxiliary_factors_name_known_modalities() -> None:
    config = preset("tiny")
    data = config.to_dict()
    data["train"]["auxiliary_modality_weights"] = {"xray": 2.0}
    with pytest.raises(ConfigError, match="xray"):
        FusionConfig.from_dict(data)


def test_distillation_mixes_the_teachers_into_the_single_view_targets() -> None:
    from fusion.model.network import TrainingOutputs

    single = torch.tensor([[0.5, 1.0, 0.0, 0.0], [0.0, -1.0, 0.0, 0.0]])
    present = torch.tensor([[True, True, False, False], [False, True, False, False]])
    out = TrainingOutputs(torch.zeros(2), present, None, single)
    target = torch.tensor([1.0, 0.0])
    teacher = torch.tensor([[0.8, 0.6, 0.5, 0.5], [0.3, 0.1, 0.5, 0.5]])
    settings = preset("tiny").train
    settings.single_view_weight = 1.0
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    fused = bce(torch.zeros(2), target)
    hard = training._training_loss(out, target, settings, teacher)
    assert torch.isclose(hard, fused + training._per_modality_loss(single, present, target))
    settings.distill_weight = 0.25
    soft = training._training_loss(out, target, settings, teacher)
    image = bce(torch.tensor(0.5), torch.tensor(0.75 * 1.0 + 0.25 * 0.8))
    notes = bce(torch.tensor([1.0, -1.0]), torch.tensor([0.75 + 0.25 * 0.6, 0.25 * 0.1]))
    assert torch.isclose(soft, fused + image + notes)


def test_distillation_needs_single_views_and_a_weight_in_range() -> None:
    data = preset("tiny").to_dict()
    data["train"]["distill_weight"] = 0.5
    with pytest.raises(ConfigError, match="single_view_weight"):
        FusionConfig.from_dict(data)
    data["train"]["single_view_weight"] = 1.0
    assert FusionConfig.from_dict(data).train.distill_weight == 0.5
    data["train"]["distill_weight"] = 1.5
    with pytest.raises(ConfigError, match="between 0 and 1"):
        FusionConfig.from_dict(data)
    teacher = training.config_for_ablation(
        FusionConfig.from_dict({**data, "train": {**data["train"], "distill_weight": 0.5}}),
        "only_notes",
    )
    assert teacher.train.distill_weight == 0.0 and teacher.modalities == ("notes",)


def test_fit_refuses_distillation_without_teachers(data: dict[str, object]) -> None:
    featurizer = data["featurizer"]
    assert isinstance(featurizer, Featurizer)
    config = preset("tiny")
    config.train.single_view_weight, config.train.distill_weight = 1.0, 0.5
    model = build_model(config, featurizer.n_codes, featurizer.vocab_size)
    items, labels = data["train"], data["train_y"]
    assert isinstance(items, list) and isinstance(labels, np.ndarray)
    with pytest.raises(ValueError, match="teachers"):
        fit(model, items[:50], labels[:50], items[50:60], labels[50:60], show_progress=False)
    with pytest.raises(ValueError, match=r"\(50, 4\)"):
        fit(
            model,
            items[:50],
            labels[:50],
            items[50:60],
            labels[50:60],
            show_progress=False,
            teacher_probabilities=np.full((49, 4), 0.5),
        )


@pytest.mark.slow
def test_distilled_training_trains_the_teachers_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fusion import pipeline

    seen: list[tuple[str, tuple[int, ...] | None]] = []
    real_fit = pipeline.fit

    def recording_fit(model, *args, **kwargs):  # type: ignore[no-untyped-def]
        teachers = kwargs.get("teacher_probabilities")
        seen.append((model.config.name, None if teachers is None else teachers.shape))
        if teachers is not None:  # probabilities of real teachers, not a constant
            assert np.all((teachers > 0) & (teachers < 1)) and teachers.std() > 0.01
        return real_fit(model, *args, **kwargs)

    monkeypatch.setattr(pipeline, "fit", recording_fit)
    started: list[str] = []
    real_start = pipeline.start_from_teachers

    def recording_start(model, teachers):  # type: ignore[no-untyped-def]
        started.append(model.config.name)
        return real_start(model, teachers)

    monkeypatch.setattr(pipeline, "start_from_teachers", recording_start)
    config = preset("tiny")
    config.train.epochs = 1
    config.train.single_view_weight, config.train.distill_weight = 1.0, 0.5
    config.train.teacher_init = True
    written = pipeline.train_on_synthetic(
        config, n_patients=160, seed=3, output_dir=tmp_path, show_progress=False
    )
    n_train = len(pipeline.split_indices(160, 3)["train"])
    names = [f"{config.name}-only_{m}" for m in ("image", "notes", "labs", "vitals")]
    assert seen == [*((n, None) for n in names), (config.name, (n_train, 4))]
    assert set(written) == {*names, config.name}
    assert (tmp_path / "ablations" / "only_notes").is_dir()
    assert started and started[-1] == config.name  # the fused model started from them


def _untrained_teachers(config: FusionConfig, featurizer: Featurizer) -> dict[str, FusionModel]:
    """Image and notes single-modality models of ``config``, as teachers (untrained)."""
    return {
        m: build_model(
            training.config_for_ablation(config, f"only_{m}"),
            featurizer.n_codes,
            featurizer.vocab_size,
        )
        for m in ("image", "notes")
    }


def test_encoders_start_from_their_teachers_at_a_lower_learning_rate(
    data: dict[str, object],
) -> None:
    featurizer = data["featurizer"]
    assert isinstance(featurizer, Featurizer)
    config = preset("tiny")
    config.train.teacher_init, config.train.teacher_encoder_lr_scale = True, 0.25
    teachers = _untrained_teachers(config, featurizer)
    for m, teacher in teachers.items():
        assert teacher.config.train.teacher_init is False
        with torch.no_grad():
            for p in teacher.parameters():
                p.add_(1.0 if m == "image" else 2.0)
    model = build_model(config, featurizer.n_codes, featurizer.vocab_size)
    copied = training.start_from_teachers(model, teachers)
    assert copied == model.from_teachers
    assert {n.split(".")[0] for n in copied} == {"image", "notes", "note_time"}
    image, notes = teachers["image"], teachers["notes"]
    for name, p in model.named_parameters():
        root = name.split(".")[0]
        if root == "image":
            assert torch.equal(p, image.get_parameter(name))
        elif root in ("notes", "note_time"):
            assert torch.equal(p, notes.get_parameter(name))
        else:
            assert not torch.equal(p, image.get_parameter(name)), name
    run = training._new_run(model, 100)
    rates = sorted(g["lr"] for g in run.optimizer.param_groups)
    assert rates == [config.train.learning_rate * 0.25, config.train.learning_rate]
    model.config.train.teacher_encoder_lr_scale = 0.0  # frozen
    assert training.start_from_teachers(model, teachers) == copied
    run = training._new_run(model, 100)
    (group,) = run.optimizer.param_groups
    optimized = {id(p) for p in group["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in optimized) is p.requires_grad is (name not in copied), name
    with pytest.raises(ValueError, match="notes"):
        training.start_from_teachers(model, {"image": image})


def test_frozen_teacher_encoders_stay_exactly_the_teachers_through_training(
    data: dict[str, object],
) -> None:
    """Frozen means the whole module: the CNN's BatchNorm statistics (buffers, not
    parameters) must not move with the fused model's batches either."""
    featurizer = data["featurizer"]
    items, labels = data["train"], data["train_y"]
    assert isinstance(featurizer, Featurizer)
    assert isinstance(items, list) and isinstance(labels, np.ndarray)
    config = preset("tiny")
    config.image = ImageConfig(kind="cnn", image_size=32, hidden_size=32, num_layers=2)
    config.train.epochs, config.train.teacher_init = 1, True
    config.train.teacher_encoder_lr_scale = 0.0
    teachers = _untrained_teachers(config, featurizer)
    model = build_model(config, featurizer.n_codes, featurizer.vocab_size)
    training.start_from_teachers(model, teachers)
    fit(model, items[:96], labels[:96], items[96:128], labels[96:128], show_progress=False)
    for name, teacher in (("image", teachers["image"]), ("notes", teachers["notes"])):
        kept, given = getattr(model, name).state_dict(), getattr(teacher, name).state_dict()
        assert any("running_mean" in key for key in kept) or name != "image"
        for key, value in given.items():
            assert torch.equal(kept[key], value), f"{name}.{key}"
    model.train()
    assert not model.image.training and model.head.training
