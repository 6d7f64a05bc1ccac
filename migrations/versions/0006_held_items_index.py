"""Join the capability branches into one head; index the items held for their patient.

Revision ID: 0006
Revises: 0002, 0003, 0004, 0005
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = ("0002", "0003", "0004", "0005")
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_source_items_held",
        "source_items",
        ["patient_ref"],
        unique=False,
        postgresql_where=sa.text("patient_id IS NULL"),
        sqlite_where=sa.text("patient_id IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_source_items_held", table_name="source_items")
