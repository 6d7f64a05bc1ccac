"""Training on the synthetic cohort, end to end: cohort -> splits -> fit -> calibrate -> save.

Splits of the training cohort (by a seeded permutation): 65% training, 10% validation
(best epoch), 25% calibration (temperature and conformal quantiles: the per-pattern
quantiles need a few hundred points each to hold coverage within a couple of points).
``calibration_patients`` adds that many further held-out patients to the calibration
split only (patients ``n_patients`` onwards of the same cohort seed, so never seen in
training): the benchmark uses it to fit the temperature and every per-pattern quantile on
thousands of points without training on more patients.
Evaluation uses a separate cohort drawn with another seed (:mod:`fusion.evaluation`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fusion.checkpoint import default_model_card, save_checkpoint
from fusion.config import FusionConfig
from fusion.features import EncodedBundle, Featurizer
from fusion.inputs import MODALITIES
from fusion.metrics import auroc, brier
from fusion.model.network import FusionModel
from fusion.synthetic import generate_cohort
from fusion.synthetic.cohort import DEFAULT_MISSING_RATES
from fusion.training import (
    ABLATIONS,
    build_model,
    calibrate,
    config_for_ablation,
    fit,
    start_from_teachers,
    teacher_probabilities,
)
from fusion.training import predict_logits as _predict_logits

logger = logging.getLogger(__name__)

ABLATIONS_DIR = "ablations"


def split_indices(n: int, seed: int, extra_calibration: int = 0) -> dict[str, np.ndarray]:
    """Seeded split into ``train``, ``validation`` and ``calibration`` indices.

    Args:
        n: Patients 0 to n - 1 are split 65/10/25.
        seed: Seed of the permutation.
        extra_calibration: Patients n to n + extra_calibration - 1 are appended to the
            calibration split. Defaults to 0.

    Returns:
        Split name -> indices.
    """
    order = np.random.default_rng([seed, 7]).permutation(n)
    n_val, n_cal = max(1, n // 10), max(1, n // 4)
    extra = np.arange(n, n + extra_calibration)
    return {
        "validation": order[:n_val],
        "calibration": np.concatenate([order[n_val : n_val + n_cal], extra]),
        "train": order[n_val + n_cal :],
    }


def _train_one(
    config: FusionConfig,
    featurizer: Featurizer,
    encoded: list[EncodedBundle],
    labels: np.ndarray,
    splits: dict[str, np.ndarray],
    *,
    output_dir: Path,
    device: torch.device,
    resume: bool,
    show_progress: bool,
    version: str,
    training_data: dict[str, Any],
    teachers: np.ndarray | None = None,
    teacher_models: dict[str, FusionModel] | None = None,
) -> tuple[str, FusionModel]:
    """Fit, calibrate and save one model; returns (checkpoint sha256, the model on CPU)."""

    def pick(name: str) -> list[EncodedBundle]:
        return [encoded[i] for i in splits[name]]

    output_dir.mkdir(parents=True, exist_ok=True)
    state_path = output_dir / "train_state.pt"
    if not resume and state_path.exists():
        state_path.unlink()
    model = build_model(config, featurizer.n_codes, featurizer.vocab_size)
    if teacher_models is not None:
        start_from_teachers(model, teacher_models)
    started = time.monotonic()
    history = fit(
        model,
        pick("train"),
        labels[splits["train"]],
        pick("validation"),
        labels[splits["validation"]],
        device=device,
        state_path=state_path,
        show_progress=show_progress,
        teacher_probabilities=teachers,
    )
    calibration = calibrate(
        model, pick("calibration"), labels[splits["calibration"]], device=device
    )
    val_logits = _predict_logits(model, pick("validation"), device=device)
    val_labels = labels[splits["validation"]]
    card = default_model_card(config, training_data)
    card["metrics"] = {
        "validation_auroc": auroc(val_labels, val_logits),
        "validation_brier": brier(val_labels, calibration.probability(val_logits)),
        "temperature": calibration.temperature,
        "train_seconds": round(time.monotonic() - started, 1),
        "history": history,
        "note": "held-out test metrics: run `cdsfusion evaluate` (metrics.json)",
    }
    digest = save_checkpoint(
        output_dir,
        model=model.cpu(),
        featurizer=featurizer,
        calibration=calibration,
        model_card=card,
        version=version,
    )
    return digest, model


def train_on_synthetic(
    config: FusionConfig,
    *,
    n_patients: int,
    seed: int,
    output_dir: str | Path,
    device: str | torch.device = "cpu",
    resume: bool = False,
    ablations: bool = False,
    show_progress: bool = True,
    version: str = "0.1.0",
    missing_rates: dict[str, float] | None = None,
    calibration_patients: int = 0,
) -> dict[str, str]:
    """Train (and calibrate, and save) a model on a synthetic cohort.

    Args:
        config: Model configuration (``config.train.seed`` seeds the model).
        n_patients: Cohort size (split 65/10/25).
        seed: Cohort seed.
        output_dir: Checkpoint directory; ablations go to ``<output_dir>/ablations/<name>``.
        device: Torch device; bf16 autocast on CUDA.
        resume: Continue from ``train_state.pt`` files left by an interrupted run.
        ablations: Also train the baselines and single-modality models of
            :data:`~fusion.training.ABLATIONS` for ``cdsfusion evaluate``. When the
            recipe uses teachers (``distill_weight`` > 0 or ``teacher_init``), the
            single-modality models are trained in any case, first: they are the
            teachers.
        show_progress: Progress bars. Defaults to True.
        version: Version recorded in the checkpoint. Defaults to ``0.1.0``.
        missing_rates: Missingness of the cohort; defaults to DEFAULT_MISSING_RATES.
        calibration_patients: Further held-out patients for the calibration split only
            (see the module docstring). Defaults to 0.

    Returns:
        Model name -> sha256 of each checkpoint written.
    """
    device = torch.device(device)
    rates = DEFAULT_MISSING_RATES if missing_rates is None else missing_rates
    cohort = generate_cohort(n_patients + calibration_patients, seed, rates)
    inputs = [p.to_bundle_input() for p in cohort]
    labels = np.array([p.label for p in cohort], dtype=np.int64)
    splits = split_indices(n_patients, seed, calibration_patients)
    featurizer = Featurizer.fit(config, [inputs[i] for i in splits["train"]])
    encoded = [featurizer.encode(item) for item in inputs]
    training_data = {
        "kind": "synthetic",
        "description": "fusion.synthetic.generate_cohort: invented patients, no real data",
        "n_patients": n_patients,
        "calibration_patients": calibration_patients,
        "seed": seed,
        "missing_rates": rates,
        "splits": {k: len(v) for k, v in splits.items()},
        "prevalence": float(labels[:n_patients].mean()),
    }
    root = Path(output_dir)
    taught = config.train.uses_teachers
    teacher_names = [f"only_{m}" for m in MODALITIES] if taught else []
    names = teacher_names + [a for a in ABLATIONS if ablations and a not in teacher_names]
    runs = [(config_for_ablation(config, a), root / ABLATIONS_DIR / a) for a in names]
    # The single-modality teachers train first; the fused model (and the multimodal
    # baselines, on the same recipe) then learn from them.
    runs.insert(len(teacher_names), (config, root))
    written: dict[str, str] = {}
    teachers: dict[str, FusionModel] = {}
    soft_targets: np.ndarray | None = None
    for run_config, directory in runs:
        wants_targets = run_config.train.distill_weight > 0
        if wants_targets and soft_targets is None:  # the teachers are trained by now
            train_items = [encoded[i] for i in splits["train"]]
            soft_targets = teacher_probabilities(teachers, train_items, device=device)
        logger.info("training %s", run_config.name)
        written[run_config.name], model = _train_one(
            run_config,
            featurizer,
            encoded,
            labels,
            splits,
            output_dir=directory,
            device=device,
            resume=resume,
            show_progress=show_progress,
            version=version,
            training_data=training_data,
            teachers=soft_targets if wants_targets else None,
            teacher_models=teachers if run_config.train.teacher_init else None,
        )
        if taught and len(run_config.modalities) == 1:
            teachers[run_config.modalities[0]] = model
    return written
