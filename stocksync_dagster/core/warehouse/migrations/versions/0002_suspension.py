"""Add `suspension(code, trade_date, source)`: what the source said was suspended.

Revision ID: 0002_suspension
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_suspension"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the table; suspensions of days synced before fill in when they are re-fetched."""
    op.create_table(
        "suspension",
        sa.Column("code", sa.String(12), primary_key=True),
        sa.Column("trade_date", sa.Date, primary_key=True),
        sa.Column("source", sa.String(16), nullable=False, comment="baostock, tushare or demo"),
        comment="Listed stocks the source says were suspended that day: no daily_bar row by design",
    )
    op.create_index("ix_suspension_trade_date", "suspension", ["trade_date"])


def downgrade() -> None:
    op.drop_index("ix_suspension_trade_date", table_name="suspension")
    op.drop_table("suspension")
