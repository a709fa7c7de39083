"""A report chain is found again by its images alone (``images_key``), its models compared with the chain's
newest version; rows made before this revision keep NULL and are found by ``content_key`` as before.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("reports") as batch:
        batch.add_column(sa.Column("images_key", sa.String(64), nullable=True))
    op.create_index("ix_reports_patient_images", "reports", ["patient_id", "images_key"])


def downgrade() -> None:
    op.drop_index("ix_reports_patient_images", table_name="reports")
    with op.batch_alter_table("reports") as batch:
        batch.drop_column("images_key")
