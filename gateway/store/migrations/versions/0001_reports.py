"""Reports (immutable versions), reviews, thumbnails.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "thumbnails",
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("jpeg", sa.LargeBinary(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sha256", name="pk_thumbnails"),
    )
    op.create_table(
        "reports",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("patient_id", sa.String(64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("supersedes", sa.String(32), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("content_key", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reviewed_by", sa.String(128), nullable=True),
        sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("appearance", sa.JSON(), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_reports"),
        sa.ForeignKeyConstraint(["supersedes"], ["reports.id"], name="fk_reports_supersedes_reports",
                                ondelete="CASCADE"),
        sa.UniqueConstraint("supersedes", name="uq_reports_supersedes"),
        sa.UniqueConstraint("patient_id", "seq", name="uq_reports_patient_id"),
    )
    op.create_index("ix_reports_patient_seq", "reports", ["patient_id", "seq"])
    op.create_table(
        "report_images",
        sa.Column("report_id", sa.String(32), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("report_id", "sha256", name="pk_report_images"),
        sa.ForeignKeyConstraint(["report_id"], ["reports.id"], name="fk_report_images_report_id_reports",
                                ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["sha256"], ["thumbnails.sha256"], name="fk_report_images_sha256_thumbnails"),
    )
    op.create_index("ix_report_images_sha256", "report_images", ["sha256"])
    op.create_table(
        "reviews",
        sa.Column("report_id", sa.String(32), nullable=False),
        sa.Column("reviewer", sa.String(128), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("sign_off", sa.Boolean(), nullable=False),
        sa.Column("corrections", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("report_id", name="pk_reviews"),
        sa.ForeignKeyConstraint(["report_id"], ["reports.id"], name="fk_reviews_report_id_reports",
                                ondelete="CASCADE"),
    )


def downgrade() -> None:
    op.drop_table("reviews")
    op.drop_index("ix_report_images_sha256", table_name="report_images")
    op.drop_table("report_images")
    op.drop_index("ix_reports_patient_seq", table_name="reports")
    op.drop_table("reports")
    op.drop_table("thumbnails")
