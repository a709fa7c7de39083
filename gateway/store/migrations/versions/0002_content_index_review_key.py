"""A repeated upload finds its report by (patient, content key); a review records the API key it came with.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_reports_patient_content", "reports", ["patient_id", "content_key"])
    with op.batch_alter_table("reviews") as batch:
        batch.add_column(sa.Column("key_id", sa.String(32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("reviews") as batch:
        batch.drop_column("key_id")
    op.drop_index("ix_reports_patient_content", table_name="reports")
