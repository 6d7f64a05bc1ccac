"""The patient-timeline database: one SQLAlchemy metadata, SQLite or PostgreSQL."""
