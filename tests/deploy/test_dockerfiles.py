"""docker/Dockerfile.api and docker/Dockerfile.worker, and the build context they share."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from tests.deploy import composefile, dockerfile

API = composefile.DOCKER_DIR / "Dockerfile.api"
WORKER = composefile.DOCKER_DIR / "Dockerfile.worker"
DOCKERIGNORE = composefile.REPO_ROOT / ".dockerignore"
HEAVY = re.compile(r"\b(torch|torchvision|transformers|nvidia-ml-py)\b")


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((composefile.REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _installed_extras(image: dockerfile.Dockerfile) -> list[set[str]]:
    return [
        extras
        for stage in image.stages
        for command in stage.run_commands()
        if "pip install" in command
        for extras in dockerfile.pip_extras(command)
    ]


def _copied_sources(image: dockerfile.Dockerfile) -> list[str]:
    """Paths of the build context that COPY instructions take (not ``--from`` a stage)."""
    return [
        source.rstrip("/")
        for stage in image.stages
        for copy in stage.all("COPY")
        if not copy.args.startswith("--from")
        for source in copy.exec_form()[:-1]
    ]


def test_api_image_installs_the_package_without_the_model_extra() -> None:
    image = dockerfile.parse(API)
    extras = _installed_extras(image)
    assert extras, "the api image does not pip-install the project"
    assert all("model" not in e and "gpu" not in e for e in extras), extras
    assert {"redis"} in extras, "the api needs the redis extra to reach the broker"
    for stage in image.stages:
        for command in stage.run_commands():
            assert not HEAVY.search(command), f"api image installs a model dependency: {command}"
    assert not image.final.base.startswith("nvidia/"), "the api needs no CUDA base"


def test_model_extra_is_what_the_api_image_leaves_out() -> None:
    """The api image is torch-free because torch lives in the model extra, not the core."""
    project = _pyproject()["project"]
    core = " ".join(project["dependencies"])
    assert not HEAVY.search(core), "torch or transformers became a core dependency"
    model = " ".join(project["optional-dependencies"]["model"])
    assert "torch" in model


def test_worker_image_is_cuda_with_model_and_gpu_extras() -> None:
    image = dockerfile.parse(WORKER)
    assert image.final.base.startswith("nvidia/cuda:"), image.final.base
    extras = _installed_extras(image)
    assert any({"model", "gpu", "redis"} <= e for e in extras), extras


def test_worker_torch_is_the_cuda_build_of_the_makefile_version() -> None:
    """One torch version for `make` and the image; the wheel index matches the CUDA base."""
    image = dockerfile.parse(WORKER)
    build = next(s for s in image.stages if any("torch==" in c for c in s.run_commands()))
    args = image.stage_args(build)
    makefile = (composefile.REPO_ROOT / "Makefile").read_text(encoding="utf-8")
    wanted = re.search(r"^TORCH_VERSION\s*\?=\s*(\S+)", makefile, re.MULTILINE)
    assert wanted, "Makefile has no TORCH_VERSION"
    assert args["TORCH_VERSION"] == wanted.group(1)
    major, minor = image.global_args["CUDA_VERSION"].split(".")[:2]
    assert args["TORCH_CUDA"] == f"cu{major}{minor}"
    install = next(c for c in build.run_commands() if "torch==" in c)
    assert "download.pytorch.org/whl/${TORCH_CUDA}" in install
    assert image.final.base == image.stages[0].base, "build and run on the same CUDA base"


@pytest.mark.parametrize("path", [API, WORKER], ids=lambda p: p.name)
def test_image_runs_as_a_fixed_non_root_user(path: Path) -> None:
    user = dockerfile.parse(path).final.last("USER")
    assert user is not None, "no USER: the process would run as root"
    uid = user.args.split(":")[0]
    assert uid not in {"root", "0"}
    assert uid == "10001", "api and worker share volumes: one uid for both"


@pytest.mark.parametrize("path", [API, WORKER], ids=lambda p: p.name)
def test_image_has_a_healthcheck_with_the_copied_probe(path: Path) -> None:
    final = dockerfile.parse(path).final
    healthcheck = final.last("HEALTHCHECK")
    assert healthcheck is not None
    destinations = [
        c.exec_form()[-1] for c in final.all("COPY") if "docker/healthcheck.py" in c.args
    ]
    assert destinations, "docker/healthcheck.py is not copied into the image"
    assert f"python {destinations[0]} " in healthcheck.args


@pytest.mark.parametrize("path", [API, WORKER], ids=lambda p: p.name)
def test_image_copies_every_package_of_the_distribution(path: Path) -> None:
    """A new top-level package in pyproject.toml must reach the images too."""
    copied = set(_copied_sources(dockerfile.parse(path)))
    include = _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.rstrip("*") for pattern in include}
    assert packages <= copied, sorted(packages - copied)
    assert {"pyproject.toml", "README.md"} <= copied


@pytest.mark.parametrize("path", [API, WORKER], ids=lambda p: p.name)
def test_image_default_command_is_the_compose_command(path: Path) -> None:
    raw = composefile.raw()
    cmd = dockerfile.parse(path).final.last("CMD")
    assert cmd is not None
    assert dockerfile.parse(path).final.last("ENTRYPOINT") is None
    kind = "serve" if path == API else "worker"
    assert cmd.exec_form() == ["cdsfusion", kind]
    assert any(
        composefile.build_dockerfile(svc) == path and composefile.runs(svc, kind)
        for svc in raw["services"].values()
    )


def _dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert not any(p.startswith("!") for p in patterns), "keep .dockerignore exclusion-only"
    return [p.rstrip("/") for p in patterns]


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, simplified: a pattern matches the path or a parent; ``**/`` any depth."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    tails = ["/".join(parts[i:j]) for i in range(len(parts)) for j in range(i + 1, len(parts) + 1)]
    for pattern in patterns:
        if pattern.startswith("**/"):
            if any(fnmatch.fnmatchcase(tail, pattern[3:]) for tail in tails):
                return True
        elif any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            return True
    return False


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    patterns = _dockerignore_patterns()
    for path in (
        ".venv",
        "var",
        ".git",
        ".venv/bin/python",
        "var/cdsfusion.db",
        "docker/.env",
        "cds/__pycache__/x.pyc",
    ):
        assert _ignored(path, patterns), f"{path} would be sent to the build"


@pytest.mark.parametrize("path", [API, WORKER], ids=lambda p: p.name)
def test_dockerignore_keeps_what_the_images_copy(path: Path) -> None:
    patterns = _dockerignore_patterns()
    for source in _copied_sources(dockerfile.parse(path)):
        assert not _ignored(source, patterns), f"{source} is ignored"
        assert (composefile.REPO_ROOT / source).exists(), f"{source} does not exist"
