"""Held-out evaluation on a fresh synthetic cohort: the numbers behind ``metrics.json``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fusion.checkpoint import LoadedCheckpoint, load_checkpoint
from fusion.features import EncodedBundle
from fusion.inputs import pattern_key
from fusion.metrics import auprc, auroc, bootstrap_ci, brier, calibration_curve, ece
from fusion.pipeline import ABLATIONS_DIR
from fusion.synthetic import generate_cohort
from fusion.training import ABLATIONS, predict_logits, subset_views

logger = logging.getLogger(__name__)

BASELINES: tuple[str, ...] = ("early", "late", "attention_weighted")


def _load_ablations(root: Path) -> dict[str, LoadedCheckpoint]:
    found = {}
    for name in ABLATIONS:
        directory = root / ABLATIONS_DIR / name
        if (directory / "model.json").is_file():
            found[name] = load_checkpoint(directory)
    return found


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
    training_seed = main.model_card.get("training_data", {}).get("seed")
    if training_seed == seed:
        logger.warning("test seed equals the training seed: the patients are not held out")
    cohort = generate_cohort(n_patients, seed, main.model_card["training_data"]["missing_rates"])
    inputs = [p.to_bundle_input() for p in cohort]
    labels = np.array([p.label for p in cohort], dtype=np.int64)
    risk = np.array([p.true_risk for p in cohort])
    encoded = main.featurizer  # one featurizer: ablations share it (same training run)
    items: list[EncodedBundle] = [encoded.encode(item) for item in inputs]
    others = _load_ablations(root)
    models = {"fused": main, **others}
    logits = {name: predict_logits(c.model, items, device=device) for name, c in models.items()}
    metrics: dict[str, Any] = {
        "model": {"name": main.name, "version": main.version, "sha256": main.sha256},
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
    subsets: dict[str, Any] = {}
    for subset, index in subset_views(items):
        chosen = [items[i] for i in index]
        y = labels[index]
        row: dict[str, Any] = {"n": len(index), "oracle_auroc": auroc(y, risk[index])}
        for name, ckpt in models.items():
            if name.startswith("only_") and name.removeprefix("only_") not in subset:
                continue
            z = predict_logits(ckpt.model, chosen, keep=subset, device=device)
            row[f"auroc_{name}"] = auroc(y, z)
            if name == "fused":
                p = ckpt.calibration.probability(z)
                bounds = [ckpt.calibration.interval(float(v), pattern_key(subset)) for v in p]
                low, high = np.array(bounds).T
                row["conformal_coverage"] = float(np.mean((y >= low) & (y <= high)))
                row["conformal_mean_width"] = float(np.mean(high - low))
                row["ece"] = ece(y, p)
        singles = {k: v for k, v in row.items() if k.startswith("auroc_only_")}
        if singles:
            best = max(singles, key=lambda k: singles[k])
            row["best_single"] = best.removeprefix("auroc_only_")
            row["best_single_auroc"] = singles[best]
        subsets[pattern_key(subset)] = row
    metrics["per_missing_subset"] = subsets
    metrics["nominal_coverage"] = main.calibration.coverage
    metrics["goals"] = _goals(metrics)
    return metrics


def _goals(metrics: dict[str, Any]) -> dict[str, Any]:
    subsets = metrics["per_missing_subset"]
    single_gaps = {
        key: row["auroc_fused"] - row["best_single_auroc"]
        for key, row in subsets.items()
        if "best_single_auroc" in row
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
        "fused>=best_single_on_every_subset": all(g >= 0 for g in single_gaps.values()),
        "fused_minus_best_single": single_gaps,
        "coverage_within_2pct_every_pattern": all(abs(g) <= 0.02 for g in coverage_gaps.values()),
        "coverage_minus_nominal": coverage_gaps,
        "better_than_baselines": bool(baseline_gaps) and all(g > 0 for g in baseline_gaps.values()),
        "fused_minus_baseline_auroc": baseline_gaps,
    }
