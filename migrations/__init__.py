"""Alembic migrations of the one cdsfusion metadata (see :mod:`cds.core.db.models`)."""
