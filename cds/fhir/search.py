"""FHIR search parameters used by ``GET /fhir/RiskAssessment`` (R4 §3.1.1.4).

``date`` takes the R4 prefixes ``eq`` (default), ``ne``, ``lt``, ``le``, ``gt``, ``ge``,
``sa``, ``eb`` and a value at the precision of a year, month, day or instant; a value of
lower precision is the range it covers (R4 §3.1.1.4.2.1). A time without a zone is UTC.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, not_

from cds.core.errors import MalformedInputError

_PREFIXES = ("eq", "ne", "lt", "le", "gt", "ge", "sa", "eb")
_YEAR = re.compile(r"^\d{4}$")
_MONTH = re.compile(r"^\d{4}-\d{2}$")
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class DateParam:
    """One ``date`` parameter: a prefix and the half-open range ``[start, end)`` of its value."""

    prefix: str
    start: dt.datetime
    end: dt.datetime

    def condition(self, column: Any) -> ColumnElement[bool]:
        """The SQL condition on ``column`` (a timezone-aware timestamp column)."""
        inside = and_(column >= self.start, column < self.end)
        conditions: dict[str, ColumnElement[bool]] = {
            "eq": inside,
            "ne": not_(inside),
            "lt": column < self.start,
            "eb": column < self.start,
            "le": column < self.end,
            "gt": column >= self.end,
            "sa": column >= self.end,
            "ge": column >= self.start,
        }
        return conditions[self.prefix]


def _range(value: str) -> tuple[dt.datetime, dt.datetime]:
    if _YEAR.match(value):
        start = dt.datetime(int(value), 1, 1, tzinfo=dt.UTC)
        return start, start.replace(year=start.year + 1)
    if _MONTH.match(value):
        year, month = (int(p) for p in value.split("-"))
        start = dt.datetime(year, month, 1, tzinfo=dt.UTC)
        end = (
            start.replace(year=year + 1, month=1) if month == 12 else start.replace(month=month + 1)
        )
        return start, end
    if _DAY.match(value):
        start = dt.datetime.fromisoformat(value).replace(tzinfo=dt.UTC)
        return start, start + dt.timedelta(days=1)
    moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment, moment + dt.timedelta(seconds=1)


def parse_date(raw: str) -> DateParam:
    """Parse one ``date`` value such as ``ge2026-01-01`` or ``2026-03``.

    Raises:
        MalformedInputError: not a FHIR date search value.
    """
    text = raw.strip()
    prefix = text[:2] if text[:2] in _PREFIXES else "eq"
    value = text[2:] if text[:2] in _PREFIXES else text
    try:
        start, end = _range(value)
    except ValueError:
        raise MalformedInputError(
            "date: expected [prefix]YYYY[-MM[-DD[Thh:mm:ss[zone]]]]"
        ) from None
    return DateParam(prefix, start, end)
