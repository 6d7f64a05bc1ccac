"""HL7v2 date/time values (TS/DTM, v2.5.1 §2A.3.72 and §2A.3.22) to aware datetimes.

``YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]``. A value without offset is local time at
the site (``CDSFUSION_SITE_TIMEZONE``); a missing precision is filled with the start of the
period (``202406`` is 1 June 2024 00:00).
"""

from __future__ import annotations

import datetime as dt
import re
from zoneinfo import ZoneInfo

_TS = re.compile(
    r"^(?P<y>\d{4})(?P<mo>\d{2})?(?P<d>\d{2})?(?P<h>\d{2})?(?P<mi>\d{2})?(?P<s>\d{2})?"
    r"(?:\.(?P<frac>\d{1,4}))?(?P<tz>[+-]\d{4})?$"
)


def parse_ts(value: str, tz: ZoneInfo) -> dt.datetime | None:
    """An aware datetime, or ``None`` for an empty value.

    Raises:
        ValueError: the value is not a valid TS/DTM.
    """
    text = value.strip()
    if not text:
        return None
    match = _TS.match(text)
    if match is None:
        raise ValueError("not an HL7 TS/DTM value")
    parts = match.groupdict()
    frac = parts["frac"] or ""
    naive = dt.datetime(
        int(parts["y"]),
        int(parts["mo"] or 1),
        int(parts["d"] or 1),
        int(parts["h"] or 0),
        int(parts["mi"] or 0),
        int(parts["s"] or 0),
        int(frac.ljust(6, "0")) if frac else 0,
    )
    offset = parts["tz"]
    if offset is None:
        return naive.replace(tzinfo=tz)
    sign = 1 if offset[0] == "+" else -1
    hours, minutes = int(offset[1:3]), int(offset[3:5])
    if hours > 14 or minutes > 59:
        raise ValueError("offset out of range")
    return naive.replace(tzinfo=dt.timezone(sign * dt.timedelta(hours=hours, minutes=minutes)))


def format_ts(when: dt.datetime) -> str:
    """``YYYYMMDDHHMMSS+ZZZZ`` for MSH-7 of an ACK."""
    return when.strftime("%Y%m%d%H%M%S%z")
