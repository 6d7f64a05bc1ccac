"""The engine's exception tree, in one place.

Each boundary translates these into its own protocol's answer and never lets them leak:
the DICOM SCP returns a status (0xA7xx out of resources, 0xCxxx cannot understand), the
MLLP listener an AE or AR ACK, HTTP a FHIR OperationOutcome with a 4xx/5xx.

::

    CdsFusionError
    ├── ConfigurationError        settings that cannot run (exit at start-up)
    ├── NotAvailableError         a command or feature that this build does not offer yet
    ├── InputError                the sender's fault: answer 4xx / AR / 0xCxxx
    │   ├── MalformedInputError   cannot be parsed or decoded
    │   ├── UnsupportedInputError well-formed but of a kind the engine does not take
    │   └── ConflictError         contradicts what is already stored (e.g. same id, other bytes)
    └── StorageError              our fault or the environment's: answer 5xx / AE / 0xA7xx
        └── DatabaseUnavailableError

Messages must never carry patient data: they are logged and returned to callers.
"""

from __future__ import annotations


class CdsFusionError(Exception):
    """Base of every error the engine raises on purpose."""


class ConfigurationError(CdsFusionError):
    """The settings cannot run; raised at start-up."""


class NotAvailableError(CdsFusionError):
    """A command or feature that exists in the interface but is not built yet."""


class InputError(CdsFusionError):
    """The sender's input cannot be accepted."""


class MalformedInputError(InputError):
    """The input cannot be parsed or decoded."""


class UnsupportedInputError(InputError):
    """The input is well formed but of a kind the engine does not accept."""


class ConflictError(InputError):
    """The input contradicts an item already stored under the same identity."""


class StorageError(CdsFusionError):
    """The engine could not store durably; the sender should retry later."""


class DatabaseUnavailableError(StorageError):
    """The database cannot be reached or refused the write."""
