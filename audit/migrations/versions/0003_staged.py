"""Staged decisions: audit_staged, the durable write-ahead of decisions that the writer chains into the log.

A decision made on the proxy's event loop is made durable there as one short row (its entry, time, nonce and
arguments), and the writer thread turns it into a signed, chained record (audit/FORMAT.md section 9). The table is
empty whenever the writer keeps up; rows that remain after a crash are chained when a writer next starts.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_staged",
        # INTEGER PRIMARY KEY on SQLite (the rowid, assigned in insert order), an identity column on PostgreSQL.
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("origin", sa.Text(), nullable=False),
        sa.Column("time", sa.String(27), nullable=False),
        sa.Column("nonce", sa.LargeBinary(), nullable=False),
        sa.Column("arguments", sa.LargeBinary(), nullable=True),
        sa.Column("entry", sa.LargeBinary(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("audit_staged")
