"""prompts.kind_reason, pairs.meta

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("prompts") as batch:
        batch.add_column(sa.Column("kind_reason", sa.String(length=200), nullable=True))
    with op.batch_alter_table("pairs") as batch:
        batch.add_column(sa.Column("meta", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("pairs") as batch:
        batch.drop_column("meta")
    with op.batch_alter_table("prompts") as batch:
        batch.drop_column("kind_reason")
