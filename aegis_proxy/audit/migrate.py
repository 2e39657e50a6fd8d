"""Schema migrations of the audit database (Alembic, configured in code: no alembic.ini).

The migration scripts live in the checkout's top-level `audit/migrations` folder, next to the audit format spec.
"""

from __future__ import annotations

import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine

import aegis_proxy
from aegis_proxy.audit.errors import AuditError

# Own name, not "alembic_version", so the audit log can share a database with other Alembic-managed schemas.
VERSION_TABLE = "audit_schema_version"
MIGRATIONS_DIR = Path(aegis_proxy.__file__).resolve().parent.parent / "audit" / "migrations"

# Alembic keeps the running migration in module globals (alembic.context, alembic.op): one migration per process at
# a time. Across processes, env.py takes a PostgreSQL advisory lock.
_IN_PROCESS = threading.Lock()


def _config() -> Config:
    if not (MIGRATIONS_DIR / "env.py").is_file():
        raise AuditError(
            f"audit schema migrations not found at {MIGRATIONS_DIR}",
            hint="run aegis-proxy from a source checkout (pip install -e .); installed wheels do not ship audit/",
        )
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def upgrade(url: str) -> None:
    """Bring the audit database at `url` (an SQLAlchemy URL) to the newest schema. Safe to call on every start."""
    config = _config()
    try:
        engine = create_engine(url)
        try:
            with _IN_PROCESS, engine.connect() as connection:
                # Handing over the connection (instead of sqlalchemy.url) keeps the URL out of configparser's
                # %-interpolation and lets env.py run on exactly this connection.
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
                connection.commit()
        finally:
            engine.dispose()
    except Exception as error:
        raise AuditError(
            f"audit schema migration failed: {type(error).__name__}: {str(error)[:300]}",
            hint="check the --db URL and that the database user may create tables",
        ) from error


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
