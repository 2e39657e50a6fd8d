"""The audit append transaction on SQLite through the sqlite3 driver itself, without SQLAlchemy's machinery.

An append is one short transaction of five statements (lock and read the head row, insert the records and their
arguments, advance the head row, maybe insert a checkpoint). Through SQLAlchemy, its transaction and statement
handling made a one-record append cost 0.47 ms of CPU, three quarters of it outside SQLite; on one sqlite3 connection
the whole append (signing included) costs 0.2 ms. What the transaction does is unchanged: AuditStore builds and signs
the records and runs the same SQLAlchemy statements, compiled once for SQLite, inside `BEGIN IMMEDIATE ... COMMIT`,
with the journal and sync settings of `configure_sqlite`. Only SQLite uses it; PostgreSQL keeps the SQLAlchemy path.
Staged decisions (audit/FORMAT.md section 9) are INSERTs committed by themselves (`insert_rows`).

The connection is not thread-safe by itself: AuditStore holds its write lock around every transaction.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.sql import Executable

_DIALECT = sqlite.dialect(paramstyle="named")  # named parameters: the rows AuditStore builds for SQLAlchemy fit as is
BUSY_TIMEOUT = 60.0  # seconds a transaction waits for another process's write lock (as the store's engine does)
_BUSY_TIMEOUT_MS = int(BUSY_TIMEOUT * 1000)
_PORTABLE_PARAMETERS = 999  # bound parameters every SQLite build takes in one statement (the default before 3.32)


class DatabaseBusy(Exception):
    """A transaction that must not wait found the database's write lock taken; nothing was written."""


def database_path(url: str) -> str | None:
    """The file of a plain `sqlite:///PATH` URL (pysqlite driver, no query options); None for anything else, which
    then keeps the SQLAlchemy path (URI filenames, options, other drivers)."""
    parsed = make_url(url)
    if parsed.drivername not in ("sqlite", "sqlite+pysqlite") or parsed.query or not parsed.database:
        return None
    return None if parsed.database == ":memory:" else parsed.database


