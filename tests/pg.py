"""PostgreSQL for tests: the machine's server (trust auth, database `test`), a fresh schema per test.

Tests that need PostgreSQL must run, never skip: an unreachable server fails them with the URL in the message.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

PG_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"


@contextlib.contextmanager
def pg_schema_url(prefix: str = "t") -> Iterator[str]:
    """A URL whose connections default to a new, empty schema (through search_path); dropped afterwards."""
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL)
    try:
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except sa.exc.OperationalError as error:
        pytest.fail(f"PostgreSQL at {PG_URL} is unreachable (these tests must run on it): {error}")
    url = sa.make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            # A connection the test left in a transaction would block the drop forever: fail loudly instead.
            conn.execute(sa.text("SET LOCAL lock_timeout = '20s'"))
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()
