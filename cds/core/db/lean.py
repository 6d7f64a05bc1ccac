"""Hot Core statements, compiled once, run straight through the DB-API cursor.

SQLAlchemy's execution of an already-cached Core statement still costs 60 to 150 µs of
Python per call (execution context, cache key, expanding-parameter rendering, parameter and
result processing, events, result objects). The DICOM group-commit writer runs about ten
statements per batch while every association waits on its commit, so that cost sets the
ingest rate (``bench/dicom_ingest.py``).

A :class:`LeanStatement` is a Core statement compiled by SQLAlchemy for the connection's
dialect, once: the SQL text is SQLAlchemy's, not a second hand-written dialect, and its
parameters and result columns go through the same dialect type processors that
SQLAlchemy's own execution applies (``TypeEngine.dialect_impl(dialect)``). Only the
per-call machinery is skipped. It runs on the connection's current transaction (the same
DB-API connection, savepoints included), and DB-API errors propagate as they are.

Limits, checked when compiling: no "expanding" or post-compile parameters (build a
statement per parameter count instead, see :func:`in_list`), and every parameter is
supplied by the caller (a multi-row insert must name every column that has a default:
SQLAlchemy would otherwise evaluate the default per execution).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import BindParameter, ColumnElement, Connection, bindparam, tuple_
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.expression import ClauseElement

Processor = Callable[[Any], Any]


@dataclass(frozen=True, slots=True)
class LeanStatement:
    """A compiled statement and what its execution needs.

    Attributes:
        sql: the dialect's SQL text.
        names: parameter names, in the statement's order for positional paramstyles.
        positional: the driver takes a sequence (``qmark``), else a mapping (``pyformat``).
        fixed: values the statement carries itself (literals compared against).
        binds: each parameter once, with the processor (or None) that converts its value
            for the driver.
        results: one processor (or None) per result column; empty for no rows.
    """

    sql: str
    names: tuple[str, ...]
    positional: bool
    fixed: Mapping[str, Any]
    binds: tuple[tuple[str, Processor | None], ...]
    results: tuple[Processor | None, ...]

    @classmethod
    def compile(cls, statement: ClauseElement, dialect: Dialect) -> LeanStatement:
        """Compile ``statement`` for ``dialect``.

        Raises:
            ValueError: the statement has expanding or post-compile parameters.
        """
        compiled: Any = statement.compile(dialect=dialect)
        params: dict[BindParameter[Any], str] = compiled.bind_names
        if any(p.expanding or p.literal_execute for p in params):
            raise ValueError("lean statements take no expanding or post-compile parameters")
        positional = bool(compiled.positional)
        names = tuple(compiled.positiontup) if positional else tuple(params.values())
        prefetched = [*compiled.insert_prefetch, *compiled.update_prefetch]
        if prefetched:
            names_ = ", ".join(sorted({str(c.key) for c in prefetched}))
            raise ValueError(f"column defaults computed per execution ({names_}): name them")
        fixed: dict[str, Any] = {}
        processors: dict[str, Processor | None] = {}
        for param, name in params.items():
            if not param.required:
                if param.callable is not None:
                    raise ValueError(f"parameter {name} has a value computed per execution")
                fixed[name] = param.value
            processors[name] = param.type.dialect_impl(dialect).bind_processor(dialect)
        binds = tuple((name, processors[name]) for name in dict.fromkeys(names))
        returns_rows = bool(getattr(statement, "is_select", False) or compiled.returning)
        columns = getattr(statement, "exported_columns", ()) if returns_rows else ()
        results = tuple(
            column.type.dialect_impl(dialect).result_processor(dialect, None) for column in columns
        )
        return cls(compiled.string, names, positional, fixed, binds, results)

    def execute(self, conn: Connection, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Run once with ``params`` (by name); the result rows, processed."""
        cursor = conn.connection.cursor()
        try:
            cursor.execute(self.sql, self._driver_params(params))
            if not self.results:
                return []
            return [self._row(row) for row in cursor.fetchall()]
        finally:
            cursor.close()

    def execute_many(self, conn: Connection, rows: Iterable[Mapping[str, Any]]) -> None:
        """Run once per parameter set (``executemany``); for statements returning no rows."""
        if self.results:
            raise ValueError("execute_many is for statements that return no rows")
        cursor = conn.connection.cursor()
        try:
            params: Any = [self._driver_params(row) for row in rows]
            cursor.executemany(self.sql, params)
        finally:
            cursor.close()

    def _driver_params(self, params: Mapping[str, Any]) -> Sequence[Any] | dict[str, Any]:
        values: dict[str, Any] = {}
        for name, processor in self.binds:
            value = params[name] if name in params else self.fixed[name]
            values[name] = value if processor is None else processor(value)
        if self.positional:
            return tuple(values[name] for name in self.names)
        return values

    def _row(self, row: Sequence[Any]) -> tuple[Any, ...]:
        return tuple(
            value if processor is None else processor(value)
            for processor, value in zip(self.results, row, strict=True)
        )


def in_list(column: ColumnElement[Any], prefix: str, count: int) -> ColumnElement[bool]:
    """``column IN (:prefix0, ..., :prefix<count-1>)``, typed as the column."""
    return column.in_([bindparam(f"{prefix}{i}", type_=column.type) for i in range(count)])


def numbered(prefix: str, values: Sequence[Any]) -> dict[str, Any]:
    """The parameters of :func:`in_list` for ``values``."""
    return {f"{prefix}{i}": value for i, value in enumerate(values)}


def in_pairs(
    first: ColumnElement[Any], second: ColumnElement[Any], count: int
) -> ColumnElement[bool]:
    """``(first, second) IN ((:a0, :b0), ..)`` for ``count`` pairs, typed as the columns."""
    return tuple_(first, second).in_(
        [
            tuple_(bindparam(f"a{i}", type_=first.type), bindparam(f"b{i}", type_=second.type))
            for i in range(count)
        ]
    )


def numbered_pairs(pairs: Sequence[tuple[Any, Any]]) -> dict[str, Any]:
    """The parameters of :func:`in_pairs` for ``pairs``."""
    params: dict[str, Any] = {}
    for i, (a, b) in enumerate(pairs):
        params[f"a{i}"] = a
        params[f"b{i}"] = b
    return params
