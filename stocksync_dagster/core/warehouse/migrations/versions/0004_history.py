"""Add `daily_status` (point-in-time ST and trading status) and the revision tables.

`daily_bar_revision` / `adj_factor_revision` keep the previous values of rows a re-fetch
changed. The PostgreSQL function `daily_bar_qfq_as_of` is (re)created with the views after
every upgrade (`schema.create_views`).

Revision ID: 0004_history
Revises: 0002_suspension
"""

from alembic import op

from stocksync_dagster.core.warehouse import schema

revision = "0004_history"
down_revision = "0003_source"
branch_labels = None
depends_on = None

_TABLES = (schema.daily_status, schema.daily_bar_revision, schema.adj_factor_revision)


def upgrade() -> None:
    """Create the tables (empty: statuses fill in as days are synced or re-fetched)."""
    bind = op.get_bind()
    for table in _TABLES:
        table.create(bind, checkfirst=True)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS daily_bar_qfq_as_of(date)")
    for table in reversed(_TABLES):
        table.drop(bind, checkfirst=True)
