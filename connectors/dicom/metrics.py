"""Prometheus metrics of the DICOM connector, registered on the process's registry."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram

if TYPE_CHECKING:
    from connectors.dicom.receive import StoreResult


class DicomMetrics:
    """Counters and the C-STORE latency histogram.

    Args:
        registry: ``EngineContext.metrics`` (never the global registry).
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.instances = Counter(
            "cdsfusion_dicom_instances_received",
            "C-STORE instances acknowledged, by outcome (stored, duplicate, replaced)",
            ["outcome"],
            registry=registry,
        )
        self.failures = Counter(
            "cdsfusion_dicom_store_failures",
            "C-STORE requests answered with a failure status, by status (hex)",
            ["status"],
            registry=registry,
        )
        self.latency = Histogram(
            "cdsfusion_dicom_c_store_seconds",
            "Time from a received data set to its status (read, fsync, index, commit)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self.completions = Counter(
            "cdsfusion_dicom_study_completions",
            "Studies completed by stable-study detection, by whether they are an anchor",
            ["anchor"],
            registry=registry,
        )
        self.associations = Counter(
            "cdsfusion_dicom_associations",
            "Association requests, by result (accepted, rejected, refused_address)",
            ["result"],
            registry=registry,
        )
        self.commitments = Counter(
            "cdsfusion_dicom_storage_commitments",
            "Storage commitment reports, by result (sent, failed)",
            ["result"],
            registry=registry,
        )

    def observe_store(self, result: StoreResult, seconds: float) -> None:
        self.latency.observe(seconds)
        if result.outcome is not None:
            self.instances.labels(outcome=result.outcome.value).inc()
        else:
            self.failures.labels(status=f"0x{result.status:04X}").inc()
