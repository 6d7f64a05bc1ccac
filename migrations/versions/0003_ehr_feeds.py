"""EHR feeds: the FHIR subscriptions whose notifications are accepted, with event numbers.

Revision ID: 0003
Revises: 0001
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import cds.core.db.types

revision: str = "0003"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "fhir_subscriptions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("endpoint_key", sa.String(length=64), nullable=False),
        sa.Column("server_base", sa.String(length=255), nullable=False),
        sa.Column("remote_id", sa.String(length=128), nullable=True),
        sa.Column(
            "channel",
            sa.Enum(
                "rest-hook",
                "backport",
                name="subscription_channel",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column(
            "payload",
            sa.Enum(
                "empty",
                "id-only",
                "full-resource",
                name="payload_content",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("topic", sa.String(length=255), nullable=True),
        sa.Column(
            "queries",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("last_event_number", sa.BigInteger(), nullable=False),
        sa.Column(
            "last_notification_at", cds.core.db.types.UTCDateTime(timezone=True), nullable=True
        ),
        sa.Column("heartbeat_period_s", sa.Integer(), nullable=True),
        sa.Column("recover_since", cds.core.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", cds.core.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fhir_subscriptions")),
        sa.UniqueConstraint("endpoint_key", name=op.f("uq_fhir_subscriptions_endpoint_key")),
    )


def downgrade() -> None:
    op.drop_table("fhir_subscriptions")
