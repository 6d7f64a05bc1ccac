"""docker/compose.yaml against the services, settings and commands the code expects."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
from pydantic import SecretStr
from sqlalchemy.engine import make_url

from cds.core.settings import DEFAULT_SECRET_KEY, Mode, Settings
from cds.hooks.auth import load_issuers
from connectors.dicom.security import AccessPolicy
from tests.deploy import composefile, dockerfile
from tests.deploy.commands import option_envvars

SettingsOf = Callable[[Mapping[str, Any]], Settings]

SETTING_NAMES = {f"CDSFUSION_{name.upper()}" for name in Settings.model_fields}
SECRET_SETTINGS = {
    f"CDSFUSION_{name.upper()}"
    for name, info in Settings.model_fields.items()
    if SecretStr in (info.annotation, *getattr(info.annotation, "__args__", ()))
}
SECRET_LOOKING = re.compile(r"SECRET|PASSWORD|PASSPHRASE|TOKEN|CREDENTIAL|_KEY$")
REQUIRED_INTERPOLATION = re.compile(r"^\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*):\?[^}]*\}$")
URL_CREDENTIALS = re.compile(r"://[^/@\s]*:[^/@\s]+@")
CDSFUSION_NAME = re.compile(r"CDSFUSION_[A-Z0-9_]*[A-Z0-9]")


def _engine_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Services whose cdsfusion command loads Settings (``train`` reads none)."""
    return {
        name: svc
        for name, svc in services.items()
        if composefile.runs(svc) and not composefile.runs(svc, "train")
    }


def _all_cdsfusion_names(raw: dict[str, Any]) -> set[str]:
    """Every CDSFUSION_* name the docker/ files set, interpolate or document."""
    text = composefile.COMPOSE_FILE.read_text(encoding="utf-8")
    names = set(CDSFUSION_NAME.findall(text))
    for service in raw["services"].values():
        names |= {n for n in composefile.environment(service) if n.startswith("CDSFUSION_")}
    for path in sorted(composefile.DOCKER_DIR.glob("Dockerfile*")):
        names |= set(CDSFUSION_NAME.findall(path.read_text(encoding="utf-8")))
    for path in (composefile.ENV_EXAMPLE, composefile.DOCKER_DIR / "README.md"):
        names |= set(CDSFUSION_NAME.findall(path.read_text(encoding="utf-8")))
    return names


def test_expected_services_exist(services: dict[str, dict[str, Any]]) -> None:
    assert {"postgres", "redis", "migrate", "api"} <= services.keys()
    assert any(composefile.runs(svc, "worker") for svc in services.values())


def test_every_cdsfusion_variable_is_a_setting(raw_compose: dict[str, Any]) -> None:
    """A renamed or misspelt setting breaks this test, not a deployment."""
    known = SETTING_NAMES | option_envvars()
    unknown = sorted(_all_cdsfusion_names(raw_compose) - known)
    assert not unknown, f"not a Settings field nor a cdsfusion option envvar: {unknown}"


