"""The settings object: contract defaults, environment overrides, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from cds.core.errors import ConfigurationError
from cds.core.settings import DEFAULT_SECRET_KEY, Mode, Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("CDSFUSION_"):
            monkeypatch.delenv(key)


def test_defaults_match_the_contract() -> None:
    s = Settings()
    assert s.mode is Mode.EMBEDDED
    assert s.database_url == "sqlite:///var/cdsfusion.db"
    assert s.broker_url is None
    assert s.data_dir == Path("var")
    assert (s.http_port, s.dicom_port, s.mllp_port) == (8080, 11112, 2575)
    assert s.dicom_ae_title == "CDSFUSION"
    assert s.fhir_server_url is None
    assert s.bind_host == "127.0.0.1"


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDSFUSION_DATABASE_URL", "postgresql+psycopg://cds@db/cds")
    monkeypatch.setenv("CDSFUSION_BROKER_URL", "redis://broker:6379/0")
    monkeypatch.setenv("CDSFUSION_HTTP_PORT", "9090")
    monkeypatch.setenv("CDSFUSION_DICOM_AE_TITLE", "PACSGW")
    s = Settings()
    assert s.database_url.startswith("postgresql")
    assert s.broker_url == "redis://broker:6379/0"
    assert s.http_port == 9090
    assert s.dicom_ae_title == "PACSGW"


def test_empty_broker_means_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDSFUSION_BROKER_URL", "")
    assert Settings().broker_url is None


def test_secret_is_not_printed() -> None:
    s = Settings()
    assert DEFAULT_SECRET_KEY not in repr(s)
    assert DEFAULT_SECRET_KEY not in str(s.model_dump())


def test_production_refuses_default_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDSFUSION_MODE", "production")
    with pytest.raises(ConfigurationError, match="CDSFUSION_SECRET_KEY"):
        Settings().check_startable()
    monkeypatch.setenv("CDSFUSION_SECRET_KEY", "short")
    with pytest.raises(ConfigurationError, match="32 characters"):
        Settings().check_startable()
    monkeypatch.setenv("CDSFUSION_SECRET_KEY", "x" * 40)
    s = Settings()
    s.check_startable()
    assert s.bind_host == "0.0.0.0"


def test_embedded_accepts_default_secret() -> None:
    Settings().check_startable()


@pytest.mark.parametrize("title", ["", "A" * 17, "BAD\\AE"])
def test_invalid_ae_titles_refused(monkeypatch: pytest.MonkeyPatch, title: str) -> None:
    monkeypatch.setenv("CDSFUSION_DICOM_AE_TITLE", title)
    with pytest.raises(ValidationError):
        Settings()


def test_invalid_port_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CDSFUSION_HTTP_PORT", "70000")
    with pytest.raises(ValidationError):
        Settings()


def test_sql_is_not_logged_at_info() -> None:
    """Regression: the SQLAlchemy engine logger was set to INFO, which turns SQL echo on."""
    import logging

    from cds.core.logging_setup import configure_logging

    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        configure_logging("INFO")
        assert not logging.getLogger("sqlalchemy.engine").isEnabledFor(logging.INFO)
        configure_logging("DEBUG")
        sql = logging.getLogger("sqlalchemy.engine")
        assert sql.isEnabledFor(logging.INFO) and not sql.isEnabledFor(logging.DEBUG)
    finally:
        root.handlers[:], root.level = saved


@pytest.mark.parametrize(
    "name", ["CDSFUSION_CDS_HOOKS_ISSUERS_FILE", "CDSFUSION_MODEL_SHA256", "CDSFUSION_TASKS_DIR"]
)
def test_empty_optional_setting_means_unset(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Regression: an empty value became Path('.') or '' instead of 'not set'."""
    monkeypatch.setenv(name, "")
    assert getattr(Settings(), name.removeprefix("CDSFUSION_").lower()) is None
