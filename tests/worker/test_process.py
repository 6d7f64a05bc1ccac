"""The worker process's command line and model warm-up."""

from __future__ import annotations

from pathlib import Path

from cds.core.settings import Settings
from fusion.inputs import MODALITIES
from worker.model import warm_up_inputs
from worker.process import BATCHES_IN_FLIGHT, worker_argv


def _option(argv: list[str], name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in argv if a.startswith(f"--{name}=")]
    return value


def test_default_threads_keep_every_step_of_the_pipeline_fed(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, worker_batch_size=16)
    argv = worker_argv(settings, None)
    assert int(_option(argv, "concurrency")) == BATCHES_IN_FLIGHT * 16
    # A bounded prefetch: a couple of messages per thread, not threads squared.
    assert int(_option(argv, "prefetch-multiplier")) == 2
    assert _option(argv, "pool") == "threads"


def test_explicit_concurrency_wins(tmp_path: Path) -> None:
    argv = worker_argv(Settings(data_dir=tmp_path, worker_batch_size=16), 8)
    assert _option(argv, "concurrency") == "8"


def test_warm_up_bundles_have_every_modality() -> None:
    bundles = warm_up_inputs(3)
    assert len(bundles) == 3
    for bundle in bundles:
        assert set(bundle.present_modalities()) == set(MODALITIES)
