"""``INSERT .. ON CONFLICT DO NOTHING`` on both engines: dedup by unique key, one statement."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session


def insert_ignoring_conflicts(
    session: Session, target: type[Any] | Table, index: list[str] | None = None
) -> postgresql.Insert | sqlite.Insert:
    """An insert whose rows that hit a unique constraint are skipped, not errors.

    Concurrent writers race on unique keys; the loser's row is simply not inserted, with no
    savepoint. Pass rows as parameters (a list of dicts) rather than ``values()`` so the
    statement is compiled once and many rows go as one multi-row ``INSERT``; add
    ``.returning(..)`` to learn which rows were new.

    Args:
        session: gives the dialect (PostgreSQL or SQLite).
        target: a mapped class or a table.
        index: the conflict target's columns; ``None`` means any unique constraint.
    """
    return insert_ignoring_conflicts_for(session.get_bind().dialect.name, target, index)


def insert_ignoring_conflicts_for(
    dialect: str, target: type[Any] | Table, index: list[str] | None = None
) -> postgresql.Insert | sqlite.Insert:
    """:func:`insert_ignoring_conflicts` for a dialect named ``postgresql`` or ``sqlite``,
    for statements built once per dialect rather than per session."""
    module: Any = postgresql if dialect == "postgresql" else sqlite
    statement = module.insert(target)
    if index is None:
        return statement.on_conflict_do_nothing()  # type: ignore[no-any-return]
    return statement.on_conflict_do_nothing(index_elements=index)  # type: ignore[no-any-return]
