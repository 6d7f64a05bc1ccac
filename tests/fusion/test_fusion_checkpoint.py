"""Checkpoints: round trip, sha256 verification, tamper detection, model card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from fusion.batch import collate
from fusion.checkpoint import load_checkpoint, sha256_of
from fusion.errors import CheckpointError, CheckpointIntegrityError
from fusion.features import Featurizer
from fusion.inputs import BundleInput


def test_round_trip_gives_identical_logits(
    checkpoint_dir: Path, featurizer: Featurizer, inputs: list[BundleInput]
) -> None:
    first = load_checkpoint(checkpoint_dir)
    second = load_checkpoint(checkpoint_dir / "model.pt")
    batch = collate([first.featurizer.encode(i) for i in inputs[:8]], 32)
    with torch.no_grad():
        assert torch.equal(first.model(batch)[0], second.model(batch)[0])
    assert first.sha256 == sha256_of(checkpoint_dir / "model.pt")
    assert first.version == "0.0.1-test"
    assert first.featurizer.codes == featurizer.codes
    assert first.calibration.quantiles == {"image+notes+labs+vitals": 0.4}


def test_manifest_and_model_card(checkpoint_dir: Path) -> None:
    manifest = json.loads((checkpoint_dir / "model.json").read_text())
    assert manifest["sha256"] == sha256_of(checkpoint_dir / "model.pt")
    card = manifest["model_card"]
    assert card["training_data"]["kind"] == "synthetic"
    assert {"intended_use", "training_data", "metrics", "limitations"} <= set(card)
    assert "synthetic" in (checkpoint_dir / "MODEL_CARD.md").read_text().lower()


def _copy(checkpoint_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(checkpoint_dir, target)
    return target


def test_tampered_weights_are_refused(checkpoint_dir: Path, tmp_path: Path) -> None:
    copy = _copy(checkpoint_dir, tmp_path)
    data = bytearray((copy / "model.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / "model.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointIntegrityError, match="sha256"):
        load_checkpoint(copy)


def test_tampered_manifest_is_refused(checkpoint_dir: Path, tmp_path: Path) -> None:
    copy = _copy(checkpoint_dir, tmp_path)
    manifest = json.loads((copy / "model.json").read_text())
    manifest["model_card"]["intended_use"] = "diagnose everything"
    (copy / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointIntegrityError):
        load_checkpoint(copy)


def test_pinned_hash_must_match(checkpoint_dir: Path) -> None:
    digest = sha256_of(checkpoint_dir / "model.pt")
    assert load_checkpoint(checkpoint_dir, expected_sha256=digest.upper()).sha256 == digest
    with pytest.raises(CheckpointIntegrityError):
        load_checkpoint(checkpoint_dir, expected_sha256="0" * 64)


def test_missing_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="manifest"):
        load_checkpoint(tmp_path)
