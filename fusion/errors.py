"""The one exception tree of the fusion package.

Hierarchy::

    FusionError                      base of everything raised on purpose by ``fusion``
    ├── ConfigError                  an unknown preset, fusion kind or invalid setting
    ├── CheckpointError              a checkpoint cannot be read or is incompatible
    │   └── CheckpointIntegrityError the sha256 of a checkpoint does not match (tampering)
    └── InputError                   a BundleInput that cannot be featurised

Callers at the boundary (worker, CLI) translate these into their own responses.
"""

from __future__ import annotations


class FusionError(Exception):
    """Base class of every error the fusion package raises on purpose."""


class ConfigError(FusionError):
    """An invalid configuration: unknown preset, fusion kind or modality."""


class CheckpointError(FusionError):
    """A checkpoint is missing, unreadable or of an unsupported format version."""


class CheckpointIntegrityError(CheckpointError):
    """The sha256 of a checkpoint file differs from the one recorded or expected."""


class InputError(FusionError):
    """A BundleInput that cannot be turned into model tensors."""
