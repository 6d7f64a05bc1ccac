"""Held-out evaluation on a fresh synthetic cohort: the numbers behind ``metrics.json``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fusion.checkpoint import LoadedCheckpoint, load_checkpoint
from fusion.features import EncodedBundle
from fusion.inputs import BundleInput, pattern_key
from fusion.metrics import (
    auprc,
    auroc,
    bootstrap_ci,
    brier,
    calibration_curve,
    ece,
    ece_sampling_floor,
    paired_bootstrap_ci,
)
from fusion.pipeline import ABLATIONS_DIR
from fusion.synthetic import generate_cohort
from fusion.training import (
    ABLATIONS,
    ALL_SUBSETS,
    predict_logits,
    predict_subset_logits,
    subset_views,
)

logger = logging.getLogger(__name__)

BASELINES: tuple[str, ...] = ("early", "late", "attention_weighted")


def _load_ablations(root: Path) -> dict[str, LoadedCheckpoint]:
    found = {}
    for name in ABLATIONS:
        directory = root / ABLATIONS_DIR / name
        if (directory / "model.json").is_file():
            found[name] = load_checkpoint(directory)
    return found


def _encode_for(
    ckpt: LoadedCheckpoint,
    main: LoadedCheckpoint,
    inputs: list[BundleInput],
    items: list[EncodedBundle],
) -> list[EncodedBundle]:
    """The test bundles as ``ckpt`` encodes them: ``items`` when it shares main's featurizer.

    Ablations trained in the same run share the featurizer (fitted on the same training
    split); one that does not (trained elsewhere) gets its own encoding, never main's.
    """
    if ckpt is main or ckpt.featurizer.state() == main.featurizer.state():
        return items
    logger.warning("%s has its own featurizer: encoding the test cohort again", ckpt.name)
    return [ckpt.featurizer.encode(item) for item in inputs]


def _subsets_of(name: str) -> tuple[tuple[str, ...], ...]:
    """The missing-modality subsets a model is scored on: for ``only_<m>``, those with m."""
    if name.startswith("only_"):
        modality = name.removeprefix("only_")
        return tuple(s for s in ALL_SUBSETS if modality in s)
    return ALL_SUBSETS


def _headline(
    labels: np.ndarray, logits: np.ndarray, ckpt: LoadedCheckpoint, n_bootstrap: int
) -> dict[str, Any]:
    probabilities = ckpt.calibration.probability(logits)
    raw = 1.0 / (1.0 + np.exp(-logits))
    return {
        "auroc": auroc(labels, logits),
        "auroc_ci95": bootstrap_ci(auroc, labels, logits, n_resamples=n_bootstrap),
        "auprc": auprc(labels, logits),
        "auprc_ci95": bootstrap_ci(auprc, labels, logits, n_resamples=n_bootstrap),
        "ece": ece(labels, probabilities),
        "ece_uncalibrated": ece(labels, raw),
        "ece_sampling_floor": ece_sampling_floor(probabilities),
        "brier": brier(labels, probabilities),
        "temperature": ckpt.calibration.temperature,
        "calibration_curve": calibration_curve(labels, probabilities),
    }


def evaluate_checkpoint(
    checkpoint_dir: str | Path,
    *,
    n_patients: int,
    seed: int,
    device: str | torch.device = "cpu",
    n_bootstrap: int = 500,
) -> dict[str, Any]:
    """Evaluate a checkpoint (and its ablations, when present) on held-out patients.

    Args:
        checkpoint_dir: Checkpoint directory from ``cdsfusion train``.
        n_patients: Size of the test cohort.
        seed: Seed of the test cohort; must differ from the training seed.
        device: Torch device.
        n_bootstrap: Bootstrap resamples for confidence intervals. Defaults to 500.

    Returns:
        The metrics dict written to ``metrics.json``.
    """
    root = Path(checkpoint_dir)
    main = load_checkpoint(root)
    training = main.model_card.get("training_data", {})
    if training.get("seed") == seed:
        logger.warning("test seed equals the training seed: the patients are not held out")
    cohort = generate_cohort(n_patients, seed, training["missing_rates"])
    labels = np.array([p.label for p in cohort], dtype=np.int64)
    risk = np.array([p.true_risk for p in cohort])
    inputs = [p.to_bundle_input() for p in cohort]
    items: list[EncodedBundle] = [main.featurizer.encode(item) for item in inputs]
    others = _load_ablations(root)
    models = {"fused": main, **others}
    encoded = {name: _encode_for(c, main, inputs, items) for name, c in models.items()}
    logits = {
        name: predict_logits(c.model, encoded[name], device=device) for name, c in models.items()
    }
    metrics: dict[str, Any] = {
        "model": {"name": main.name, "version": main.version, "sha256": main.sha256},
        "training_data": {
            k: training.get(k) for k in ("n_patients", "calibration_patients", "seed", "splits")
        },
        "test_cohort": {
            "n_patients": n_patients,
            "seed": seed,
            "kind": "synthetic",
            "prevalence": float(labels.mean()),
        },
        "oracle_auroc": auroc(labels, risk),
        "oracle_auroc_ci95": bootstrap_ci(auroc, labels, risk, n_resamples=n_bootstrap),
        **_headline(labels, logits["fused"], main, n_bootstrap),
    }
    metrics["fraction_of_oracle_auroc"] = metrics["auroc"] / metrics["oracle_auroc"]
    metrics["ablations"] = {
        name: {
            k: v
            for k, v in _headline(labels, logits[name], c, 0).items()
            if k in ("auroc", "auprc", "ece", "brier")
        }
        for name, c in others.items()
    }
    metrics["ablations_missing"] = [a for a in ABLATIONS if a not in others]
    views = {
        name: predict_subset_logits(ckpt.model, encoded[name], _subsets_of(name), device=device)
        for name, ckpt in models.items()
    }
    metrics["per_missing_subset"] = {
        pattern_key(subset): _subset_row(
            subset,
            labels[index],
            risk=risk[index],
            views=views,
            main=main,
            n_bootstrap=n_bootstrap,
        )
        for subset, index in subset_views(items)
    }
    metrics["nominal_coverage"] = main.calibration.coverage
    metrics["goals"] = _goals(metrics)
    return metrics


def _subset_row(
    subset: tuple[str, ...],
    y: np.ndarray,
    *,
    risk: np.ndarray,
    views: dict[str, dict[tuple[str, ...], np.ndarray]],
    main: LoadedCheckpoint,
    n_bootstrap: int,
) -> dict[str, Any]:
    """Metrics of one missing-modality subset: every model's AUROC, coverage, ECE.

    ``best_single`` is the single-modality model with the highest test AUROC on the
    subset among those whose modality remains (a choice made on the test data, which
    favours the single-modality side of the comparison).
    """
    key = pattern_key(subset)
    row: dict[str, Any] = {
        "n": len(y),
        "calibration_n": main.calibration.counts.get(key, 0),
        "oracle_auroc": auroc(y, risk),
    }
    for name, scored in views.items():
        if subset in scored:
            row[f"auroc_{name}"] = auroc(y, scored[subset])
    fused = views["fused"][subset]
    p = main.calibration.probability(fused)
    low, high = np.array([main.calibration.interval(float(v), key) for v in p]).reshape(-1, 2).T
    row["conformal_coverage"] = float(np.mean((y >= low) & (y <= high)))
    row["conformal_mean_width"] = float(np.mean(high - low))
    row["ece"] = ece(y, p)
    singles = {k: v for k, v in row.items() if k.startswith("auroc_only_")}
    if singles:
        best = max(singles, key=lambda k: singles[k])
        row["best_single"] = best.removeprefix("auroc_only_")
        row["best_single_auroc"] = singles[best]
        row["fused_minus_best_single_ci95"] = paired_bootstrap_ci(
            auroc, y, fused, views[best.removeprefix("auroc_")][subset], n_resamples=n_bootstrap
        )
    return row


def _goals(metrics: dict[str, Any]) -> dict[str, Any]:
    """The issue's five goals, each a bool, with the gaps behind them.

    "At least matches the best single-modality model" is read two ways, both reported:
    strictly (the point estimate of fused minus best single is >= 0 on every subset) and
    statistically (no subset's paired bootstrap 95% interval lies wholly below 0, i.e. the
    fused model is nowhere worse beyond sampling noise).

    A goal whose comparison is missing (single-modality models or baselines not trained)
    is not met: nothing is met vacuously.
    """
    subsets = metrics["per_missing_subset"]
    single_gaps = {
        key: row["auroc_fused"] - row["best_single_auroc"]
        for key, row in subsets.items()
        if "best_single_auroc" in row
    }
    every_subset = [key for key in subsets if key != "none"]
    # The paired bootstrap interval's upper end: below 0 means the fused model is worse
    # than the best single-modality model on that subset beyond sampling noise (95%).
    single_upper = {
        key: row["fused_minus_best_single_ci95"][1]
        for key, row in subsets.items()
        if "fused_minus_best_single_ci95" in row
    }
    coverage_gaps = {
        key: row["conformal_coverage"] - metrics["nominal_coverage"] for key, row in subsets.items()
    }
    baseline_gaps = {
        name: metrics["auroc"] - metrics["ablations"][name]["auroc"]
        for name in BASELINES
        if name in metrics["ablations"]
    }
    return {
        "fraction_of_oracle_auroc>=0.97": metrics["fraction_of_oracle_auroc"] >= 0.97,
        "ece<=0.03": metrics["ece"] <= 0.03,
        "fused>=best_single_on_every_subset": set(single_gaps) == set(every_subset)
        and all(g >= 0 for g in single_gaps.values()),
        "fused_minus_best_single": single_gaps,
        "fused_not_below_best_single_ci95_every_subset": set(single_upper) == set(every_subset)
        and all(u >= 0 for u in single_upper.values()),
        "fused_minus_best_single_ci95_upper": single_upper,
        "coverage_within_2pct_every_pattern": bool(coverage_gaps)
        and all(abs(g) <= 0.02 for g in coverage_gaps.values()),
        "coverage_minus_nominal": coverage_gaps,
        "better_than_baselines": set(baseline_gaps) == set(BASELINES)
        and all(g > 0 for g in baseline_gaps.values()),
        "fused_minus_baseline_auroc": baseline_gaps,
    }
