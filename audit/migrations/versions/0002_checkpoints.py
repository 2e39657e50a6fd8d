"""Checkpoints and the Merkle frontier: audit_checkpoints, audit_head.frontier, audit_head.retired_keys.

The frontier of a log that already has records is computed here from its leaf hashes, so an upgraded log's next
checkpoint covers every record written before the upgrade. A head row whose records are not contiguous from seq 0
stops the upgrade: its frontier would be wrong, and the log needs `aegis audit verify` first.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from aegis_proxy.audit.merkle import MerkleFrontier

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | tuple[str, ...] | None = None
depends_on: str | tuple[str, ...] | None = None

# Table stubs for the data step: only the columns it reads and writes, as they are at this revision.
_head = sa.table(
    "audit_head",
    sa.column("origin", sa.Text()),
    sa.column("seq", sa.BigInteger()),
    sa.column("frontier", sa.LargeBinary()),
    sa.column("retired_keys", sa.Text()),
)
_records = sa.table(
    "audit_records",
    sa.column("origin", sa.Text()),
    sa.column("seq", sa.BigInteger()),
    sa.column("leaf_hash", sa.LargeBinary()),
)


def _backfill_frontiers() -> None:
    connection = op.get_bind()
    heads = connection.execute(sa.select(_head.c.origin, _head.c.seq)).all()
    for origin, head_seq in heads:
        frontier = MerkleFrontier()
        query = sa.select(_records.c.seq, _records.c.leaf_hash).where(_records.c.origin == origin)
        query = query.order_by(_records.c.seq).execution_options(yield_per=10_000)
        for seq, leaf in connection.execute(query):
            if seq != frontier.size:
                raise RuntimeError(f"log {origin!r}: expected seq {frontier.size}, found {seq}; verify the log first")
            frontier.append(bytes(leaf))
        if frontier.size != head_seq + 1:
            raise RuntimeError(f"log {origin!r}: head row says seq {head_seq}, records end at {frontier.size - 1}")
        state = b"".join(frontier.state()[1])
        connection.execute(sa.update(_head).where(_head.c.origin == origin).values(frontier=state, retired_keys=""))


def upgrade() -> None:
    op.create_table(
        "audit_checkpoints",
        sa.Column("origin", sa.Text(), primary_key=True),
        sa.Column("size", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("root_hash", sa.LargeBinary(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("time", sa.String(27), nullable=False),
    )
    op.add_column("audit_head", sa.Column("frontier", sa.LargeBinary(), nullable=True))
    op.add_column("audit_head", sa.Column("retired_keys", sa.Text(), nullable=True))
    _backfill_frontiers()
    # Added nullable, filled, then made NOT NULL: SQLite cannot add a NOT NULL column without a default (batch mode
    # rebuilds the small head table there; PostgreSQL alters in place).
    with op.batch_alter_table("audit_head") as batch:
        batch.alter_column("frontier", existing_type=sa.LargeBinary(), nullable=False)
        batch.alter_column("retired_keys", existing_type=sa.Text(), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("audit_head") as batch:
        batch.drop_column("retired_keys")
        batch.drop_column("frontier")
    op.drop_table("audit_checkpoints")
