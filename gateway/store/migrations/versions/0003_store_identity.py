"""The report store's own identity: a random id made once, so that tools writing beside it (an export of
reviewed cells) can tell one store from another.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""
import uuid

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table("store_identity", sa.Column("id", sa.String(32), primary_key=True))
    op.bulk_insert(table, [{"id": uuid.uuid4().hex}])


def downgrade() -> None:
    op.drop_table("store_identity")
