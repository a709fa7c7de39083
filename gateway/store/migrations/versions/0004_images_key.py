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
    op.add_column("reports", sa.Column("images_key", sa.String(64), nullable=True))
    op.create_index("ix_reports_patient_images", "reports", ["patient_id", "images_key"])


def downgrade() -> None:
    op.drop_index("ix_reports_patient_images", table_name="reports")
    if op.get_bind().dialect.name == "sqlite":
        # SQLite 3.35+ drops a column in place. Alembic's batch mode would copy the table and drop the old one,
        # and with foreign keys on that DROP cascades: every review, review version and thumbnail link lost
        op.execute("ALTER TABLE reports DROP COLUMN images_key")
    else:
        op.drop_column("reports", "images_key")
