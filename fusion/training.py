"""The training loop, batched inference, and post-hoc calibration of a fitted model."""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fusion.batch import Batch, bucket_by_length, collate
from fusion.calibration import Calibration, fit_calibration
from fusion.config import FusionConfig, TrainConfig
from fusion.features import EncodedBundle
from fusion.inputs import MODALITIES, pattern_key
from fusion.model import FusionModel
from fusion.model.network import TrainingOutputs
from fusion.progress import progress_bar

logger = logging.getLogger(__name__)

ALL_SUBSETS: tuple[tuple[str, ...], ...] = tuple(
    subset for r in range(len(MODALITIES) + 1) for subset in itertools.combinations(MODALITIES, r)
)
"""Every subset of MODALITIES (16), from none to all."""


def autocast(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager[Any]:
    """bf16/fp16 autocast on CUDA when ``dtype`` asks for it; a no-op otherwise."""
    if device.type == "cuda" and dtype in (torch.bfloat16, torch.float16):
        return torch.autocast(device_type="cuda", dtype=dtype)
    return contextlib.nullcontext()


def batches(
    items: Sequence[EncodedBundle],
    batch_size: int,
    image_size: int,
    rng: np.random.Generator | None = None,
) -> Iterator[tuple[list[int], Batch]]:
    """(indices, collated batch) over ``items``, bucketed by token length."""
    for index in bucket_by_length([it.length for it in items], batch_size, rng):
        yield index, collate([items[i] for i in index], image_size)


def _presence(items: Sequence[EncodedBundle]) -> np.ndarray:
    """(N, 4) bool presence of MODALITIES per encoded bundle."""
    return np.array(
        [
            [
                it.image is not None,
                len(it.note_ids) > 0,
                bool((it.obs_category == 0).any()),
                bool((it.obs_category == 1).any()),
            ]
            for it in items
        ],
        dtype=bool,
    ).reshape(len(items), len(MODALITIES))


def modality_dropout_mask(
    presence: np.ndarray, rng: np.random.Generator, *, rate: float, single_rate: float
) -> np.ndarray:
    """Which modalities to hide from each training patient.

    With probability ``single_rate`` a patient keeps exactly one of its present
    modalities (chosen uniformly), so that every single-modality view is trained as often
    as a single-modality model would train it; otherwise each modality is hidden
    independently with probability ``rate``.

    Args:
        presence: (B, 4) bool presence in MODALITIES order.
        rng: Random generator (consumed deterministically).
        rate: Independent hiding probability per modality.
        single_rate: Probability of a single-modality view.

    Returns:
        (B, 4) bool, True = hide.
    """
    presence = np.asarray(presence, dtype=bool)
    hidden = rng.random(presence.shape) < rate
    single = rng.random(len(presence)) < single_rate
    scores = np.where(presence, rng.random(presence.shape), -1.0)
    keep = scores.argmax(axis=1)
    one = np.arange(presence.shape[1])[None, :] != keep[:, None]
    use_single = single & presence.any(axis=1)
    hidden[use_single] = one[use_single]
    return hidden


@torch.no_grad()
def predict_logits(
    model: FusionModel,
    items: Sequence[EncodedBundle],
    *,
    keep: Sequence[str] | None = None,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> np.ndarray:
    """Raw logits of ``items`` in their order.

    Args:
        model: The network (put in eval mode here).
        items: Encoded bundles.
        keep: When given, every other modality is hidden (missing-subset evaluation).
        batch_size: Bundles per forward pass. Defaults to 128.
        device: Torch device. Defaults to CPU.
        dtype: ``torch.bfloat16`` enables autocast on CUDA. Defaults to float32.

    Returns:
        (N,) float64 logits.
    """
    device = torch.device(device)
    model.eval().to(device)
    out = np.zeros(len(items), dtype=np.float64)
    for index, padded in batches(items, batch_size, model.config.image.image_size):
        batch = padded.to(device)
        if keep is not None:
            batch = batch.keep_only(keep)
        with autocast(device, dtype):
            logits, _ = model(batch)
        out[index] = logits.float().cpu().numpy()
    return out


@torch.no_grad()
def predict_subset_logits(
    model: FusionModel,
    items: Sequence[EncodedBundle],
    subsets: Sequence[tuple[str, ...]] = ALL_SUBSETS,
    *,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> dict[tuple[str, ...], np.ndarray]:
    """Raw logits of every missing-modality view, one encoder pass per bundle.

    For each subset S, the bundles that have every modality of S (the indices
    :func:`subset_views` gives, in that order) are scored with every other modality
    hidden: the same numbers as ``predict_logits(model, chosen, keep=S)``, for the cost of
    one encoding plus one fusion-head pass per view.

    Args:
        model: The network (put in eval mode here).
        items: Encoded bundles.
        subsets: The subsets to score. Defaults to all 16.
        batch_size: Bundles per forward pass. Defaults to 128.
        device: Torch device. Defaults to CPU.
        dtype: ``torch.bfloat16`` enables autocast on CUDA. Defaults to float32.

    Returns:
        Subset -> (n_S,) float64 logits, aligned with :func:`subset_views` indices.
    """
    device = torch.device(device)
    model.eval().to(device)
    presence = _presence(items)
    out = {s: np.full(len(items), np.nan) for s in subsets}
    for index, padded in batches(items, batch_size, model.config.image.image_size):
        batch = padded.to(device)
        with autocast(device, dtype):
            encoded = model.encode(batch)
            for subset in subsets:
                need = np.array([m in subset for m in MODALITIES])
                rows = np.nonzero((presence[index] | ~need).all(axis=1))[0]
                if len(rows) == 0:
                    continue
                chosen = model.select(encoded, torch.from_numpy(rows).to(device))
                logits = model.view(chosen, torch.from_numpy(need).to(device))
                out[subset][np.asarray(index)[rows]] = logits.float().cpu().numpy()
    views = dict(subset_views(items))
    return {s: out[s][views[s]] for s in subsets}


def _evaluate_loss(
    model: FusionModel, items: Sequence[EncodedBundle], labels: np.ndarray, device: torch.device
) -> float:
    logits = predict_logits(model, items, device=device)
    z = torch.from_numpy(logits)
    y = torch.from_numpy(labels.astype(np.float64))
    return float(torch.nn.functional.binary_cross_entropy_with_logits(z, y))


@dataclass
class _Run:
    """Everything that a resumed training run needs."""

    model: FusionModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    history: dict[str, list[float]] = field(
        default_factory=lambda: {"train_loss": [], "val_loss": []}
    )
    best: dict[str, torch.Tensor] | None = None
    best_loss: float = math.inf
    epoch: int = -1
    ema: dict[str, torch.Tensor] | None = None
    steps: int = 0

    def save(self, path: Path) -> None:
        torch.save(
            {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "best": self.best,
                "best_loss": self.best_loss,
                "history": self.history,
                "epoch": self.epoch,
                "ema": self.ema,
                "steps": self.steps,
            },
            path,
        )

    def load(self, path: Path, device: torch.device) -> None:
        state = torch.load(path, map_location=device, weights_only=True)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.best, self.best_loss = state["best"], float(state["best_loss"])
        self.history = {k: list(v) for k, v in state["history"].items()}
        self.epoch = int(state["epoch"])
        self.ema = state.get("ema")
        self.steps = int(state.get("steps", 0))

    def update_ema(self, decay: float) -> None:
        """Fold the current weights into the exponential moving average.

        The effective decay ``min(decay, (1 + t) / (10 + t))`` after ``t`` steps averages
        over roughly the last tenth of the steps taken until ``decay`` caps it, so short
        runs are not dominated by their initial weights. Integer buffers (BatchNorm step
        counts) are copied.
        """
        current = self.model.state_dict()
        if self.ema is None:
            self.ema = {k: v.detach().clone() for k, v in current.items()}
        rate = min(decay, (1.0 + self.steps) / (10.0 + self.steps))
        with torch.no_grad():
            for key, value in current.items():
                if value.dtype.is_floating_point:
                    self.ema[key].mul_(rate).add_(value.detach(), alpha=1.0 - rate)
                else:
                    self.ema[key].copy_(value)
        self.steps += 1

    def evaluated_weights(self) -> dict[str, torch.Tensor]:
        """A copy of the weights that validation sees: the average when kept, else live."""
        source = self.ema if self.ema is not None else self.model.state_dict()
        return {k: v.detach().clone() for k, v in source.items()}


def _new_run(model: FusionModel, n_train: int) -> _Run:
    settings = model.config.train
    started = model.from_teachers
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups: list[dict[str, Any]] = [
        {"params": [p for n, p in trainable if n not in started]},
        {
            "params": [p for n, p in trainable if n in started],
            "lr": settings.learning_rate * settings.teacher_encoder_lr_scale,
        },
    ]
    optimizer = torch.optim.AdamW(
        [g for g in groups if g["params"]],
        lr=settings.learning_rate,
        weight_decay=settings.weight_decay,
    )
    total = max(1, math.ceil(n_train / settings.batch_size) * settings.epochs)
    warmup = max(1, total // 20)

    def schedule(step: int) -> float:
        ramp = min(1.0, (step + 1) / warmup)
        return ramp * 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))

    return _Run(model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule))


def _auxiliary_loss(
    auxiliary: torch.Tensor,
    present: torch.Tensor,
    target: torch.Tensor,
    factors: dict[str, float] | None = None,
) -> torch.Tensor:
    """Mean BCE of per-modality logits (B, 4) over the modalities present.

    ``factors`` scales the loss of the named modalities (others keep 1); the mean is
    still taken over the modalities present, so the factors move weight between encoders.
    """
    losses = torch.nn.functional.binary_cross_entropy_with_logits(
        auxiliary, target.unsqueeze(1).expand_as(auxiliary), reduction="none"
    )
    weight = present.to(losses.dtype)
    scale = losses.new_tensor([(factors or {}).get(m, 1.0) for m in MODALITIES])
    return (losses * weight * scale).sum() / weight.sum().clamp(min=1.0)


def _training_loss(
    out: TrainingOutputs,
    target: torch.Tensor,
    settings: TrainConfig,
    teacher: torch.Tensor | None = None,
) -> torch.Tensor:
    """BCE of the training view plus the weighted auxiliary and single-view losses.

    ``teacher`` (B, 4): the single-modality teachers' probabilities, mixed into the
    targets of the single-modality views with weight ``settings.distill_weight``.
    """
    loss = torch.nn.functional.binary_cross_entropy_with_logits(out.logits.float(), target)
    if out.auxiliary is not None:
        auxiliary = _auxiliary_loss(
            out.auxiliary.float(), out.present, target, settings.auxiliary_modality_weights
        )
        loss = loss + settings.auxiliary_weight * auxiliary
    if out.single is not None:
        view_target = target.unsqueeze(1).expand_as(out.single)
        if teacher is not None and settings.distill_weight > 0:
            w = settings.distill_weight
            view_target = (1.0 - w) * view_target + w * teacher.to(view_target)
        single = _per_modality_loss(out.single.float(), out.present, view_target)
        loss = loss + settings.single_view_weight * single
    return loss


def _per_modality_loss(
    logits: torch.Tensor, present: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """Sum over modalities of the mean BCE of that modality's single view (B, 4).

    ``target`` is (B,) labels, or (B, 4) soft targets per view. Each single-modality view
    weighs like the whole loss of a single-modality model, whatever the number of
    modalities a patient has.
    """
    if target.dim() == 1:
        target = target.unsqueeze(1).expand_as(logits)
    losses = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    weight = present.to(losses.dtype)
    per_modality = (losses * weight).sum(dim=0) / weight.sum(dim=0).clamp(min=1.0)
    return per_modality.sum()


def _train_epoch(
    run: _Run,
    items: Sequence[EncodedBundle],
    labels: torch.Tensor,
    *,
    epoch: int,
    device: torch.device,
    show_progress: bool,
    teacher: torch.Tensor | None = None,
) -> float:
    model, settings = run.model, run.model.config.train
    rng = np.random.default_rng([settings.seed, epoch])
    torch.manual_seed(settings.seed * 100_003 + epoch)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model.train()
    losses: list[float] = []
    bar = progress_bar(
        total=math.ceil(len(items) / settings.batch_size),
        desc=f"{model.config.name} epoch {epoch + 1}/{settings.epochs}",
        enabled=show_progress,
    )
    for index, padded in batches(items, settings.batch_size, model.config.image.image_size, rng):
        usable = torch.tensor([m in model.config.modalities for m in MODALITIES])
        hidden = modality_dropout_mask(
            (padded.presence() & usable).numpy(),
            rng,
            rate=settings.modality_dropout,
            single_rate=settings.single_modality_rate,
        )
        batch = padded.to(device)
        target = labels[index].to(device)
        with autocast(device, dtype):
            out = model.forward_training(
                batch,
                torch.from_numpy(hidden).to(device),
                single_views=settings.single_view_weight > 0,
            )
        loss = _training_loss(
            out, target, settings, None if teacher is None else teacher[index].to(device)
        )
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[no-untyped-call]
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        run.optimizer.step()
        run.scheduler.step()
        if settings.ema_decay > 0:
            run.update_ema(settings.ema_decay)
        losses.append(loss.item())
        bar.update(1, loss=float(np.mean(losses[-20:])))
    bar.close()
    return float(np.mean(losses))


def fit(
    model: FusionModel,
    train_items: Sequence[EncodedBundle],
    train_labels: np.ndarray,
    val_items: Sequence[EncodedBundle],
    val_labels: np.ndarray,
    *,
    device: torch.device | str = "cpu",
    state_path: Path | None = None,
    show_progress: bool = True,
    teacher_probabilities: np.ndarray | None = None,
) -> dict[str, list[float]]:
    """Train ``model`` in place; keep the weights of the epoch with the lowest val loss.

    AdamW with linear warm-up (5% of steps) and cosine decay, gradient norm clipped at 1,
    binary cross-entropy, modality dropout (``config.train.modality_dropout`` and
    ``single_modality_rate``, see :func:`modality_dropout_mask`), plus
    ``auxiliary_weight`` times the loss of per-modality auxiliary heads and
    ``single_view_weight`` times the loss of the single-modality views (whose targets
    mix in the single-modality teachers' probabilities with ``distill_weight``). With
    ``ema_decay`` > 0 the weights validated and kept are an exponential moving average
    of the training weights (:meth:`_Run.update_ema`), which are smoother, and so
    better calibrated, than a snapshot taken mid-schedule. Every
    epoch draws its batch order, modality dropout and torch randomness from
    ``(seed, epoch)``, so a run resumed from ``state_path`` continues exactly.

    Args:
        model: A fresh network.
        train_items, train_labels: Training data (labels 0/1).
        val_items, val_labels: Validation data for model selection.
        device: Torch device; bf16 autocast on CUDA.
        state_path: Where the resumable training state is written after each epoch and
            read at the start when it exists. None disables resuming.
        show_progress: Show a progress bar. Defaults to True.
        teacher_probabilities: (len(train_items), 4) probabilities of the
            single-modality teachers, in MODALITIES order (see
            :func:`teacher_probabilities`); needed when ``distill_weight`` > 0.

    Returns:
        History with ``train_loss`` and ``val_loss`` per epoch.

    Raises:
        ValueError: When ``distill_weight`` > 0 and no teacher probabilities (or the
            wrong number of them) are given.
    """
    teacher = None
    if model.config.train.distill_weight > 0:
        if teacher_probabilities is None:
            raise ValueError("distill_weight > 0 needs the teachers' probabilities")
        teacher = torch.as_tensor(np.asarray(teacher_probabilities, dtype=np.float32))
        if teacher.shape != (len(train_items), len(MODALITIES)):
            raise ValueError(
                f"teacher probabilities must be ({len(train_items)}, {len(MODALITIES)}),"
                f" not {tuple(teacher.shape)}"
            )
    device = torch.device(device)
    model.to(device)
    run = _new_run(model, len(train_items))
    if state_path is not None and state_path.is_file():
        run.load(state_path, device)
        logger.info("resuming %s after epoch %d", model.config.name, run.epoch + 1)
    labels = torch.from_numpy(np.asarray(train_labels, dtype=np.float32))
    for epoch in range(run.epoch + 1, model.config.train.epochs):
        train_loss = _train_epoch(
            run,
            train_items,
            labels,
            epoch=epoch,
            device=device,
            show_progress=show_progress,
            teacher=teacher,
        )
        weights = run.evaluated_weights()
        live = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(weights)
        val_loss = _evaluate_loss(model, val_items, np.asarray(val_labels), device)
        model.load_state_dict(live)
        run.history["train_loss"].append(train_loss)
        run.history["val_loss"].append(val_loss)
        logger.info(
            "%s epoch %d train loss %.4f val loss %.4f",
            model.config.name,
            epoch + 1,
            train_loss,
            val_loss,
        )
        if val_loss < run.best_loss:
            run.best_loss, run.best = val_loss, weights
        run.epoch = epoch
        if state_path is not None:
            run.save(state_path)
    if run.best is not None:
        model.load_state_dict(run.best)
    model.eval()
    return run.history


def subset_views(
    items: Sequence[EncodedBundle],
) -> Iterator[tuple[tuple[str, ...], np.ndarray]]:
    """For every subset S of MODALITIES, the indices of bundles that have all of S.

    Hiding the rest of such a bundle's modalities gives a bundle with pattern S; under
    missingness completely at random it is distributed like a bundle naturally missing
    the rest (the assumption the synthetic cohort satisfies).
    """
    presence = _presence(items)
    for subset in ALL_SUBSETS:
        need = np.array([m in subset for m in MODALITIES])
        yield subset, np.nonzero((presence | ~need).all(axis=1))[0]


def calibrate(
    model: FusionModel,
    items: Sequence[EncodedBundle],
    labels: np.ndarray,
    *,
    device: torch.device | str = "cpu",
) -> Calibration:
    """Fit temperature (natural missingness) and per-pattern conformal quantiles.

    Conformal points for pattern S are the calibration bundles that have every modality
    of S, with the others hidden (see :func:`subset_views`).

    Args:
        model: The trained network.
        items, labels: The held-out calibration split.
        device: Torch device.

    Returns:
        The fitted Calibration.
    """
    labels = np.asarray(labels)
    natural = predict_logits(model, items, device=device)
    views = predict_subset_logits(model, items, device=device)
    logits, ys, patterns = [], [], []
    for subset, index in subset_views(items):
        logits.append(views[subset])
        ys.append(labels[index])
        patterns += [pattern_key(subset)] * len(index)
    return fit_calibration(
        temperature_logits=natural,
        temperature_labels=labels,
        conformal_logits=np.concatenate(logits),
        conformal_labels=np.concatenate(ys),
        conformal_patterns=patterns,
        coverage=model.config.coverage,
        min_pattern_count=model.config.min_pattern_count,
        randomized=True,
        seed=model.config.train.seed,
    )


def build_model(config: FusionConfig, n_codes: int, vocab_size: int) -> FusionModel:
    """A freshly initialised network, seeded by ``config.train.seed``."""
    torch.manual_seed(config.train.seed)
    return FusionModel(config, n_codes, vocab_size)


def config_for_ablation(config: FusionConfig, ablation: str) -> FusionConfig:
    """The config of a named ablation: a fusion kind or ``only_<modality>``.

    A single-modality model is a teacher, never distilled itself (``distill_weight`` 0).
    """
    if ablation.startswith("only_"):
        modality = ablation.removeprefix("only_")
        single = config.replace(name=f"{config.name}-{ablation}", modalities=(modality,))
        single.train.distill_weight = 0.0
        single.train.teacher_init = False
        return single
    return config.replace(name=f"{config.name}-{ablation}", fusion=ablation)


#: Encoders started from a teacher, and the modality whose teacher gives them.
TEACHER_ENCODERS: dict[str, tuple[str, ...]] = {
    "image": ("image",),
    "notes": ("notes", "note_time"),
}


def start_from_teachers(model: FusionModel, teachers: dict[str, FusionModel]) -> set[str]:
    """Copy the image and note encoders of their teachers into ``model``.

    The copied parameters are recorded in ``model.from_teachers`` (so :func:`fit` trains
    them at ``teacher_encoder_lr_scale`` times the learning rate) and returned; with a
    factor of 0 they are frozen (no gradient, left out of the optimizer, and kept in
    eval mode by :meth:`FusionModel.train`, so BatchNorm statistics do not move either).

    Raises:
        ValueError: When a teacher is missing or sees other modalities.
    """
    frozen = model.config.train.teacher_encoder_lr_scale == 0
    copied: set[str] = set()
    for modality, modules in TEACHER_ENCODERS.items():
        teacher = _teacher(teachers, modality)
        for name in modules:
            source, target = getattr(teacher, name), getattr(model, name)
            target.load_state_dict(source.state_dict())
            target.requires_grad_(not frozen)
            copied |= {f"{name}.{p}" for p, _ in target.named_parameters()}
    model.from_teachers = frozenset(copied)
    return copied


def _teacher(teachers: dict[str, FusionModel], modality: str) -> FusionModel:
    """The single-modality teacher of ``modality``; ValueError when there is none."""
    teacher = teachers.get(modality)
    if teacher is None or tuple(teacher.config.modalities) != (modality,):
        raise ValueError(f"no single-modality teacher for {modality!r}")
    return teacher


def teacher_probabilities(
    teachers: dict[str, FusionModel],
    items: Sequence[EncodedBundle],
    *,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Each single-modality teacher's probability for every item, for distillation.

    Args:
        teachers: Modality -> its single-modality model, for every modality.
        items: The training bundles.
        device: Torch device.

    Returns:
        (len(items), 4) float32 probabilities in MODALITIES order (meaningful where the
        item has the modality; the loss ignores the others).

    Raises:
        ValueError: When a modality has no teacher, or a teacher sees other modalities.
    """
    columns = []
    for modality in MODALITIES:
        logits = predict_logits(_teacher(teachers, modality), items, device=device)
        columns.append(1.0 / (1.0 + np.exp(-logits)))
    return np.stack(columns, axis=1).astype(np.float32)


ABLATIONS: tuple[str, ...] = (
    "early",
    "late",
    "attention_weighted",
    *(f"only_{m}" for m in MODALITIES),
)