def _is_busy(error: sqlite3.Error) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED, extended codes included (SQLITE_BUSY_SNAPSHOT, SQLITE_BUSY_RECOVERY...)."""
    code = getattr(error, "sqlite_errorcode", None)
    return isinstance(code, int) and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class SqliteTransaction:
    """An open write transaction: runs the store's statements (compiled once per connection) on the raw cursor."""

    def __init__(self, cursor: sqlite3.Cursor, compiled: dict[Executable, str], *, unchanged: bool) -> None:
        self._cursor = cursor
        self._compiled = compiled
        # No other connection committed since this connection's previous commit: what that commit left (the head row)
        # is still what the database holds.
        self.unchanged = unchanged

    def rows(self, statement: Executable, parameters: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        return self._cursor.execute(_sql(self._compiled, statement), parameters).fetchall()

    def run(self, statement: Executable, parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> None:
        if isinstance(parameters, Mapping):
            self._cursor.execute(_sql(self._compiled, statement), parameters)
        else:
            self._cursor.executemany(_sql(self._compiled, statement), parameters)


def _sql(compiled: dict[Executable, str], statement: Executable) -> str:
    """The statement's SQL for SQLite, compiled on first use (the store's statements are module constants)."""
    sql = compiled.get(statement)
    if sql is None:
        sql = compiled[statement] = str(statement.compile(dialect=_DIALECT))
    return sql


class SqliteAppender:
    """One sqlite3 connection for a store's append transactions, opened on first use (and again in a forked child:
    a connection must not cross a fork)."""

    def __init__(self, path: str, sync: str) -> None:
        self.path = path
        self.synchronous = "FULL" if sync == "full" else "NORMAL"
        self._connection: sqlite3.Connection | None = None
        self._pid = 0
        self._waits = True  # whether the connection's busy timeout is on (BUSY_TIMEOUT) or off (0)
        # PRAGMA data_version after this connection's last commit (None: no commit yet, or one failed). SQLite
        # changes it for this connection exactly when another connection, of any process, commits.
        self._committed_version: int | None = None
        self._inherited: list[sqlite3.Connection] = []  # from a parent process: never used, never closed here
        # Keyed by the store's statement objects (module constants, hashed by identity): each compiled once.
        self._compiled: dict[Executable, str] = {}
        self._inserts: dict[tuple[str, tuple[str, ...], int], str] = {}  # insert_rows' SQL by table, columns, rows

    def _connect(self) -> sqlite3.Connection:
        if self._connection is not None and self._pid == os.getpid():
            return self._connection
        if self._connection is not None:  # opened before a fork; closing it here could drop the parent's locks
            self._inherited.append(self._connection)
            self._connection = None
        # isolation_level None: the driver starts no transaction of its own; we issue BEGIN IMMEDIATE and COMMIT.
        connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
        try:
            connection.execute("PRAGMA journal_mode=WAL").fetchall()
            # As configure_sqlite: FULL syncs every commit (survives power loss), NORMAL under WAL survives a crash of
            # this process. Per connection, so set on every one.
            connection.execute(f"PRAGMA synchronous={self.synchronous}")
        except BaseException:
            connection.close()
            raise
        self._connection, self._pid, self._waits, self._committed_version = connection, os.getpid(), True, None
        return connection

    @contextlib.contextmanager
    def transaction(self, *, wait: bool = True) -> Iterator[SqliteTransaction]:
        """`BEGIN IMMEDIATE` (the database's write lock, taken up front as every store writer does), the caller's
        statements, `COMMIT`. Any failure, the commit's included, rolls back and propagates: nothing was written.

        The transaction says whether it is `unchanged`: no other connection committed since this one's previous
        commit (PRAGMA data_version, read under the write lock), so the caller may reuse what it knew then.

        `wait=False`: when another connection (another process) holds the write lock, raise DatabaseBusy at once
        instead of waiting up to BUSY_TIMEOUT (for a caller on an event loop, which must not stall). The whole
        transaction runs without a busy timeout then; a statement that finds the database busy after BEGIN (in WAL
        mode none should, the write lock being ours) also rolls back and raises DatabaseBusy, so that the caller
        takes the waiting path instead of failing."""
        connection = self._connect()
        cursor = connection.cursor()
        try:
            self._wait_as(connection, wait)
            cursor.execute("BEGIN IMMEDIATE")
            version = cursor.execute("PRAGMA data_version").fetchone()[0]
            committed, self._committed_version = self._committed_version, None  # until this commit succeeds
            yield SqliteTransaction(cursor, self._compiled, unchanged=version == committed)
            cursor.execute("COMMIT")
            self._committed_version = version  # our own commit leaves our data_version as it was
        except BaseException as error:
            busy = self._failed(connection, error, wait)
            if busy is not None:
                raise busy from error
            raise
        finally:
            cursor.close()

    def insert_rows(self, table: str, rows: Sequence[Mapping[str, Any]], *, wait: bool = True) -> list[int]:
        """Rows inserted by one INSERT statement that is a transaction of its own (SQLite's autocommit: the write lock
        taken and the commit made, synced as configured, one fsync with `full`, by the statement itself); their
        rowids, in order. For writes that touch no row another transaction reads first (staged decisions). The rows
        must have the same columns.

        Why one statement: on the event loop, a quarter fewer round trips than `transaction`'s BEGIN IMMEDIATE, PRAGMA
        data_version, statement and COMMIT (one row: 44 against 71 us after a pause); on a thread that shares the GIL
        with a busy event loop, the driver lets go of the GIL around each statement and must take it back after, each
        time perhaps waiting for the loop (the audit writer's thread with four agents at once: staging 1-4 decisions
        took 1.0 ms at the median as BEGIN, an INSERT each and COMMIT). SQLite numbers the rows of one INSERT in the
        order of its VALUES, each one past the largest rowid before it, under the write lock the statement holds: the
        last rowid and the count give them all.

        It leaves what `transaction` compares untouched: this connection's own commit does not change its
        data_version, so a later transaction is still `unchanged` exactly when no other connection committed since
        the last one. Failures as in `transaction`: nothing is written, and `wait=False` raises DatabaseBusy when
        another connection holds the write lock."""
        if not rows:
            return []
        columns = tuple(rows[0])
        if len(rows) > 1 and any(tuple(row) != columns for row in rows):
            raise sqlite3.ProgrammingError("rows of one insert must have the same columns")
        connection = self._connect()
        if connection.in_transaction:  # the insert would join it and commit nothing: never report that as durable
            raise sqlite3.ProgrammingError("an insert of its own inside an open transaction")
        # Past the build's limit of bound parameters (999 before SQLite 3.32), the rows go in several statements.
        per_statement = len(rows)
        if len(rows) * len(columns) > _PORTABLE_PARAMETERS:
            per_statement = max(1, connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // len(columns))
        ids: list[int] = []
        for start in range(0, len(rows), per_statement):
            chunk = rows[start : start + per_statement]
            try:
                self._wait_as(connection, wait)
                cursor = connection.execute(
                    self._insert_sql(table, columns, len(chunk)), [row[column] for row in chunk for column in columns]
                )
            except BaseException as error:
                busy = self._failed(connection, error, wait)
                if busy is not None:
                    raise busy from error
                raise
            last, count = cursor.lastrowid, cursor.rowcount
            cursor.close()
            if last is None or count != len(chunk):
                raise sqlite3.DatabaseError(f"the insert wrote {count} rows of {len(chunk)}")
            ids.extend(range(last - count + 1, last + 1))
        return ids

    def _insert_sql(self, table: str, columns: tuple[str, ...], count: int) -> str:
        key = (table, columns, count)
        sql = self._inserts.get(key)
        if sql is None:
            if not all(name.isidentifier() for name in (table, *columns)):  # names go into the SQL text itself
                raise sqlite3.ProgrammingError(f"not a table or column name: {(table, *columns)!r}")
            values = "(" + ", ".join("?" * len(columns)) + ")"
            sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([values] * count)}"
            if len(self._inserts) < 1024:  # shapes: one per batch size up to the writer's max_batch
                self._inserts[key] = sql
        return sql

    def _wait_as(self, connection: sqlite3.Connection, wait: bool) -> None:
        """The busy timeout for this way of writing. Per connection, and a process's writes almost always go one way
        (the loop's quick ones, or the writer thread's): set only when the way changes, not twice per append
        (measured: 23 us of the 0.2 ms append)."""
        if self._waits != wait:
            connection.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS if wait else 0}")
            self._waits = wait

    def _failed(self, connection: sqlite3.Connection, error: BaseException, wait: bool) -> DatabaseBusy | None:
        """After a failed write: roll back what it began. DatabaseBusy to raise instead when the database was busy
        and the write must not wait (its caller then takes the waiting path); None: raise the error itself."""
        self._abort(connection)
        if not wait and isinstance(error, sqlite3.OperationalError) and _is_busy(error):
            return DatabaseBusy(str(error))
        return None

    def _abort(self, connection: sqlite3.Connection) -> None:
        try:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
        except sqlite3.Error:  # a connection that cannot roll back is not reused; closing it rolls back
            self._discard()

    def _discard(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if self._pid != os.getpid():
            self._inherited.append(connection)
            return
        with contextlib.suppress(sqlite3.Error):
            connection.close()

    def close(self) -> None:
        self._discard()
