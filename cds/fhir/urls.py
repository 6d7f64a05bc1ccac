"""Absolute URLs of this engine (``CDSFUSION_PUBLIC_BASE_URL``)."""

from __future__ import annotations

from cds.core.settings import Settings
from cds.modelcard import model_card_path

#: Where the FHIR views and RiskAssessments are served on the HTTP port.
FHIR_PREFIX = "/fhir"


def public_base(settings: Settings) -> str:
    """The engine's absolute base URL; defaults to ``http://127.0.0.1:{http_port}``."""
    return settings.public_base_url or f"http://127.0.0.1:{settings.http_port}"


def fhir_base(settings: Settings) -> str:
    """The absolute base of the engine's FHIR views (``{public base}/fhir``)."""
    return public_base(settings) + FHIR_PREFIX


def review_url(settings: Settings, prediction_id: object) -> str:
    """The clinician review page of one prediction (served by the audit pages)."""
    return f"{public_base(settings)}/audit/predictions/{prediction_id}"


def model_card_url(settings: Settings, name: str, version: str) -> str:
    """The model card page that cards and Devices link to."""
    return public_base(settings) + model_card_path(name, version)
