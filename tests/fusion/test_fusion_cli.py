"""``train`` and ``evaluate`` click commands end to end on the tiny preset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from fusion.checkpoint import load_checkpoint
from fusion.cli import evaluate_command, train_command


@pytest.mark.slow
def test_train_then_evaluate(tmp_path: Path) -> None:
    runner = CliRunner()
    model_dir = tmp_path / "model"
    result = runner.invoke(
        train_command,
        [
            "--config",
            "tiny",
            "--patients",
            "120",
            "--calibration-patients",
            "40",
            "--epochs",
            "1",
            "--output",
            str(model_dir),
            "--device",
            "cpu",
            "--ablations",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    loaded = load_checkpoint(model_dir)
    assert loaded.model_card["training_data"]["kind"] == "synthetic"
    assert loaded.model_card["training_data"]["calibration_patients"] == 40
    assert loaded.model_card["training_data"]["splits"] == {
        "validation": 12,
        "calibration": 30 + 40,
        "train": 78,
    }
    assert loaded.calibration.randomized
    assert (model_dir / "ablations" / "only_labs" / "model.json").is_file()

    report_dir = tmp_path / "report"
    result = runner.invoke(
        evaluate_command,
        [
            "--checkpoint",
            str(model_dir),
            "--patients",
            "80",
            "--seed",
            "77",
            "--output",
            str(report_dir),
            "--device",
            "cpu",
            "--bootstrap",
            "10",
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((report_dir / "metrics.json").read_text())
    for key in (
        "auroc",
        "auprc",
        "auroc_ci95",
        "auprc_ci95",
        "oracle_auroc",
        "ece",
        "brier",
        "calibration_curve",
        "per_missing_subset",
        "ablations",
        "goals",
    ):
        assert key in metrics
    assert len(metrics["per_missing_subset"]) == 16
    assert set(metrics["ablations"]) == {
        "early",
        "late",
        "attention_weighted",
        "only_image",
        "only_notes",
        "only_labs",
        "only_vitals",
    }
    row = metrics["per_missing_subset"]["image+notes+labs+vitals"]
    assert {"auroc_fused", "best_single_auroc", "conformal_coverage", "oracle_auroc"} <= set(row)
    assert row["calibration_n"] == loaded.calibration.counts["image+notes+labs+vitals"]
    assert len(row["fused_minus_best_single_ci95"]) == 2
    assert metrics["training_data"]["calibration_patients"] == 40
    assert 0.0 < metrics["ece_sampling_floor"] < 1.0
    assert (report_dir / "report.md").read_text().startswith("# Evaluation")


def test_help() -> None:
    runner = CliRunner()
    assert runner.invoke(train_command, ["--help"]).exit_code == 0
    assert runner.invoke(evaluate_command, ["--help"]).exit_code == 0


def test_train_distillation_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from fusion import pipeline

    seen: list[object] = []
    monkeypatch.setattr(
        pipeline, "train_on_synthetic", lambda config, **_: seen.append(config) or {}
    )
    runner = CliRunner()
    refused = runner.invoke(train_command, ["--config", "tiny", "--distill-weight", "0.5"])
    assert refused.exit_code == 2 and "single_view_weight" in refused.output
    assert seen == []
    args = ["--config", "benchmark", "--distill-weight", "0.5", "--teacher-init"]
    result = runner.invoke(train_command, [*args, "--output", str(tmp_path), "--no-progress"])
    assert result.exit_code == 0, result.output
    (config,) = seen
    assert config.train.distill_weight == 0.5 and config.train.teacher_init  # type: ignore[attr-defined]
