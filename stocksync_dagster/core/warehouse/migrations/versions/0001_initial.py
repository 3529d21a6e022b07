"""Initial schema: the tables and views of `warehouse/schema.py` as of version 0.1.

A new warehouse is built from `schema.py` and stamped at head; this revision exists so that
later revisions have a base to upgrade from.

Revision ID: 0001
Revises:
"""

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Nothing to do: databases at 0001 were created from schema.py."""


def downgrade() -> None:
    """The initial schema is not dropped by a downgrade."""
