"""GPU telemetry for worker metrics: utilisation and memory, where a GPU is present.

NVML (the ``nvidia-ml-py`` package, the ``gpu`` extra) gives utilisation; torch gives the
memory this process holds. Without CUDA every reading is absent and nothing is exported.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)


class GpuCollector(Collector):
    """Exports per-device utilisation (%) and memory (bytes) at scrape time."""

    def __init__(self) -> None:
        import torch

        self._torch = torch
        self._nvml: Any = None
        if torch.cuda.is_available():
            try:
                import pynvml

                pynvml.nvmlInit()
                self._nvml = pynvml
            except Exception as exc:  # noqa: BLE001 - NVML is optional
                logger.info("NVML unavailable (%s): no GPU utilisation metric", type(exc).__name__)

    def collect(self) -> Any:
        torch = self._torch
        if not torch.cuda.is_available():
            return
        allocated = GaugeMetricFamily(
            "cdsfusion_gpu_memory_allocated_bytes", "GPU memory held by tensors", labels=["gpu"]
        )
        reserved = GaugeMetricFamily(
            "cdsfusion_gpu_memory_reserved_bytes",
            "GPU memory reserved by the allocator",
            labels=["gpu"],
        )
        utilisation = GaugeMetricFamily(
            "cdsfusion_gpu_utilization_percent",
            "GPU busy time over the last sample",
            labels=["gpu"],
        )
        for index in range(torch.cuda.device_count()):
            label = [str(index)]
            allocated.add_metric(label, float(torch.cuda.memory_allocated(index)))
            reserved.add_metric(label, float(torch.cuda.memory_reserved(index)))
            if self._nvml is not None:
                handle = self._nvml.nvmlDeviceGetHandleByIndex(index)
                rates = self._nvml.nvmlDeviceGetUtilizationRates(handle)
                utilisation.add_metric(label, float(rates.gpu))
        yield allocated
        yield reserved
        if self._nvml is not None:
            yield utilisation


def register_gpu_metrics(registry: CollectorRegistry) -> None:
    """Add GPU gauges to ``registry`` (a no-op at scrape time without CUDA)."""
    registry.register(GpuCollector())
