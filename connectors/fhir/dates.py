"""FHIR R4 date, dateTime and instant values (R4 §2.24.0.1 primitive types) to aware datetimes.

A dateTime with a time but no zone is local time at the site (``CDSFUSION_SITE_TIMEZONE``);
a partial date (``2024``, ``2024-06``, ``2024-06-01``) is the start of that period, at the site.
"""

from __future__ import annotations

import datetime as dt
import re
from zoneinfo import ZoneInfo

_PARTIAL = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?$")


def parse_datetime(value: object, tz: ZoneInfo) -> dt.datetime | None:
    """An aware datetime for a FHIR date/dateTime/instant string, or ``None`` when absent.

    Raises:
        ValueError: a string that is not a FHIR date or dateTime.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError("dateTime must be a string")
    text = value.strip()
    if not text:
        return None
    partial = _PARTIAL.match(text)
    if partial:
        year, month, day = partial.groups()
        return dt.datetime(int(year), int(month or 1), int(day or 1), tzinfo=tz)
    if "T" not in text:
        raise ValueError("not a FHIR dateTime")
    parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=tz)
    return parsed
