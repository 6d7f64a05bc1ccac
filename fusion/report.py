"""The Markdown evaluation report (plus PNG plots when matplotlib is installed)."""

from __future__ import annotations

import importlib
import importlib.util
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def _f(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return f"[{_f(value[0], digits)}, {_f(value[1], digits)}]"
    return "" if value is None else str(value)


def _plots(metrics: dict[str, Any], out: Path) -> list[str]:
    matplotlib = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    plt = importlib.import_module("matplotlib.pyplot")

    curve = metrics["calibration_curve"]
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.plot([p["mean_predicted"] for p in curve], [p["observed_rate"] for p in curve], "o-")
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed rate")
    ax.set_title("Calibration (held-out, synthetic)")
    fig.tight_layout()
    fig.savefig(out / "calibration.png", dpi=100)
    plt.close(fig)
    subsets = metrics["per_missing_subset"]
    keys = [k for k in subsets if k != "none"]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(range(len(keys)), [subsets[k]["auroc_fused"] for k in keys], label="fused")
    ax.plot(
        range(len(keys)), [subsets[k]["oracle_auroc"] for k in keys], "k_", ms=14, label="oracle"
    )
    ax.set_xticks(range(len(keys)), keys, rotation=60, ha="right", fontsize=7)
    ax.set_ylim(0.5, 1.0)
    ax.set_ylabel("AUROC")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "subsets.png", dpi=100)
    plt.close(fig)
    return ["calibration.png", "subsets.png"]


def _worst(gaps: dict[str, float], *, absolute: bool = False) -> str:
    """The smallest gap (or the largest absolute one) and where it is."""
    if not gaps:
        return "nothing to compare"
    key = max(gaps, key=lambda k: abs(gaps[k])) if absolute else min(gaps, key=lambda k: gaps[k])
    return f"worst {gaps[key]:+.4f} ({key})"


def _goal_lines(metrics: dict[str, Any]) -> list[str]:
    """One line per goal: met or not, and the number that decides it."""
    goals = metrics["goals"]
    details = {
        "fraction_of_oracle_auroc>=0.97": f"{metrics['fraction_of_oracle_auroc']:.4f}",
        "ece<=0.03": f"{metrics['ece']:.4f}",
        "fused>=best_single_on_every_subset": _worst(goals["fused_minus_best_single"]),
        "fused_not_below_best_single_ci95_every_subset": "lowest interval upper end "
        + _worst(goals["fused_minus_best_single_ci95_upper"]).removeprefix("worst "),
        "coverage_within_2pct_every_pattern": _worst(
            goals["coverage_minus_nominal"], absolute=True
        ),
        "better_than_baselines": _worst(goals["fused_minus_baseline_auroc"]),
    }
    return [
        f"- {goal}: {'met' if value else 'NOT met'} ({details.get(goal, '')})"
        for goal, value in goals.items()
        if isinstance(value, bool)
    ]


def _training_line(metrics: dict[str, Any]) -> list[str]:
    """The training cohort sizes, when the metrics carry them."""
    data = metrics.get("training_data") or {}
    if not data.get("splits"):
        return []
    splits = data["splits"]
    return [
        f"Training cohort: {data.get('n_patients')} patients (seed {data.get('seed')}) plus "
        f"{data.get('calibration_patients') or 0} further calibration patients; splits "
        + ", ".join(f"{k} {v}" for k, v in splits.items())
        + ".",
        "",
    ]


def _subset_line(key: str, row: dict[str, Any]) -> str:
    """One row of the per missing-modality subset table."""
    best, gap = "", ""
    if "best_single" in row:
        best = f"{_f(row['best_single_auroc'])} ({row['best_single']})"
        gap = f"{row['auroc_fused'] - row['best_single_auroc']:+.4f}"
        if "fused_minus_best_single_ci95" in row:
            gap += f" {_f(row['fused_minus_best_single_ci95'], 4)}"
    return (
        f"| {key} | {row['n']} | {_f(row['oracle_auroc'])} | {_f(row['auroc_fused'])} | "
        f"{best} | {gap} | {_f(row.get('auroc_early'))} | {_f(row.get('auroc_late'))} | "
        f"{_f(row.get('auroc_attention_weighted'))} | {row.get('calibration_n', '')} | "
        f"{_f(row['conformal_coverage'])} | {_f(row['conformal_mean_width'])} |"
    )


