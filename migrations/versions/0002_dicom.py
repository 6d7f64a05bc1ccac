"""DICOM connector: one row per receiving period (version) of a study.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import cds.core.db.types

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dicom_study_versions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("study_id", sa.Uuid(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("started_at", cds.core.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("completed_at", cds.core.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("routing_rule", sa.String(length=128), nullable=True),
        sa.Column("event_id", sa.Uuid(), nullable=True),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["timeline_events.id"],
            name=op.f("fk_dicom_study_versions_event_id_timeline_events"),
        ),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["imaging_studies.id"],
            name=op.f("fk_dicom_study_versions_study_id_imaging_studies"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dicom_study_versions")),
        sa.UniqueConstraint(
            "study_id", "version", name=op.f("uq_dicom_study_versions_study_id_version")
        ),
    )


def downgrade() -> None:
    op.drop_table("dicom_study_versions")
