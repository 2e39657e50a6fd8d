"""Alembic environment of the audit log schema.

Normally driven by `aegis_proxy.audit.migrate`, which hands over an open connection in
`config.attributes["connection"]`; the plain `alembic` CLI works too when `sqlalchemy.url` is set.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine, text

from aegis_proxy.audit.migrate import PG_MIGRATION_LOCK, VERSION_TABLE
from aegis_proxy.audit.store import metadata


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata, version_table=VERSION_TABLE)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Replicas starting together would otherwise race to create the same tables; the lock is taken before
            # Alembic reads the current revision, so the loser sees the winner's committed revision and does nothing.
            # (migrate.upgrade has taken it already; advisory locks nest within one session.)
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_MIGRATION_LOCK})
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(context.config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as connection:
        _run(connection)
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported for the audit log")
run_migrations_online()
