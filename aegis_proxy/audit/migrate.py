"""Schema migrations of the audit database (Alembic, configured in code: no alembic.ini).

The migration scripts live in the checkout's top-level `audit/migrations` folder, next to the audit format spec.
"""

from __future__ import annotations

import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, MetaData, create_engine, inspect, text

import aegis_proxy
from aegis_proxy.audit.errors import AuditError

# Own name, not "alembic_version", so the audit log can share a database with other Alembic-managed schemas.
VERSION_TABLE = "audit_schema_version"
MIGRATIONS_DIR = Path(aegis_proxy.__file__).resolve().parent.parent / "audit" / "migrations"

# Alembic keeps the running migration in module globals (alembic.context, alembic.op): one migration per process at
# a time. Across processes: SQLite's write lock, or this PostgreSQL advisory lock (any constant works; it only has
# to be the same in every process that migrates the database).
_IN_PROCESS = threading.Lock()
PG_MIGRATION_LOCK = 0x41454753  # "AEGS"
# Tables of revision 0001, which earlier builds made with metadata.create_all and no version table.
_CREATE_ALL_TABLES = frozenset({"audit_records", "audit_head", "audit_arguments"})


def _config() -> Config:
    if not (MIGRATIONS_DIR / "env.py").is_file():
        raise AuditError(
            f"audit schema migrations not found at {MIGRATIONS_DIR}",
            hint="run aegis-proxy from a source checkout (pip install -e .); installed wheels do not ship audit/",
        )
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def _engine(url: str) -> Engine:
    if not url.startswith("sqlite"):
        return create_engine(url)
    from aegis_proxy.audit.store import configure_sqlite  # store imports this module

    engine = create_engine(url, connect_args={"timeout": 60})
    configure_sqlite(engine)
    return engine


def upgrade(url: str) -> None:
    """Bring the audit database at `url` (an SQLAlchemy URL) to the newest schema. Safe to call on every start."""
    config = _config()
    try:
        engine = _engine(url)
        try:
            with _IN_PROCESS, engine.connect() as connection:
                # One transaction for the whole upgrade, locked before anything reads the schema: on SQLite it is
                # BEGIN IMMEDIATE (the database's write lock), on PostgreSQL an advisory lock; so processes opening
                # one database at once migrate one after the other. DDL is transactional on both: a failed upgrade
                # leaves nothing half made.
                connection.begin()
                if connection.dialect.name == "postgresql":
                    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_MIGRATION_LOCK})
                # Handing over the connection (instead of sqlalchemy.url) keeps the URL out of configparser's
                # %-interpolation and lets env.py run on exactly this connection.
                config.attributes["connection"] = connection
                tables = set(inspect(connection).get_table_names())
                if VERSION_TABLE not in tables and tables >= _CREATE_ALL_TABLES:
                    command.stamp(config, "0001")  # adopt a database made by create_all: it is revision 0001
                command.upgrade(config, "head")
                connection.commit()
        finally:
            engine.dispose()
    except Exception as error:
        raise AuditError(
            f"audit schema migration failed: {type(error).__name__}: {str(error)[:300]}",
            hint="check the --db URL and that the database user may create tables",
        ) from error


def create_tables(engine: Engine, metadata: MetaData) -> None:
    """`metadata.create_all` for the tables that live beside the audit log (approvals, MCP tool pins), under the
    same lock as `upgrade`: replicas starting at once against an empty PostgreSQL would otherwise race on CREATE
    TABLE, and one of them fail on the catalog's unique index."""
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_MIGRATION_LOCK})
        metadata.create_all(connection)


def current_revision(url: str) -> str | None:
    """The schema revision of the audit database at `url`; None if it was never migrated."""
    try:
        engine = create_engine(url)
        try:
            with engine.connect() as connection:
                context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
                return context.get_current_revision()
        finally:
            engine.dispose()
    except Exception as error:
        raise AuditError(
            f"cannot read the audit schema revision: {type(error).__name__}: {str(error)[:300]}",
            hint="check the --db URL",
        ) from error
