"""The patient timeline: patients, source items, events, imaging, pipeline, outbox, audit.

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import cds.core.db.types

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# The audit log is append-only: the database itself refuses UPDATE and DELETE on it.
_PG_AUDIT_FUNCTION = """
CREATE FUNCTION audit_log_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END;
$$ LANGUAGE plpgsql
"""


def _create_audit_triggers() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_PG_AUDIT_FUNCTION)
        op.execute(
            "CREATE TRIGGER audit_log_no_update_delete BEFORE UPDATE OR DELETE ON audit_log "
            "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()"
        )
        op.execute(
            "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()"
        )
    else:
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_log_no_{verb.lower()} BEFORE {verb} ON audit_log "
                "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END"
            )


def _drop_audit_triggers() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log")
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_update_delete ON audit_log")
        op.execute("DROP FUNCTION IF EXISTS audit_log_append_only()")
    else:
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_update")
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_delete")


def upgrade() -> None:
    op.create_table(
        "audit_log",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("occurred_at", cds.core.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=255), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("entity_type", sa.String(length=64), nullable=False),
        sa.Column("entity_id", sa.String(length=128), nullable=False),
        sa.Column(
            "details",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("entry_hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
        sa.UniqueConstraint("entry_hash", name=op.f("uq_audit_log_entry_hash")),
    )
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_log_occurred_at"), ["occurred_at"], unique=False)

    op.create_table(
        "outbox",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("topic", sa.String(length=64), nullable=False),
        sa.Column("dedup_key", sa.String(length=255), nullable=False),
        sa.Column("aggregate_id", sa.Uuid(), nullable=True),
        sa.Column(
            "payload",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "state",
            sa.Enum(
                "pending",
                "delivered",
                "dead",
                name="outbox_state",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", cds.core.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", cds.core.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", cds.core.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
        sa.UniqueConstraint("dedup_key", name=op.f("uq_outbox_dedup_key")),
    )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index(
            "ix_outbox_state_next_attempt_at", ["state", "next_attempt_at"], unique=False
        )

    op.create_table(
        "patients",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("created_at", cds.core.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("merged_into_id", sa.Uuid(), nullable=True),
        sa.ForeignKeyConstraint(
            ["merged_into_id"], ["patients.id"], name=op.f("fk_patients_merged_into_id_patients")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_patients")),
    )
    with op.batch_alter_table("patients", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_patients_merged_into_id"), ["merged_into_id"], unique=False
        )

    op.create_table(
        "imaging_studies",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.Uuid(), nullable=True),
        sa.Column("accession_number", sa.String(length=64), nullable=True),
        sa.Column("study_datetime", cds.core.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("study_description", sa.String(length=255), nullable=True),
        sa.Column(
            "state",
            sa.Enum(
                "receiving",
                "complete",
                name="study_state",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column(
            "first_received_at", cds.core.db.types.UTCDateTime(timezone=True), nullable=False
        ),
        sa.Column("last_received_at", cds.core.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("completes_at", cds.core.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("completed_at", cds.core.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["patient_id"], ["patients.id"], name=op.f("fk_imaging_studies_patient_id_patients")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_imaging_studies")),
        sa.UniqueConstraint(
            "study_instance_uid", name=op.f("uq_imaging_studies_study_instance_uid")
        ),
    )
    with op.batch_alter_table("imaging_studies", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_imaging_studies_patient_id"), ["patient_id"], unique=False
        )
        batch_op.create_index(
            "ix_imaging_studies_state_completes_at", ["state", "completes_at"], unique=False
        )

    op.create_table(
        "patient_identifiers",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("patient_id", sa.Uuid(), nullable=False),
        sa.Column("system", sa.String(length=255), nullable=False),
        sa.Column("value", sa.String(length=255), nullable=False),
        sa.Column("type_code", sa.String(length=32), nullable=True),
        sa.Column("created_at", cds.core.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["patient_id"], ["patients.id"], name=op.f("fk_patient_identifiers_patient_id_patients")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_patient_identifiers")),
        sa.UniqueConstraint("system", "value", name=op.f("uq_patient_identifiers_system_value")),
    )
    with op.batch_alter_table("patient_identifiers", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_patient_identifiers_patient_id"), ["patient_id"], unique=False
        )

    op.create_table(
        "source_items",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column(
            "protocol",
            sa.Enum(
                "dicom",
                "hl7v2",
                "fhir",
                "internal",
                name="protocol",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("namespace", sa.String(length=255), nullable=False),
        sa.Column("item_id", sa.String(length=255), nullable=False),
        sa.Column("item_version", sa.String(length=128), nullable=False),
        sa.Column("sender", sa.String(length=255), nullable=False),
        sa.Column("content_type", sa.String(length=128), nullable=False),
        sa.Column("content_sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("storage_key", sa.String(length=255), nullable=True),
        sa.Column("payload", sa.LargeBinary(), nullable=True),
        sa.Column("received_at", cds.core.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("patient_id", sa.Uuid(), nullable=True),
        sa.Column("patient_ref", sa.String(length=512), nullable=True),
        sa.ForeignKeyConstraint(
            ["patient_id"], ["patients.id"], name=op.f("fk_source_items_patient_id_patients")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_source_items")),
        sa.UniqueConstraint(
            "protocol",
            "namespace",
            "item_id",
            "item_version",
            name=op.f("uq_source_items_protocol_namespace_item_id_item_version"),
        ),
    )
    with op.batch_alter_table("source_items", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_source_items_patient_id"), ["patient_id"], unique=False
        )
        batch_op.create_index("ix_source_items_received_at", ["received_at"], unique=False)

    op.create_table(
        "imaging_series",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("study_id", sa.Uuid(), nullable=False),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("modality", sa.String(length=16), nullable=True),
        sa.Column("body_part_examined", sa.String(length=64), nullable=True),
        sa.Column("series_number", sa.Integer(), nullable=True),
        sa.Column("series_description", sa.String(length=255), nullable=True),
        sa.ForeignKeyConstraint(
            ["study_id"],
            ["imaging_studies.id"],
            name=op.f("fk_imaging_series_study_id_imaging_studies"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_imaging_series")),
        sa.UniqueConstraint(
            "series_instance_uid", name=op.f("uq_imaging_series_series_instance_uid")
        ),
    )
    with op.batch_alter_table("imaging_series", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_imaging_series_study_id"), ["study_id"], unique=False)

    op.create_table(
        "patient_merges",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("surviving_patient_id", sa.Uuid(), nullable=False),
        sa.Column("merged_patient_id", sa.Uuid(), nullable=False),
        sa.Column("source_item_id", sa.Uuid(), nullable=True),
        sa.Column("merged_at", cds.core.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["merged_patient_id"],
            ["patients.id"],
            name=op.f("fk_patient_merges_merged_patient_id_patients"),
        ),
        sa.ForeignKeyConstraint(
            ["source_item_id"],
            ["source_items.id"],
            name=op.f("fk_patient_merges_source_item_id_source_items"),
        ),
        sa.ForeignKeyConstraint(
            ["surviving_patient_id"],
            ["patients.id"],
            name=op.f("fk_patient_merges_surviving_patient_id_patients"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_patient_merges")),
    )
    with op.batch_alter_table("patient_merges", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_patient_merges_merged_patient_id"), ["merged_patient_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_patient_merges_surviving_patient_id"),
            ["surviving_patient_id"],
            unique=False,
        )

    op.create_table(
        "timeline_events",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("patient_id", sa.Uuid(), nullable=True),
        sa.Column("source_item_id", sa.Uuid(), nullable=False),
        sa.Column("event_key", sa.String(length=128), nullable=False),
        sa.Column("lineage_key", sa.String(length=512), nullable=False),
        sa.Column(
            "kind",
            sa.Enum(
                "observation",
                "note",
                "imaging-study",
                "encounter",
                "demographics",
                "diagnostic-report",
                "trigger",
                name="event_kind",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column(
            "status",
            sa.Enum(
                "current",
                "superseded",
                "retracted",
                name="event_status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("superseded_by_id", sa.Uuid(), nullable=True),
        sa.Column("effective_at", cds.core.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("effective_end", cds.core.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("category", sa.String(length=64), nullable=True),
        sa.Column("code_system", sa.String(length=255), nullable=True),
        sa.Column("code", sa.String(length=64), nullable=True),
        sa.Column("display", sa.String(length=255), nullable=True),
        sa.Column("value_num", sa.Float(), nullable=True),
        sa.Column("value_text", sa.Text(), nullable=True),
        sa.Column("unit", sa.String(length=64), nullable=True),
        sa.Column("imaging_study_id", sa.Uuid(), nullable=True),
        sa.Column(
            "details",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("created_at", cds.core.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["imaging_study_id"],
            ["imaging_studies.id"],
            name=op.f("fk_timeline_events_imaging_study_id_imaging_studies"),
        ),
        sa.ForeignKeyConstraint(
            ["patient_id"], ["patients.id"], name=op.f("fk_timeline_events_patient_id_patients")
        ),
        sa.ForeignKeyConstraint(
            ["source_item_id"],
            ["source_items.id"],
            name=op.f("fk_timeline_events_source_item_id_source_items"),
        ),
        sa.ForeignKeyConstraint(
            ["superseded_by_id"],
            ["timeline_events.id"],
            name=op.f("fk_timeline_events_superseded_by_id_timeline_events"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_timeline_events")),
        sa.UniqueConstraint(
            "source_item_id", "event_key", name=op.f("uq_timeline_events_source_item_id_event_key")
        ),
    )
    with op.batch_alter_table("timeline_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_timeline_events_imaging_study_id"), ["imaging_study_id"], unique=False
        )
        batch_op.create_index("ix_timeline_events_lineage", ["lineage_key", "status"], unique=False)
        batch_op.create_index(
            "ix_timeline_events_patient_kind_time",
            ["patient_id", "kind", "effective_at"],
            unique=False,
        )

    op.create_table(
        "bundles",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("task_version", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.Uuid(), nullable=False),
        sa.Column("anchor_event_id", sa.Uuid(), nullable=False),
        sa.Column("anchor_key", sa.String(length=512), nullable=False),
        sa.Column("anchor_at", cds.core.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("window_start", cds.core.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("window_end", cds.core.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "ready",
                "queued",
                "scored",
                "insufficient",
                "superseded",
                name="bundle_status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("supersedes_id", sa.Uuid(), nullable=True),
        sa.Column("late_until", cds.core.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column(
            "missing",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("created_at", cds.core.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["anchor_event_id"],
            ["timeline_events.id"],
            name=op.f("fk_bundles_anchor_event_id_timeline_events"),
        ),
        sa.ForeignKeyConstraint(
            ["patient_id"], ["patients.id"], name=op.f("fk_bundles_patient_id_patients")
        ),
        sa.ForeignKeyConstraint(
            ["supersedes_id"], ["bundles.id"], name=op.f("fk_bundles_supersedes_id_bundles")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bundles")),
        sa.UniqueConstraint(
            "task_id",
            "anchor_key",
            "version",
            name=op.f("uq_bundles_task_id_anchor_key_version"),
        ),
    )
    with op.batch_alter_table("bundles", schema=None) as batch_op:
        batch_op.create_index(
            "ix_bundles_patient_anchor_at", ["patient_id", "anchor_at"], unique=False
        )
        batch_op.create_index(
            "ix_bundles_patient_late_until", ["patient_id", "late_until"], unique=False
        )
        batch_op.create_index("ix_bundles_status", ["status"], unique=False)

    op.create_table(
        "imaging_instances",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("series_id", sa.Uuid(), nullable=False),
        sa.Column("source_item_id", sa.Uuid(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_class_uid", sa.String(length=64), nullable=False),
        sa.Column("transfer_syntax_uid", sa.String(length=64), nullable=False),
        sa.Column("instance_number", sa.Integer(), nullable=True),
        sa.Column("view_position", sa.String(length=16), nullable=True),
        sa.Column("storage_key", sa.String(length=255), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("received_at", cds.core.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["series_id"],
            ["imaging_series.id"],
            name=op.f("fk_imaging_instances_series_id_imaging_series"),
        ),
        sa.ForeignKeyConstraint(
            ["source_item_id"],
            ["source_items.id"],
            name=op.f("fk_imaging_instances_source_item_id_source_items"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_imaging_instances")),
        sa.UniqueConstraint("sop_instance_uid", name=op.f("uq_imaging_instances_sop_instance_uid")),
        sa.UniqueConstraint("source_item_id", name=op.f("uq_imaging_instances_source_item_id")),
    )
    with op.batch_alter_table("imaging_instances", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_imaging_instances_series_id"), ["series_id"], unique=False
        )

    op.create_table(
        "bundle_members",
        sa.Column("bundle_id", sa.Uuid(), nullable=False),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("modality", sa.String(length=32), nullable=False),
        sa.Column("relative_seconds", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["bundle_id"],
            ["bundles.id"],
            name=op.f("fk_bundle_members_bundle_id_bundles"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["timeline_events.id"],
            name=op.f("fk_bundle_members_event_id_timeline_events"),
        ),
        sa.PrimaryKeyConstraint(
            "bundle_id", "event_id", "modality", name=op.f("pk_bundle_members")
        ),
    )
    with op.batch_alter_table("bundle_members", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_bundle_members_event_id"), ["event_id"], unique=False)

    op.create_table(
        "predictions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("bundle_id", sa.Uuid(), nullable=False),
        sa.Column("patient_id", sa.Uuid(), nullable=False),
        sa.Column("task_id", sa.String(length=64), nullable=False),
        sa.Column("model_name", sa.String(length=128), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("model_sha256", sa.String(length=64), nullable=True),
        sa.Column(
            "status",
            sa.Enum(
                "final",
                "insufficient-data",
                "superseded",
                "cancelled",
                name="prediction_status",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("probability", sa.Float(), nullable=True),
        sa.Column("interval_low", sa.Float(), nullable=True),
        sa.Column("interval_high", sa.Float(), nullable=True),
        sa.Column(
            "outputs",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("superseded_by_id", sa.Uuid(), nullable=True),
        sa.Column("created_at", cds.core.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["bundle_id"], ["bundles.id"], name=op.f("fk_predictions_bundle_id_bundles")
        ),
        sa.ForeignKeyConstraint(
            ["patient_id"], ["patients.id"], name=op.f("fk_predictions_patient_id_patients")
        ),
        sa.ForeignKeyConstraint(
            ["superseded_by_id"],
            ["predictions.id"],
            name=op.f("fk_predictions_superseded_by_id_predictions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_predictions")),
        sa.UniqueConstraint(
            "bundle_id", "model_version", name=op.f("uq_predictions_bundle_id_model_version")
        ),
    )
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_predictions_patient_created_at", ["patient_id", "created_at"], unique=False
        )

    op.create_table(
        "scoring_jobs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("bundle_id", sa.Uuid(), nullable=False),
        sa.Column(
            "state",
            sa.Enum(
                "pending",
                "dispatched",
                "running",
                "done",
                "failed",
                "dead",
                name="job_state",
                native_enum=False,
                create_constraint=True,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", cds.core.db.types.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("worker", sa.String(length=255), nullable=True),
        sa.Column("created_at", cds.core.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", cds.core.db.types.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["bundle_id"], ["bundles.id"], name=op.f("fk_scoring_jobs_bundle_id_bundles")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scoring_jobs")),
        sa.UniqueConstraint("bundle_id", name=op.f("uq_scoring_jobs_bundle_id")),
    )
    with op.batch_alter_table("scoring_jobs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_scoring_jobs_state_next_attempt_at", ["state", "next_attempt_at"], unique=False
        )
    _create_audit_triggers()


def downgrade() -> None:
    _drop_audit_triggers()
    with op.batch_alter_table("scoring_jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_scoring_jobs_state_next_attempt_at")

    op.drop_table("scoring_jobs")
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.drop_index("ix_predictions_patient_created_at")

    op.drop_table("predictions")
    with op.batch_alter_table("bundle_members", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_bundle_members_event_id"))

    op.drop_table("bundle_members")
    with op.batch_alter_table("imaging_instances", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_imaging_instances_series_id"))

    op.drop_table("imaging_instances")
    with op.batch_alter_table("bundles", schema=None) as batch_op:
        batch_op.drop_index("ix_bundles_status")
        batch_op.drop_index("ix_bundles_patient_late_until")
        batch_op.drop_index("ix_bundles_patient_anchor_at")

    op.drop_table("bundles")
    with op.batch_alter_table("timeline_events", schema=None) as batch_op:
        batch_op.drop_index("ix_timeline_events_patient_kind_time")
        batch_op.drop_index("ix_timeline_events_lineage")
        batch_op.drop_index(batch_op.f("ix_timeline_events_imaging_study_id"))

    op.drop_table("timeline_events")
    with op.batch_alter_table("patient_merges", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_patient_merges_surviving_patient_id"))
        batch_op.drop_index(batch_op.f("ix_patient_merges_merged_patient_id"))

    op.drop_table("patient_merges")
    with op.batch_alter_table("imaging_series", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_imaging_series_study_id"))

    op.drop_table("imaging_series")
    with op.batch_alter_table("source_items", schema=None) as batch_op:
        batch_op.drop_index("ix_source_items_received_at")
        batch_op.drop_index(batch_op.f("ix_source_items_patient_id"))

    op.drop_table("source_items")
    with op.batch_alter_table("patient_identifiers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_patient_identifiers_patient_id"))

    op.drop_table("patient_identifiers")
    with op.batch_alter_table("imaging_studies", schema=None) as batch_op:
        batch_op.drop_index("ix_imaging_studies_state_completes_at")
        batch_op.drop_index(batch_op.f("ix_imaging_studies_patient_id"))

    op.drop_table("imaging_studies")
    with op.batch_alter_table("patients", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_patients_merged_into_id"))

    op.drop_table("patients")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_state_next_attempt_at")

    op.drop_table("outbox")
    with op.batch_alter_table("audit_log", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_log_occurred_at"))

    op.drop_table("audit_log")
