"""CDS outputs: the CDS Hooks JWT replay cache (``jti`` seen once per issuer).

Revision ID: 0004
Revises: 0001
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import cds.core.db.types

revision: str = "0004"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "cds_hook_token_uses",
        sa.Column("issuer", sa.String(length=255), nullable=False),
        sa.Column("jti", sa.String(length=255), nullable=False),
        sa.Column("expires_at", cds.core.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("seen_at", cds.core.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("issuer", "jti", name=op.f("pk_cds_hook_token_uses")),
    )
    op.create_index(
        "ix_cds_hook_token_uses_expires_at", "cds_hook_token_uses", ["expires_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_cds_hook_token_uses_expires_at", table_name="cds_hook_token_uses")
    op.drop_table("cds_hook_token_uses")
