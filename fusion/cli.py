"""Click commands ``train`` and ``evaluate``; the main CLI registers them as
``cdsfusion train`` and ``cdsfusion evaluate``.

Neither command configures logging: the entry point does that.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click

from fusion.config import PRESETS, preset
from fusion.errors import ConfigError


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


@click.command("train")
@click.option(
    "--config",
    "config_name",
    type=click.Choice(PRESETS),
    default="demo",
    show_default=True,
    help="Configuration preset.",
)
@click.option(
    "--patients",
    type=int,
    default=4000,
    show_default=True,
    help="Synthetic cohort size (65% train, 10% validation, 25% calibration).",
)
@click.option(
    "--calibration-patients",
    type=int,
    default=0,
    show_default=True,
    help="Further held-out patients for the calibration split only (temperature and "
    "per-pattern conformal quantiles); the benchmark uses thousands.",
)
@click.option("--epochs", type=int, default=None, help="Override the preset's epochs.")
@click.option("--seed", type=int, default=0, show_default=True, help="Cohort and model seed.")
@click.option(
    "--output",
    "output_dir",
    type=click.Path(path_type=Path),
    default=Path("var/models/demo"),
    show_default=True,
    help="Checkpoint directory.",
)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="cpu, cuda, cuda:N or auto; bf16 autocast on CUDA.",
)
@click.option(
    "--resume/--no-resume",
    default=False,
    show_default=True,
    help="Continue an interrupted run from its train_state.pt.",
)
@click.option(
    "--ablations/--no-ablations",
    default=False,
    show_default=True,
    help="Also train the early/late/attention baselines and single-modality models.",
)
@click.option(
    "--distill-weight",
    type=float,
    default=None,
    help="Uni-modal teacher distillation (0 to 1): the single-modality models train first "
    "and each single-modality view learns their probabilities mixed with the label; needs "
    "a preset that scores single-modality views (benchmark). Defaults to the preset's.",
)
@click.option(
    "--teacher-init/--no-teacher-init",
    default=None,
    help="Start the image and note encoders from the single-modality teachers, at a lower "
    "learning rate. Defaults to the preset's.",
)
@click.option("--version", "model_version", default="0.1.0", show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True)
def train_command(
    *,
    config_name: str,
    patients: int,
    calibration_patients: int,
    epochs: int | None,
    seed: int,
    output_dir: Path,
    device: str,
    resume: bool,
    ablations: bool,
    distill_weight: float | None,
    teacher_init: bool | None,
    model_version: str,
    progress: bool,
) -> None:
    """Train the fusion model on a synthetic cohort and write a verified checkpoint.

    The model is labelled as trained on synthetic data in its model card.
    """
    import torch

    from fusion.pipeline import train_on_synthetic

    config = preset(config_name)
    config.train.seed = seed
    if epochs is not None:
        config.train.epochs = epochs
    if distill_weight is not None:
        config.train.distill_weight = distill_weight
    if teacher_init is not None:
        config.train.teacher_init = teacher_init
    try:
        config.validate()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    torch.manual_seed(seed)
    written = train_on_synthetic(
        config,
        n_patients=patients,
        seed=seed,
        output_dir=output_dir,
        device=_device(device),
        resume=resume,
        ablations=ablations,
        show_progress=progress,
        version=model_version,
        calibration_patients=calibration_patients,
    )
    for name, digest in written.items():
        click.echo(f"{name}: sha256 {digest}")
    click.echo(f"checkpoint: {output_dir}")


@click.command("evaluate")
@click.option(
    "--checkpoint",
    "checkpoint_dir",
    type=click.Path(path_type=Path, exists=True),
    default=Path("var/models/demo"),
    show_default=True,
)
@click.option(
    "--patients",
    type=int,
    default=2000,
    show_default=True,
    help="Size of the held-out synthetic test cohort.",
)
@click.option(
    "--seed",
    type=int,
    default=1000,
    show_default=True,
    help="Test cohort seed (must differ from the training seed).",
)
@click.option(
    "--output",
    "output_dir",
    type=click.Path(path_type=Path),
    default=Path("var/reports/demo"),
    show_default=True,
)
@click.option("--device", default="auto", show_default=True)
@click.option(
    "--bootstrap",
    type=int,
    default=500,
    show_default=True,
    help="Bootstrap resamples for the confidence intervals.",
)
def evaluate_command(
    *, checkpoint_dir: Path, patients: int, seed: int, output_dir: Path, device: str, bootstrap: int
) -> None:
    """Evaluate a checkpoint on held-out synthetic patients: report.md and metrics.json."""
    from fusion.evaluation import evaluate_checkpoint
    from fusion.report import write_report

    metrics = evaluate_checkpoint(
        checkpoint_dir,
        n_patients=patients,
        seed=seed,
        device=_device(device),
        n_bootstrap=bootstrap,
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "metrics.json").write_text(
        json.dumps(_json_safe(metrics), indent=2) + "\n", encoding="utf-8"
    )
    report = write_report(metrics, output_dir)
    click.echo(
        f"AUROC {metrics['auroc']:.3f} (oracle {metrics['oracle_auroc']:.3f}), "
        f"ECE {metrics['ece']:.3f}, Brier {metrics['brier']:.3f}"
    )
    click.echo(f"report: {report}")
