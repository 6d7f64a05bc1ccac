"""The goal table: every goal can fail, and none is met for lack of a comparison."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from fusion.evaluation import _goals
from fusion.report import write_report


def _metrics() -> dict[str, Any]:
    row = {
        "n": 100,
        "calibration_n": 300,
        "oracle_auroc": 0.86,
        "auroc_fused": 0.84,
        "best_single": "vitals",
        "best_single_auroc": 0.83,
        "fused_minus_best_single_ci95": (0.001, 0.02),
        "conformal_coverage": 0.905,
        "conformal_mean_width": 0.8,
    }
    keys = ["image", "notes", "labs", "vitals", "image+notes+labs+vitals"]
    subsets = {key: dict(row) for key in keys}
    subsets["none"] = {k: v for k, v in row.items() if "single" not in k}
    return {
        "model": {"name": "m", "version": "0", "sha256": "0" * 64},
        "training_data": {"n_patients": 10, "seed": 0, "splits": {"train": 6}},
        "test_cohort": {"n_patients": 100, "seed": 1, "prevalence": 0.3},
        "auroc": 0.84,
        "auroc_ci95": (0.8, 0.88),
        "oracle_auroc": 0.86,
        "oracle_auroc_ci95": (0.82, 0.9),
        "fraction_of_oracle_auroc": 0.84 / 0.86,
        "auprc": 0.7,
        "auprc_ci95": (0.6, 0.8),
        "ece": 0.02,
        "ece_uncalibrated": 0.03,
        "ece_sampling_floor": 0.01,
        "brier": 0.14,
        "temperature": 1.1,
        "calibration_curve": [],
        "ablations": {
            name: {"auroc": 0.82, "auprc": 0.6, "ece": 0.02, "brier": 0.15}
            for name in ("early", "late", "attention_weighted")
        },
        "ablations_missing": [],
        "per_missing_subset": subsets,
        "nominal_coverage": 0.9,
    }


def _met(metrics: dict[str, Any]) -> dict[str, bool]:
    return {k: v for k, v in _goals(metrics).items() if isinstance(v, bool)}


def test_all_goals_met_on_good_numbers() -> None:
    assert all(_met(_metrics()).values())


def test_each_goal_can_fail() -> None:
    cases = {
        "fraction_of_oracle_auroc>=0.97": ("fraction_of_oracle_auroc", None, 0.969),
        "ece<=0.03": ("ece", None, 0.031),
        "fused>=best_single_on_every_subset": ("labs", "auroc_fused", 0.829),
        "coverage_within_2pct_every_pattern": ("none", "conformal_coverage", 0.879),
    }
    for goal, (key, field, value) in cases.items():
        metrics = copy.deepcopy(_metrics())
        if field is None:
            metrics[key] = value
        else:
            metrics["per_missing_subset"][key][field] = value
        met = _met(metrics)
        assert not met[goal], goal
        assert sum(not v for v in met.values()) == 1, goal
    metrics = _metrics()
    metrics["ablations"]["late"]["auroc"] = 0.84
    assert not _met(metrics)["better_than_baselines"]


def test_fused_worse_beyond_noise_fails_the_statistical_reading() -> None:
    metrics = _metrics()
    metrics["per_missing_subset"]["notes"]["fused_minus_best_single_ci95"] = (-0.004, -0.001)
    assert not _met(metrics)["fused_not_below_best_single_ci95_every_subset"]
    metrics["per_missing_subset"]["notes"]["fused_minus_best_single_ci95"] = (-0.004, 0.0)
    assert _met(metrics)["fused_not_below_best_single_ci95_every_subset"]
    metrics["per_missing_subset"]["notes"]["auroc_fused"] = 0.8299  # tied within noise
    met = _met(metrics)
    assert not met["fused>=best_single_on_every_subset"]
    assert met["fused_not_below_best_single_ci95_every_subset"]


def test_missing_comparisons_are_not_met() -> None:
    metrics = _metrics()
    metrics["ablations"] = {}
    for row in metrics["per_missing_subset"].values():
        row.pop("best_single_auroc", None)
        row.pop("fused_minus_best_single_ci95", None)
    met = _met(metrics)
    assert not met["better_than_baselines"]
    assert not met["fused>=best_single_on_every_subset"]
    assert not met["fused_not_below_best_single_ci95_every_subset"]


def test_report_states_each_goal_with_its_number(tmp_path: Path) -> None:
    metrics = _metrics()
    metrics["goals"] = _goals(metrics)
    text = write_report(metrics, tmp_path).read_text()
    assert "- ece<=0.03: met (0.0200)" in text
    assert "worst +0.0050 (image)" in text
    assert "fused_not_below_best_single_ci95_every_subset: met (lowest interval upper end" in text
    assert "Training cohort: 10 patients" in text
