"""Review pages: users, sessions, reviewer verdicts; list and feedback indexes.

Revision ID: 0005
Revises: 0001
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import cds.core.db.types

revision: str = "0005"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "review_users",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("username", sa.String(length=128), nullable=False),
        sa.Column(
            "role",
            sa.Enum(
                "clinician",
                "auditor",
                "admin",
                name="review_role",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("password_hash", sa.String(length=255), nullable=True),
        sa.Column("oidc_issuer", sa.String(length=255), nullable=True),
        sa.Column("oidc_subject", sa.String(length=255), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", cds.core.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_login_at", cds.core.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_review_users")),
        sa.UniqueConstraint(
            "oidc_issuer", "oidc_subject", name=op.f("uq_review_users_oidc_issuer_oidc_subject")
        ),
        sa.UniqueConstraint("username", name=op.f("uq_review_users_username")),
    )
    op.create_table(
        "review_sessions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("token_sha256", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("auth_method", sa.String(length=16), nullable=False),
        sa.Column("created_at", cds.core.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", cds.core.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", cds.core.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ended_at", cds.core.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("end_reason", sa.String(length=16), nullable=True),
        sa.Column(
            "filters",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["review_users.id"], name=op.f("fk_review_sessions_user_id_review_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_review_sessions")),
        sa.UniqueConstraint("token_sha256", name=op.f("uq_review_sessions_token_sha256")),
    )
    op.create_index(
        op.f("ix_review_sessions_user_id"), "review_sessions", ["user_id"], unique=False
    )
    op.create_table(
        "review_verdicts",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("prediction_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column(
            "verdict",
            sa.Enum(
                "agree",
                "disagree",
                name="review_verdict",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column(
            "audit_entry_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("created_at", cds.core.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["audit_entry_id"],
            ["audit_log.id"],
            name=op.f("fk_review_verdicts_audit_entry_id_audit_log"),
        ),
        sa.ForeignKeyConstraint(
            ["prediction_id"],
            ["predictions.id"],
            name=op.f("fk_review_verdicts_prediction_id_predictions"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["review_users.id"], name=op.f("fk_review_verdicts_user_id_review_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_review_verdicts")),
    )
    op.create_index(
        "ix_review_verdicts_prediction_verdict",
        "review_verdicts",
        ["prediction_id", "verdict"],
        unique=False,
    )
    op.create_index(
        "ix_audit_log_entity_id_action", "audit_log", ["entity_id", "action"], unique=False
    )
    op.create_index(
        "ix_predictions_created_at_id", "predictions", ["created_at", "id"], unique=False
    )


def downgrade() -> None:
    op.drop_index("ix_predictions_created_at_id", table_name="predictions")
    op.drop_index("ix_audit_log_entity_id_action", table_name="audit_log")
    op.drop_index("ix_review_verdicts_prediction_verdict", table_name="review_verdicts")
    op.drop_table("review_verdicts")
    op.drop_index(op.f("ix_review_sessions_user_id"), table_name="review_sessions")
    op.drop_table("review_sessions")
    op.drop_table("review_users")
