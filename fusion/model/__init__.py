"""The fusion network: per-modality token encoders and the fusion heads."""

from fusion.model.network import FusionModel

__all__ = ["FusionModel"]
