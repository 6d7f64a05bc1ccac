"""Qualitative risk from configurable thresholds (shared by RiskAssessments and cards)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cds.core.errors import ConfigurationError
from cds.core.settings import Settings


class RiskLevel(enum.StrEnum):
    """A code of the R4 ``risk-probability`` value set."""

    LOW = "low"
    MODERATE = "moderate"
    HIGH = "high"


@dataclass(frozen=True)
class RiskLevels:
    """Probability thresholds: ``moderate <= p < high`` is moderate, ``p >= high`` is high.

    Attributes:
        moderate: lowest probability called moderate. Defaults to 0.2.
        high: lowest probability called high. Defaults to 0.5.
    """

    moderate: float = 0.2
    high: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.moderate < self.high < 1:
            raise ConfigurationError(
                "risk thresholds must satisfy 0 < moderate < high < 1 "
                "(CDSFUSION_CDS_MODERATE_RISK_THRESHOLD, CDSFUSION_CDS_HIGH_RISK_THRESHOLD)"
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> RiskLevels:
        return cls(settings.cds_moderate_risk_threshold, settings.cds_high_risk_threshold)

    def level(self, probability: float) -> RiskLevel:
        if probability >= self.high:
            return RiskLevel.HIGH
        if probability >= self.moderate:
            return RiskLevel.MODERATE
        return RiskLevel.LOW
