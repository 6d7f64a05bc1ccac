"""The one settings object of the engine.

Every setting is an environment variable with the ``CDSFUSION_`` prefix (names fixed in
``shared/CONTRACT.md`` and documented in README). The object is built once, in the entry
point, and passed down; nothing reads the environment at import time.

Two modes:

* ``embedded`` (default): one process, SQLite file, in-process worker, listeners bound to
  loopback. Development and demos.
* ``production``: PostgreSQL, a Celery broker, listeners on all interfaces. The engine
  refuses to start with a default secret in this mode (:meth:`Settings.check_startable`).
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, get_args

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from cds.core.errors import ConfigurationError

#: The development secret shipped with the code. Fine on a laptop, refused in production.
DEFAULT_SECRET_KEY = "cdsfusion-embedded-development-secret"  # noqa: S105 - refused in production


class Mode(enum.StrEnum):
    """How the engine is deployed."""

    EMBEDDED = "embedded"
    PRODUCTION = "production"


class DicomDuplicatePolicy(enum.StrEnum):
    """What to do when a SOPInstanceUID arrives again with different bytes."""

    KEEP_NEWEST = "keep-newest"
    REJECT = "reject"


class Settings(BaseSettings):
    """Engine settings; each field is ``CDSFUSION_<FIELD NAME IN CAPITALS>``.

    Attributes:
        mode: ``embedded`` or ``production``. Defaults to ``embedded``.
        database_url: SQLAlchemy URL of the timeline database. Defaults to a SQLite file
            ``var/cdsfusion.db``.
        broker_url: Celery broker URL. ``None`` (default) runs jobs in-process.
        data_dir: where received DICOM files and the embedded database live. Defaults to
            ``var/``.
        http_host: interface of the HTTP listener. Defaults to loopback in embedded mode and
            all interfaces in production.
        http_port: HTTP listener port (CDS Hooks, FHIR, audit pages, health). Defaults to 8080.
        http_processes: processes serving HTTP on that port (``SO_REUSEPORT``), for
            multi-core hosts; the extra ones serve HTTP only. Defaults to 1.
        dicom_port: DICOM SCP port; 0 disables the listener. Defaults to 11112.
        dicom_ae_title: the SCP's AE title. Defaults to ``CDSFUSION``.
        mllp_port: HL7v2 MLLP listener port; 0 disables it. Defaults to 2575.
        fhir_server_url: the EHR's FHIR base URL. Unset (default) keeps results local.
        secret_key: signs review-page sessions and CSRF tokens.
        log_level: root log level. Defaults to ``INFO``.
        log_format: ``text`` or ``json``. Defaults to ``text``.
    """

    model_config = SettingsConfigDict(
        env_prefix="CDSFUSION_",
        env_file=None,
        extra="ignore",
        frozen=True,
    )

    mode: Mode = Mode.EMBEDDED
    database_url: str = "sqlite:///var/cdsfusion.db"
    broker_url: str | None = None
    data_dir: Path = Path("var")

    http_host: str | None = None
    http_port: int = Field(default=8080, ge=0, le=65535)
    http_processes: int = Field(default=1, ge=1, le=64)
    dicom_port: int = Field(default=11112, ge=0, le=65535)
    dicom_ae_title: str = Field(default="CDSFUSION", min_length=1, max_length=16)
    mllp_port: int = Field(default=2575, ge=0, le=65535)

    fhir_server_url: str | None = None
    fhir_bearer_token: SecretStr | None = None

    secret_key: SecretStr = SecretStr(DEFAULT_SECRET_KEY)

    # --- DICOM connector (connectors/dicom) ---
    # Documented in connectors/dicom/__init__.py; the site time zone is ``site_timezone``.
    dicom_duplicate_policy: DicomDuplicatePolicy = DicomDuplicatePolicy.KEEP_NEWEST
    dicom_allowed_ae_titles: Annotated[tuple[str, ...], NoDecode] = ()
    dicom_allowed_networks: Annotated[tuple[str, ...], NoDecode] = ()
    dicom_tls_cert_file: Path | None = None
    dicom_tls_key_file: Path | None = None
    dicom_tls_ca_file: Path | None = None
    dicom_max_associations: int = Field(default=16, ge=1, le=1024)
    dicom_max_pdu_size: int = Field(default=262_144, ge=4096, le=16_777_216)
    dicom_receiver_processes: int = Field(default=1, ge=1, le=64)
    dicom_quiet_period_s: float = Field(default=30.0, gt=0)
    dicom_study_hard_cap_s: float = Field(default=3600.0, gt=0)
    dicom_routing_rules_file: Path | None = None
    dicom_commitment_peers: Annotated[tuple[str, ...], NoDecode] = ()

    @field_validator(
        "dicom_allowed_ae_titles",
        "dicom_allowed_networks",
        "dicom_commitment_peers",
        mode="before",
    )
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        """``A,B , C`` from the environment becomes ``("A", "B", "C")``."""
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    # --- EHR feeds: FHIR subscriptions and HL7v2 (connectors/fhir, connectors/hl7) ---
    # Documented in connectors/fhir/__init__.py and connectors/hl7/__init__.py.
    site_timezone: str = "UTC"
    issuer_map: dict[str, str] = Field(default_factory=dict)
    mllp_max_message_bytes: int = Field(default=1_048_576, ge=1024)
    mllp_idle_timeout_s: float = Field(default=600.0, gt=0)
    mllp_workers: int = Field(default=4, ge=1, le=64)
    fhir_notify_max_bytes: int = Field(default=8_388_608, ge=1024)
    fhir_notify_base_url: str | None = None
    fhir_webhook_secret: SecretStr | None = None
    fhir_client_id: str | None = None
    fhir_private_key_file: Path | None = None
    fhir_private_key_id: str | None = None
    fhir_jwt_algorithm: str = Field(default="RS384", pattern="^(RS384|ES384)$")
    fhir_token_url: str | None = None
    fhir_scope: str = "system/*.read system/Subscription.write"
    fhir_ca_bundle: Path | None = None
    fhir_timeout_s: float = Field(default=30.0, gt=0)
    fhir_missed_heartbeats: int = Field(default=2, ge=1)

    @field_validator("site_timezone")
    @classmethod
    def _site_timezone_is_known(cls, value: str) -> str:
        """An IANA zone name (``Europe/Paris``): HL7 TS and FHIR dateTime without offset."""
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown IANA time zone {value!r}") from exc
        return value

    # --- pipeline, worker and outputs ---
    tasks_dir: Path | None = None
    model_dir: Path | None = None
    model_sha256: str | None = None
    worker_device: str = "auto"
    worker_batch_size: int = Field(default=32, ge=1, le=4096)
    worker_max_wait_ms: float = Field(default=5.0, ge=0)
    worker_cuda_graphs: bool = False
    job_max_attempts: int = Field(default=5, ge=1)
    job_lease_s: float = Field(default=120.0, gt=0)
    job_retry_base_s: float = Field(default=2.0, gt=0)
    # --- CDS outputs (cds/fhir, cds/hooks) ---
    # Documented in cds/fhir/__init__.py and cds/hooks/__init__.py.
    public_base_url: str | None = None
    cds_moderate_risk_threshold: float = Field(default=0.2, gt=0, lt=1)
    cds_high_risk_threshold: float = Field(default=0.5, gt=0, lt=1)
    cds_hooks_issuers_file: Path | None = None
    cds_hooks_auth_disabled: bool = False
    cds_hooks_jwks_cache_s: float = Field(default=300.0, ge=0)
    cds_hooks_fhir_timeout_s: float = Field(default=5.0, gt=0)
    cds_hooks_cors_origins: Annotated[tuple[str, ...], NoDecode] = ("*",)
    cds_smart_app_url: str | None = None
    cds_suggestions_file: Path | None = None
    fhir_write_timeout_s: float = Field(default=10.0, gt=0)

    @field_validator("cds_hooks_cors_origins", mode="before")
    @classmethod
    def _cors_origins(cls, value: object) -> object:
        """``https://a.example, https://b.example`` from the environment becomes a tuple."""
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("public_base_url", "cds_smart_app_url")
    @classmethod
    def _url_without_trailing_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else None

    # --- review pages (cds/review) ---
    # Documented in cds/review/__init__.py.
    review_session_idle_timeout_s: float = Field(default=900.0, gt=0)
    review_session_absolute_timeout_s: float = Field(default=43_200.0, gt=0)
    review_local_login: bool = True
    review_page_size: int = Field(default=50, ge=5, le=500)
    review_oidc_issuer: str | None = None
    review_oidc_client_id: str | None = None
    review_oidc_client_secret: SecretStr | None = None
    review_oidc_scope: str = "openid profile"
    review_oidc_role_claim: str = "roles"
    review_oidc_timeout_s: float = Field(default=10.0, gt=0)
    review_oidc_ca_bundle: Path | None = None

    db_pool_size: int = Field(default=10, ge=1)
    log_level: str = "INFO"
    log_format: str = Field(default="text", pattern="^(text|json)$")
    shutdown_timeout_s: float = Field(default=10.0, gt=0)

    @field_validator("dicom_ae_title")
    @classmethod
    def _ae_title_is_valid(cls, value: str) -> str:
        """PS3.5 §6.2: an AE title is 1-16 characters of the default repertoire, no backslash."""
        stripped = value.strip()
        if not stripped or "\\" in stripped or not stripped.isprintable():
            raise ValueError("AE title must be 1-16 printable characters without backslash")
        return stripped

    @field_validator("*", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object, info: ValidationInfo) -> object:
        """``CDSFUSION_X=`` (empty) means "not set" for every optional setting."""
        if value == "" and info.field_name is not None:
            annotation = cls.model_fields[info.field_name].annotation
            if type(None) in get_args(annotation):
                return None
        return value

    @property
    def embedded(self) -> bool:
        """True in the one-process development mode."""
        return self.mode is Mode.EMBEDDED

    @property
    def bind_host(self) -> str:
        """Interface for every listener: loopback when embedded unless told otherwise."""
        if self.http_host:
            return self.http_host
        return "127.0.0.1" if self.embedded else "0.0.0.0"  # noqa: S104 - production listens

    @property
    def model_path(self) -> Path:
        """The model checkpoint directory: ``model_dir``, else the demo model under data_dir."""
        return self.model_dir or self.data_dir / "models" / "demo"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def check_startable(self) -> None:
        """Refuse configurations that must never run in production.

        Raises:
            ConfigurationError: production mode with the shipped secret, or with SQLite.
        """
        if self.embedded:
            return
        if self.secret_key.get_secret_value() == DEFAULT_SECRET_KEY:
            raise ConfigurationError(
                "CDSFUSION_SECRET_KEY still has its development default; "
                "set a random secret before starting in production mode"
            )
        if len(self.secret_key.get_secret_value()) < 32:
            raise ConfigurationError("CDSFUSION_SECRET_KEY must be at least 32 characters")