@pytest.mark.parametrize("name", ["migrate", "api", "worker-0", "train"])
def test_services_built_from_the_right_image(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    wanted = "Dockerfile.worker" if name.startswith(("worker", "train")) else "Dockerfile.api"
    path = composefile.build_dockerfile(services[name])
    assert path == composefile.DOCKER_DIR / wanted
    assert path.is_file()


def test_services_of_one_dockerfile_share_one_image(services: dict[str, dict[str, Any]]) -> None:
    """Otherwise ``docker compose build`` builds the same image under several names."""
    images: dict[Path, set[str]] = {}
    for svc in services.values():
        path = composefile.build_dockerfile(svc)
        if path:
            images.setdefault(path, set()).add(str(svc.get("image")))
    assert all(len(names) == 1 for names in images.values()), images


def test_cdsfusion_processes_get_startable_production_settings(
    services: dict[str, dict[str, Any]], settings_of: SettingsOf
) -> None:
    """Image ENV plus compose environment builds Settings and passes its startup check."""
    for name, svc in _engine_services(services).items():
        settings = settings_of(svc)
        assert settings.mode is Mode.PRODUCTION, name
        assert (
            settings.secret_key.get_secret_value()
            == composefile.SITE_VALUES["CDSFUSION_SECRET_KEY"]
        )


def test_database_url_points_at_the_postgres_service(
    services: dict[str, dict[str, Any]], settings_of: SettingsOf
) -> None:
    postgres = composefile.environment(services["postgres"])
    for name, svc in _engine_services(services).items():
        url = make_url(settings_of(svc).database_url)
        assert url.drivername == "postgresql+psycopg", name
        assert url.host in services, f"{name}: {url.host} is not a service"
        assert url.username == postgres["POSTGRES_USER"]
        assert url.database == postgres["POSTGRES_DB"]
        assert url.password is None, f"{name}: a password in the database URL"
        # libpq reads the password from PGPASSWORD.
        assert composefile.environment(svc)["PGPASSWORD"] == postgres["POSTGRES_PASSWORD"]


def test_api_serves_with_a_broker(
    services: dict[str, dict[str, Any]], settings_of: SettingsOf
) -> None:
    """Without a broker `serve` would load the model in-process: the api image has no torch."""
    api = services["api"]
    assert composefile.command(api) == ["cdsfusion", "serve"]
    broker = settings_of(api).broker_url
    assert broker is not None
    parts = urlsplit(broker)
    assert parts.scheme in {"redis", "rediss", "amqp", "amqps"}
    assert parts.hostname in services, f"broker host {parts.hostname} is not a service"


def test_workers_share_the_api_broker(
    services: dict[str, dict[str, Any]],
    workers: dict[str, dict[str, Any]],
    settings_of: SettingsOf,
) -> None:
    broker = settings_of(services["api"]).broker_url
    for name, svc in workers.items():
        assert settings_of(svc).broker_url == broker, name


def test_api_settings_satisfy_its_listeners(
    services: dict[str, dict[str, Any]], settings_of: SettingsOf
) -> None:
    """The DICOM SCP refuses production without an AE allow-list; links need a base URL."""
    settings = settings_of(services["api"])
    AccessPolicy.from_settings(settings)
    assert settings.public_base_url == "https://cds.hospital.example"
    assert settings.fhir_server_url is None  # an empty value keeps results local


def test_migrate_upgrades_the_database_once(services: dict[str, dict[str, Any]]) -> None:
    migrate = services["migrate"]
    assert composefile.command(migrate) == ["cdsfusion", "db", "upgrade"]
    assert migrate.get("restart") == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"


@pytest.mark.parametrize("name", ["api", "worker-0", "worker-1"])
def test_processes_wait_for_migrations_and_backing_services(
    services: dict[str, dict[str, Any]], name: str
) -> None:
    depends = services[name]["depends_on"]
    assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert depends["postgres"]["condition"] == "service_healthy"
    assert depends["redis"]["condition"] == "service_healthy"


def test_workers_run_worker_and_each_reserve_their_own_gpu(
    workers: dict[str, dict[str, Any]],
) -> None:
    seen: list[str] = []
    for name, svc in workers.items():
        assert composefile.command(svc) == ["cdsfusion", "worker"], name
        devices = composefile.gpu_devices(svc)
        assert len(devices) == 1, f"{name}: one device reservation"
        device = devices[0]
        assert device["driver"] == "nvidia"
        assert "gpu" in device["capabilities"]
        # One GPU per worker, by id: Docker hands `count: 1` the host's first GPU every time.
        assert "count" not in device, f"{name}: pin the GPU with device_ids"
        assert len(device["device_ids"]) == 1, name
        seen += device["device_ids"]
        assert (svc.get("deploy") or {}).get("replicas", 1) == 1, name
    assert len(seen) == len(set(seen)), f"two workers share a GPU: {seen}"


def test_only_gpu_processes_reserve_gpus(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        if composefile.gpu_devices(svc):
            assert composefile.runs(svc, "worker") or composefile.runs(svc, "train"), name


def test_api_publishes_the_listener_ports(
    services: dict[str, dict[str, Any]], settings_of: SettingsOf
) -> None:
    settings = settings_of(services["api"])
    ports = composefile.published_ports(services["api"])
    assert (settings.http_port, settings.dicom_port, settings.mllp_port) == (8080, 11112, 2575)
    for port in (settings.http_port, settings.dicom_port, settings.mllp_port):
        assert ports.get(port) == port, f"container port {port} not published as {port}"


def _healthcheck_url(service: Mapping[str, Any], script: str) -> str:
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD", "exec-form healthcheck"
    assert test[1:3] == ["python", script], test
    return str(test[3])


def _copied_healthcheck(service: Mapping[str, Any]) -> str:
    """Where the service's Dockerfile puts docker/healthcheck.py."""
    path = composefile.build_dockerfile(service)
    assert path
    for copy in dockerfile.parse(path).final.all("COPY"):
        words = copy.exec_form()
        if words[0] == "docker/healthcheck.py":
            return words[-1]
    raise AssertionError(f"{path.name} does not copy docker/healthcheck.py")


def test_api_healthcheck_probes_readiness_on_its_port(
    services: dict[str, dict[str, Any]], settings_of: SettingsOf
) -> None:
    api = services["api"]
    url = urlsplit(_healthcheck_url(api, _copied_healthcheck(api)))
    assert url.hostname in {"127.0.0.1", "localhost"}
    assert url.port == settings_of(api).http_port
    assert url.path in {"/readyz", "/healthz"}


def test_worker_healthchecks_probe_their_metrics_port(workers: dict[str, dict[str, Any]]) -> None:
    for name, svc in workers.items():
        url = urlsplit(_healthcheck_url(svc, _copied_healthcheck(svc)))
        assert url.hostname in {"127.0.0.1", "localhost"}, name
        metrics_port = composefile.environment(svc)["CDSFUSION_WORKER_METRICS_PORT"]
        assert url.port == int(metrics_port), name
        assert url.path == "/metrics", name


def test_backing_services_have_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    postgres = services["postgres"]
    test = postgres["healthcheck"]["test"]
    env = composefile.environment(postgres)
    assert "pg_isready" in test
    assert test[test.index("-U") + 1] == env["POSTGRES_USER"]
    assert test[test.index("-d") + 1] == env["POSTGRES_DB"]
    assert services["redis"]["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]


def test_dicom_store_is_one_volume_written_by_api_and_read_by_workers(
    compose: dict[str, Any],
    services: dict[str, dict[str, Any]],
    workers: dict[str, dict[str, Any]],
    settings_of: SettingsOf,
) -> None:
    api = services["api"]
    data_dir = str(settings_of(api).data_dir)
    (store,) = [m for m in composefile.mounts(api) if m.target == data_dir]
    assert store.named and not store.read_only
    assert store.source in compose["volumes"]
    for name, svc in workers.items():
        worker_dir = str(settings_of(svc).data_dir)
        shared = [m for m in composefile.mounts(svc) if m.target == worker_dir]
        assert [m.source for m in shared] == [store.source], f"{name} cannot see the DICOM store"


def _volume_path(service: Mapping[str, Any], path: str) -> tuple[composefile.Mount, str]:
    """The mount holding ``path`` in a service, and ``path`` relative to it."""
    for mount in composefile.mounts(service):
        target = PurePosixPath(mount.target)
        if PurePosixPath(path).is_relative_to(target):
            return mount, str(PurePosixPath(path).relative_to(target))
    raise AssertionError(f"{path} is on no volume")


def test_api_and_workers_read_the_checkpoint_train_writes(
    compose: dict[str, Any],
    services: dict[str, dict[str, Any]],
    workers: dict[str, dict[str, Any]],
    settings_of: SettingsOf,
) -> None:
    """Workers load the weights; the api serves the same checkpoint's card (model.json)."""
    train = composefile.command(services["train"])
    train_output = train[train.index("--output") + 1]
    written, written_at = _volume_path(services["train"], train_output)
    assert not written.read_only
    assert written.source in compose["volumes"]
    for name, svc in {"api": services["api"], **workers}.items():
        model_dir = settings_of(svc).model_dir
        assert model_dir is not None, f"{name}: set CDSFUSION_MODEL_DIR"
        mount, relative = _volume_path(svc, str(model_dir))
        assert mount.named and mount.read_only, name
        assert (mount.source, relative) == (written.source, written_at), (
            f"{name} reads another checkpoint than `train` writes"
        )


def test_file_settings_point_into_mounted_files(
    services: dict[str, dict[str, Any]], settings_of: SettingsOf
) -> None:
    """A *_FILE setting on a bind mount names a file the repository ships, and it loads."""
    for name, svc in _engine_services(services).items():
        settings = settings_of(svc)
        for field in Settings.model_fields:
            value = getattr(settings, field)
            if not field.endswith("_file") or value is None:
                continue
            mount, relative = _volume_path(svc, str(value))
            assert not mount.named, f"{name}: {field} on a named volume cannot be checked"
            host = composefile.DOCKER_DIR / mount.source / relative
            assert host.is_file(), f"{name}: {field} -> {host} missing"
            assert mount.read_only
    issuers = settings_of(services["api"]).cds_hooks_issuers_file
    assert issuers is not None
    mount, relative = _volume_path(services["api"], str(issuers))
    assert load_issuers(composefile.DOCKER_DIR / mount.source / relative) == {}


def test_no_secret_is_a_literal(raw_compose: dict[str, Any]) -> None:
    """Secrets come from the environment or docker/.env, as required interpolations."""
    assert DEFAULT_SECRET_KEY not in composefile.COMPOSE_FILE.read_text(encoding="utf-8")
    checked = set()
    for service_name, service in raw_compose["services"].items():
        for name, value in composefile.environment(service).items():
            where = f"{service_name}: {name}"
            if name in SECRET_SETTINGS or (
                SECRET_LOOKING.search(name) and not name.endswith(("_FILE", "_ID"))
            ):
                assert REQUIRED_INTERPOLATION.match(value), f"{where}: use ${{NAME:?message}}"
                checked.add(name)
            assert not URL_CREDENTIALS.search(value), f"{where}: credentials in a URL"
    assert {"CDSFUSION_SECRET_KEY", "POSTGRES_PASSWORD", "PGPASSWORD"} <= checked


def test_dollars_are_interpolations_or_escaped() -> None:
    """Compose reads a bare ``$NAME`` as a variable: the file uses ``${NAME}`` or ``$$``."""
    for number, line in enumerate(composefile.COMPOSE_FILE.read_text().splitlines(), 1):
        if line.lstrip().startswith("#"):
            continue
        assert not composefile.BARE_DOLLAR.search(line.replace("$$", "")), f"line {number}"


def test_env_example_lists_every_variable(raw_compose: dict[str, Any]) -> None:
    """docker/.env.example names every interpolated variable; secrets are left empty."""
    example = composefile.load_env_file(composefile.ENV_EXAMPLE)
    used = composefile.variables(raw_compose)
    assert sorted(set(used) - set(example)) == []
    for name, op in used.items():
        if op == ":?":
            assert example[name] == "", f"{name}: the example must not ship a value"


def test_compose_refuses_to_render_without_the_secrets(
    raw_compose: dict[str, Any], site_env: dict[str, str]
) -> None:
    for name in ("CDSFUSION_SECRET_KEY", "POSTGRES_PASSWORD"):
        env = {k: v for k, v in site_env.items() if k != name}
        with pytest.raises(composefile.MissingVariableError, match=name):
            composefile.render(raw_compose, env)
