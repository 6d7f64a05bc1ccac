"""Versioned, hash-verified checkpoints with a model card.

A checkpoint is a directory::

    model.pt       torch.save of weights, config, featurizer, calibration, model card
    model.json     manifest: format version, name, version, sha256 of model.pt, config,
                   model card (readable without torch)
    MODEL_CARD.md  the model card for people

Loading recomputes the sha256 of ``model.pt`` and refuses the checkpoint
(:class:`~fusion.errors.CheckpointIntegrityError`) when it differs from the manifest or
from the hash the operator pinned; ``model.pt`` is read with ``weights_only=True``, so it
cannot execute code.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fusion.calibration import Calibration
from fusion.config import FusionConfig
from fusion.errors import CheckpointError, CheckpointIntegrityError
from fusion.features import Featurizer
from fusion.model import FusionModel

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.pt"
MANIFEST_FILE = "model.json"
CARD_FILE = "MODEL_CARD.md"


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_model_card(config: FusionConfig, training: dict[str, Any]) -> dict[str, Any]:
    """A model card skeleton; ``training`` describes the data (must say synthetic)."""
    return {
        "model_name": config.name,
        "intended_use": (
            "Demonstration and integration testing of the cdsfusion engine: a multimodal "
            "risk score from a chest radiograph, notes, labs, vitals and demographics. "
            "NOT for clinical use: trained on synthetic data only."
        ),
        "training_data": training,
        "metrics": {},
        "limitations": [
            "Trained and evaluated only on the synthetic cohort of fusion.synthetic; its "
            "performance on real patients is unknown.",
            "Missingness in the synthetic data is completely at random; real missingness "
            "is informative and can shift calibration and conformal coverage.",
            "Conformal intervals cover the observed 0/1 outcome marginally per missingness "
            "pattern, not per patient.",
        ],
    }


@dataclass
class LoadedCheckpoint:
    """A verified checkpoint, ready for inference.

    Attributes:
        directory: Where it was read from.
        name, version, sha256: Identity (sha256 of ``model.pt``).
        config: Architecture.
        featurizer: Fitted featurizer.
        calibration: Fitted calibration.
        model: The network in eval mode, on CPU.
        model_card: The model card dict.
    """

    directory: Path
    name: str
    version: str
    sha256: str
    config: FusionConfig
    featurizer: Featurizer
    calibration: Calibration
    model: FusionModel
    model_card: dict[str, Any]


def _card_markdown(name: str, version: str, sha256: str, card: dict[str, Any]) -> str:
    lines = [f"# Model card: {name} {version}", "", f"sha256 of `{WEIGHTS_FILE}`: `{sha256}`", ""]
    lines += ["## Intended use", "", str(card.get("intended_use", "")), ""]
    lines += ["## Training data", "", "```json", json.dumps(card.get("training_data"), indent=2)]
    lines += ["```", "", "## Metrics", "", "```json", json.dumps(card.get("metrics"), indent=2)]
    lines += ["```", "", "## Limitations", ""]
    lines += [f"- {item}" for item in card.get("limitations", [])]
    return "\n".join(lines) + "\n"


def save_checkpoint(
    directory: str | Path,
    *,
    model: FusionModel,
    featurizer: Featurizer,
    calibration: Calibration,
    model_card: dict[str, Any],
    version: str,
) -> str:
    """Write a checkpoint directory.

    Args:
        directory: Target directory (created; existing files are replaced).
        model: Trained network.
        featurizer: Its featurizer.
        calibration: Its fitted calibration.
        model_card: Intended use, training data, metrics, limitations.
        version: Model version string, e.g. ``0.1.0``.

    Returns:
        The sha256 of ``model.pt``.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    config = model.config
    payload = {
        "format_version": FORMAT_VERSION,
        "name": config.name,
        "version": version,
        "config": config.to_dict(),
        "featurizer": featurizer.state(),
        "calibration": calibration.to_dict(),
        "model_card": model_card,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    torch.save(payload, out / WEIGHTS_FILE)
    digest = sha256_of(out / WEIGHTS_FILE)
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": config.name,
        "version": version,
        "sha256": digest,
        "weights_file": WEIGHTS_FILE,
        "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "config": config.to_dict(),
        "model_card": model_card,
    }
    (out / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    (out / CARD_FILE).write_text(
        _card_markdown(config.name, version, digest, model_card), encoding="utf-8"
    )
    logger.info("wrote checkpoint %s version %s sha256 %s", config.name, version, digest)
    return digest


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of a checkpoint directory (no verification)."""
    path = Path(directory) / MANIFEST_FILE
    try:
        manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read checkpoint manifest {path}: {exc}") from exc
    return manifest


def load_checkpoint(
    directory: str | Path, *, expected_sha256: str | None = None
) -> LoadedCheckpoint:
    """Verify and load a checkpoint.

    Args:
        directory: The checkpoint directory (or its ``model.pt``).
        expected_sha256: A hash pinned by the operator; when given the file must match
            it as well as the manifest.

    Returns:
        The loaded checkpoint (model on CPU, eval mode).

    Raises:
        CheckpointIntegrityError: The file's sha256 differs from the manifest or from
            ``expected_sha256``, or the manifest disagrees with the file's contents.
        CheckpointError: Missing or unreadable files, unsupported format version.
    """
    root = Path(directory)
    if root.name == WEIGHTS_FILE:
        root = root.parent
    manifest = read_manifest(root)
    weights = root / str(manifest.get("weights_file", WEIGHTS_FILE))
    if not weights.is_file():
        raise CheckpointError(f"checkpoint weights missing: {weights}")
    actual = sha256_of(weights)
    if actual != manifest.get("sha256"):
        raise CheckpointIntegrityError(
            f"checkpoint {weights} has sha256 {actual}, manifest records "
            f"{manifest.get('sha256')}: the file was modified or corrupted; refusing to load"
        )
    if expected_sha256 is not None and actual != expected_sha256.lower():
        raise CheckpointIntegrityError(
            f"checkpoint {weights} has sha256 {actual}, expected {expected_sha256}"
        )
    try:
        payload = torch.load(weights, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"cannot read checkpoint {weights}: {exc}") from exc
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"unsupported checkpoint format {payload.get('format_version')}")
    for key in ("name", "version", "config", "model_card"):
        if json.loads(json.dumps(payload[key])) != manifest.get(key):
            raise CheckpointIntegrityError(f"manifest field {key!r} disagrees with {weights}")
    config = FusionConfig.from_dict(payload["config"])
    featurizer = Featurizer.from_state(config, payload["featurizer"])
    model = FusionModel(config, featurizer.n_codes, featurizer.vocab_size)
    model.load_state_dict(payload["state_dict"])
    model.eval()
    logger.info(
        "loaded checkpoint %s version %s sha256 %s", config.name, payload["version"], actual
    )
    return LoadedCheckpoint(
        directory=root,
        name=str(payload["name"]),
        version=str(payload["version"]),
        sha256=actual,
        config=config,
        featurizer=featurizer,
        calibration=Calibration.from_dict(payload["calibration"]),
        model=model,
        model_card=payload["model_card"],
    )
