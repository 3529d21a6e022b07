"""Add `source` to `daily_bar` and `adj_factor`, and the `source_disagreement` table.

Existing rows keep `source` NULL (which source wrote them was not recorded); a re-fetch sets it.

Revision ID: 0003_source
Revises: 0002_suspension
"""

import sqlalchemy as sa
from alembic import op

from stocksync_dagster.core.warehouse import schema

revision = "0003_source"
down_revision = "0002_suspension"
branch_labels = None
depends_on = None

_COMMENT = "baostock, tushare or demo: where the row came from (NULL: written before 0003)"


def upgrade() -> None:
    """Nullable columns (no table rewrite); the views select named columns, so they stand."""
    for table in ("daily_bar", "adj_factor"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("source", sa.String(16), nullable=True, comment=_COMMENT))
    op.create_table(
        "source_disagreement",
        sa.Column("code", sa.String(12), primary_key=True),
        sa.Column("trade_date", sa.Date, primary_key=True),
        sa.Column(
            "field",
            sa.String(24),
            primary_key=True,
            comment="open/high/low/close/volume/amount, adj_factor_ratio, or bar/adj_factor "
            "(absent)",
        ),
        sa.Column("primary_value", sa.Double, nullable=True, comment="the warehouse's value"),
        sa.Column("other_value", sa.Double, nullable=True, comment="the other source's value"),
        sa.Column(
            "primary_source", sa.String(16), nullable=False, comment="source of the stored row"
        ),
        sa.Column("other_source", sa.String(16), nullable=False),
        sa.Column("detected_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=True, comment="Dagster run of the check"),
        comment="Stored values the second source disagrees with (the latest check of each pair)",
    )
    op.create_index("ix_source_disagreement_trade_date", "source_disagreement", ["trade_date"])


def downgrade() -> None:
    """Drop the table and the columns; SQLite rebuilds the tables, so the views go first."""
    op.drop_index("ix_source_disagreement_trade_date", table_name="source_disagreement")
    op.drop_table("source_disagreement")
    for view in ("daily_bar_qfq", "daily_bar_hfq"):
        op.execute(f"DROP VIEW IF EXISTS {view}")
    for table in ("adj_factor", "daily_bar"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("source")
    schema.create_views(op.get_bind())
