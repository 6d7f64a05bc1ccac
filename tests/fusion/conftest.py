"""Shared fixtures of the fusion tests: a tiny cohort, config, featurizer and checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fusion.calibration import Calibration
from fusion.checkpoint import default_model_card, save_checkpoint
from fusion.config import FusionConfig, preset
from fusion.features import Featurizer
from fusion.inputs import BundleInput
from fusion.synthetic import SyntheticPatient, generate_cohort
from fusion.training import build_model


@pytest.fixture(scope="session")
def cohort() -> list[SyntheticPatient]:
    return generate_cohort(48, seed=11)


@pytest.fixture(scope="session")
def inputs(cohort: list[SyntheticPatient]) -> list[BundleInput]:
    return [p.to_bundle_input() for p in cohort]


@pytest.fixture
def tiny_config() -> FusionConfig:
    return preset("tiny")


@pytest.fixture(scope="session")
def featurizer(inputs: list[BundleInput]) -> Featurizer:
    return Featurizer.fit(preset("tiny"), inputs)


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory, featurizer: Featurizer) -> Path:
    """An untrained tiny model saved as a checkpoint with an identity calibration."""
    torch.manual_seed(0)
    model = build_model(preset("tiny"), featurizer.n_codes, featurizer.vocab_size)
    calibration = Calibration(quantiles={"image+notes+labs+vitals": 0.4}, pooled_quantile=0.6)
    directory = tmp_path_factory.mktemp("checkpoint")
    card = default_model_card(model.config, {"kind": "synthetic", "seed": 11, "n_patients": 48})
    save_checkpoint(
        directory,
        model=model,
        featurizer=featurizer,
        calibration=calibration,
        model_card=card,
        version="0.0.1-test",
    )
    return directory


def labels_of(cohort: list[SyntheticPatient]) -> np.ndarray:
    return np.array([p.label for p in cohort])
