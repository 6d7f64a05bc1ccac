"""FHIR date/time formatting (R4 §2.24.0.1 dateTime and instant)."""

from __future__ import annotations

import datetime as dt


def instant(value: dt.datetime) -> str:
    """An aware datetime as a FHIR ``instant``/``dateTime`` in UTC (``...Z``).

    Whole seconds are written without a fraction, anything finer to the millisecond.
    """
    if value.tzinfo is None:
        raise ValueError("naive datetime refused")
    utc = value.astimezone(dt.UTC)
    text = utc.isoformat(timespec="milliseconds" if utc.microsecond else "seconds")
    return text.replace("+00:00", "Z")