def write_report(metrics: dict[str, Any], output_dir: str | Path) -> Path:
    """Write ``report.md`` (and plots when matplotlib is importable) into ``output_dir``.

    Args:
        metrics: Output of :func:`fusion.evaluation.evaluate_checkpoint`.
        output_dir: Target directory (created).

    Returns:
        Path of ``report.md``.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = metrics["model"]
    lines = [
        f"# Evaluation: {model['name']} {model['version']}",
        "",
        "**Synthetic data only.** Test patients: a fresh synthetic cohort "
        f"(n={metrics['test_cohort']['n_patients']}, seed={metrics['test_cohort']['seed']}, "
        f"prevalence {metrics['test_cohort']['prevalence']:.3f}). "
        f"Checkpoint sha256 `{model['sha256']}`.",
        "",
        *_training_line(metrics),
        "| metric | value | 95% CI |",
        "| --- | --- | --- |",
        f"| AUROC | {_f(metrics['auroc'])} | {_f(metrics['auroc_ci95'])} |",
        f"| oracle AUROC (true risk) | {_f(metrics['oracle_auroc'])} | "
        f"{_f(metrics['oracle_auroc_ci95'])} |",
        f"| AUROC / oracle | {_f(metrics['fraction_of_oracle_auroc'], 4)} | |",
        f"| AUPRC | {_f(metrics['auprc'])} | {_f(metrics['auprc_ci95'])} |",
        f"| ECE (calibrated) | {_f(metrics['ece'])} | |",
        f"| ECE (uncalibrated) | {_f(metrics['ece_uncalibrated'])} | |",
        f"| ECE of a calibrated forecaster, same n (sampling floor) | "
        f"{_f(metrics.get('ece_sampling_floor'))} | |",
        f"| Brier | {_f(metrics['brier'])} | |",
        f"| temperature | {_f(metrics['temperature'])} | |",
        "",
        "## Baselines and single-modality ablations (natural missingness)",
        "",
        "| model | AUROC | AUPRC | ECE | Brier |",
        "| --- | --- | --- | --- | --- |",
        f"| fused (cross-attention) | {_f(metrics['auroc'])} | {_f(metrics['auprc'])} | "
        f"{_f(metrics['ece'])} | {_f(metrics['brier'])} |",
    ]
    for name, row in metrics["ablations"].items():
        lines.append(
            f"| {name} | {_f(row['auroc'])} | {_f(row['auprc'])} | {_f(row['ece'])} | "
            f"{_f(row['brier'])} |"
        )
    if metrics["ablations_missing"]:
        lines += ["", f"Not trained (run train with --ablations): {metrics['ablations_missing']}"]
    lines += [
        "",
        "## Per missing-modality subset",
        "",
        "Each row: the test patients having every modality of the subset, the others hidden.",
        f"Nominal conformal coverage {metrics['nominal_coverage']:.2f}.",
        "",
        "| present | n | oracle | fused | best single | fused - best (95% CI) | early | late | "
        "attention | calibration n | coverage | width |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    lines += [_subset_line(key, row) for key, row in metrics["per_missing_subset"].items()]
    lines += ["", "## Goals", "", *_goal_lines(metrics)]
    lines += ["", "## Calibration curve (calibrated probabilities)", ""]
    lines += ["| mean predicted | observed | n |", "| --- | --- | --- |"]
    lines += [
        f"| {_f(p['mean_predicted'])} | {_f(p['observed_rate'])} | {p['count']} |"
        for p in metrics["calibration_curve"]
    ]
    if importlib.util.find_spec("matplotlib") is not None:
        images = _plots(metrics, out)
        lines += ["", *[f"![{name}]({name})" for name in images]]
    else:
        lines += ["", "matplotlib is not installed: tables only, no plots."]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
