"""Prometheus metrics of the FHIR receiver, registered on the engine's registry."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter


@dataclass(frozen=True, slots=True)
class FhirMetrics:
    notifications: Counter
    resources: Counter
    recoveries: Counter

    @classmethod
    def register(cls, registry: CollectorRegistry) -> FhirMetrics:
        return cls(
            notifications=Counter(
                "cdsfusion_fhir_notifications_total",
                "FHIR subscription notifications answered, by outcome",
                ["outcome"],
                registry=registry,
            ),
            resources=Counter(
                "cdsfusion_fhir_resources_total",
                "FHIR resources from notifications, by result",
                ["result"],
                registry=registry,
            ),
            recoveries=Counter(
                "cdsfusion_fhir_recoveries_total",
                "Recoveries of missed notifications, by method and result",
                ["method", "result"],
                registry=registry,
            ),
        )
