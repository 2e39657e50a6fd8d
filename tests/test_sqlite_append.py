"""The raw sqlite3 append path (audit/sqlite_append.py): used for plain SQLite URLs, byte-identical to the SQLAlchemy
path, the configured durability on its own connection, all-or-nothing transactions, and a new connection after fork.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import multiprocessing
import sqlite3
import subprocess
import sys
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aegis_proxy.audit import store as store_module
from aegis_proxy.audit.errors import AuditError
from aegis_proxy.audit.keys import TrustedKey, key_id
from aegis_proxy.audit.record import FindingSummary
from aegis_proxy.audit.sqlite_append import BUSY_TIMEOUT, DatabaseBusy, SqliteAppender, database_path
from aegis_proxy.audit.store import AppendEntry, AuditStore
from aegis_proxy.audit.verify import verify_chain

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
KEY_ID = key_id(KEY.public_key())
TRUSTED = {KEY_ID: TrustedKey(KEY_ID, KEY.public_key(), 0)}
ENTRIES = [
    AppendEntry(type="decision", decision="allow", tool="run_shell", arguments={"cmd": "ls -la"}, session_id="s"),
    AppendEntry(
        type="decision",
        decision="deny",
        tool="send_email",
        arguments={"to": "ü@example.com", "n": [1, 2, {"deep": None}]},
        agent_id="a",
        rules=("no-exfil",),
        findings=(FindingSummary(category="network.exfil", severity="high", path="args.to"),),
        scores={"risk": 900_000},
    ),
    AppendEntry(type="policy_reload", rules=("policy.reload",), policy_digest="ab" * 32),
    AppendEntry(type="approval", decision="allow", tool="run_shell", arguments={}, approver="ops", ref_seq=0),
]


def open_store(url: str, **options: Any) -> AuditStore:
    return AuditStore(url, origin="test/raw", signer_key=KEY, replica="r1", **options)


def rows(path: Path, table: str) -> list[tuple[Any, ...]]:
    connection = sqlite3.connect(path)
    try:
        return connection.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("url", "raw"),
    [
        ("sqlite:///audit.db", "audit.db"),
        ("sqlite+pysqlite:///var/aegis/audit.db", "var/aegis/audit.db"),
        ("sqlite:////abs/audit.db", "/abs/audit.db"),
        ("sqlite:///audit.db?timeout=30", None),  # driver options: SQLAlchemy's path honours them
        ("sqlite:///file:audit.db?mode=rwc&uri=true", None),
        ("sqlite://", None),
        ("sqlite:///:memory:", None),
        ("postgresql://u@h/db", None),
    ],
)
def test_which_urls_take_the_raw_path(url: str, raw: str | None) -> None:
    assert database_path(url) == raw


class _FixedClock(dt.datetime):
    """dt.datetime whose now() steps by one second from a fixed moment: two stores write the same times."""

    ticks = itertools.count()

    @classmethod
    def now(cls, tz: dt.tzinfo | None = None) -> _FixedClock:
        moment = dt.datetime(2026, 11, 29, 12, 0, 0, 123456, tzinfo=dt.UTC) + dt.timedelta(seconds=next(cls.ticks))
        return cls.fromtimestamp(moment.timestamp(), tz)


def _deterministic(monkeypatch: pytest.MonkeyPatch) -> None:
    _FixedClock.ticks = itertools.count()
    monkeypatch.setattr(store_module, "dt", types.SimpleNamespace(datetime=_FixedClock, UTC=dt.UTC))
    nonces = (bytes([n % 256]) * 32 for n in itertools.count())
    monkeypatch.setattr(store_module.secrets, "token_bytes", lambda size: next(nonces)[:size])


def _write_log(url: str, monkeypatch: pytest.MonkeyPatch) -> AuditStore:
    _deterministic(monkeypatch)
    opened = open_store(url, checkpoint_every=3)
    for entry in ENTRIES:
        opened.append([entry])
    opened.append(ENTRIES[:3])  # a batch: one transaction, a checkpoint inside it
    opened.append([ENTRIES[0]])
    opened.checkpoint()  # through SQLAlchemy on both: it must continue what the raw path wrote
    return opened


def test_records_are_byte_identical_to_the_sqlalchemy_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    raw_path, core_path = tmp_path / "raw.db", tmp_path / "core.db"
    raw = _write_log(f"sqlite:///{raw_path}", monkeypatch)
    core = _write_log(f"sqlite:///{core_path}?timeout=60", monkeypatch)
    try:
        assert raw._sqlite is not None and core._sqlite is None  # each took the path under test
        for table in ("audit_records", "audit_arguments", "audit_head", "audit_checkpoints"):
            assert rows(raw_path, table) == rows(core_path, table), table
        assert [row[1] for row in rows(raw_path, "audit_checkpoints")] == [3, 7, 8]  # by count, then forced
        verify_chain(raw, TRUSTED)
    finally:
        raw.close()
        core.close()


@pytest.mark.parametrize(("sync", "synchronous"), [("full", 2), ("normal", 1)])
def test_the_raw_connection_has_the_configured_durability(tmp_path: Path, sync: str, synchronous: int) -> None:
    opened = open_store(f"sqlite:///{tmp_path / 'audit.db'}", sync=sync)
    try:
        opened.append([ENTRIES[0]])
        connection = opened._sqlite._connection if opened._sqlite is not None else None
        assert connection is not None
        assert connection.execute("PRAGMA synchronous").fetchone() == (synchronous,)
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert not connection.in_transaction  # committed, not left open
    finally:
        opened.close()


@pytest.fixture
def raw_store(tmp_path: Path) -> Iterator[AuditStore]:
    opened = open_store(f"sqlite:///{tmp_path / 'audit.db'}")
    yield opened
    opened.close()


def test_a_failed_statement_rolls_back_the_whole_batch(raw_store: AuditStore, tmp_path: Path) -> None:
    raw_store.append([ENTRIES[0]])
    other = sqlite3.connect(tmp_path / "audit.db", isolation_level=None)
    # A stray row where the batch's third record goes: the insert fails after the head row was read and two records
    # were built, so everything before it in the transaction must be undone.
    other.execute(
        "INSERT INTO audit_records (origin, seq, body, leaf_hash, prev_hash, key_id, signature, time, type) "
        "VALUES ('test/raw', 3, x'00', x'00', x'01', 'k', x'00', 't', 'decision')"
    )
    with pytest.raises(AuditError, match="audit append failed: IntegrityError"):
        raw_store.append(ENTRIES[:3])
    assert raw_store.head()[0] == 0
    assert [row[1] for row in rows(tmp_path / "audit.db", "audit_arguments")] == [0]
    other.execute("DELETE FROM audit_records WHERE seq = 3")
    other.close()
    assert raw_store.append(ENTRIES[:3]) == [1, 2, 3]  # the connection is usable again
    verify_chain(raw_store, TRUSTED)


def test_a_missing_head_row_fails_closed(raw_store: AuditStore, tmp_path: Path) -> None:
    raw_store.append([ENTRIES[0]])
    other = sqlite3.connect(tmp_path / "audit.db", isolation_level=None)
    other.execute("DELETE FROM audit_head")
    other.close()
    with pytest.raises(AuditError, match=r"audit append failed: LookupError: .* 0 head rows"):
        raw_store.append([ENTRIES[0]])
    assert len(rows(tmp_path / "audit.db", "audit_records")) == 1


def test_close_closes_the_raw_connection(raw_store: AuditStore) -> None:
    raw_store.append([ENTRIES[0]])
    appender = raw_store._sqlite
    assert appender is not None and appender._connection is not None
    raw_store.close()
    assert appender._connection is None


def _append_in_child(opened: AuditStore, queue: Any) -> None:
    try:
        queue.put(opened.append([ENTRIES[0]]))
    except Exception as error:  # reported to the parent, which fails the test
        queue.put(repr(error))


def test_a_forked_child_opens_its_own_connection(raw_store: AuditStore) -> None:
    raw_store.append([ENTRIES[0]])  # the parent's connection exists before the fork
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_append_in_child, args=(raw_store, results))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert results.get(timeout=10) == [1]
    assert raw_store.append([ENTRIES[0]]) == [2]  # the parent's connection still works after the child's writes
    verify_chain(raw_store, TRUSTED)


@pytest.fixture
def appender(tmp_path: Path) -> Iterator[SqliteAppender]:
    opened = SqliteAppender(str(tmp_path / "audit.db"), "normal")
    with opened.transaction() as tx:  # creates the file and the connection
        tx.run(sa.text("CREATE TABLE t (x INTEGER)"), {})
    yield opened
    opened.close()


@contextlib.contextmanager
def write_lock_held(appender: SqliteAppender) -> Iterator[sqlite3.Connection]:
    """Another connection (another process, as far as SQLite can tell) holding the database's write lock."""
    other = sqlite3.connect(appender.path, isolation_level=None, check_same_thread=False)  # released from a timer
    other.execute("BEGIN IMMEDIATE")
    try:
        yield other
    finally:
        if other.in_transaction:
            other.execute("ROLLBACK")
        other.close()


def test_a_transaction_that_must_not_wait_refuses_a_held_lock(appender: SqliteAppender) -> None:
    """wait=False: another connection holds the write lock, so BEGIN fails at once with DatabaseBusy and nothing is
    written; the next transaction that does wait still waits for the lock."""
    with write_lock_held(appender) as other:
        started = time.perf_counter()
        with pytest.raises(DatabaseBusy), appender.transaction(wait=False):
            pytest.fail("the transaction began although the lock is held")
        assert time.perf_counter() - started < 0.5
        assert not appender._connect().in_transaction
        # A waiting transaction on the same connection waits for the lock: released 0.3 s later, it commits.
        threading.Timer(0.3, other.execute, ("ROLLBACK",)).start()
        started = time.perf_counter()
        with appender.transaction() as tx:
            tx.run(sa.text("INSERT INTO t VALUES (1)"), {})
        assert time.perf_counter() - started >= 0.25
    with appender.transaction(wait=False) as tx:
        tx.run(sa.text("INSERT INTO t VALUES (2)"), {})
    assert appender._connect().execute("SELECT x FROM t").fetchall() == [(1,), (2,)]


def test_the_busy_timeout_is_set_only_when_the_way_of_appending_changes(appender: SqliteAppender) -> None:
    statements: list[str] = []
    appender._connect().set_trace_callback(statements.append)
    for wait in (False, False, False, True, True, False):
        with appender.transaction(wait=wait) as tx:
            tx.run(sa.text("INSERT INTO t VALUES (1)"), {})
    pragmas = [statement for statement in statements if statement.startswith("PRAGMA busy_timeout")]
    assert pragmas == [
        "PRAGMA busy_timeout = 0",
        f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}",
        "PRAGMA busy_timeout = 0",
    ]
    assert statements.count("BEGIN IMMEDIATE") == statements.count("COMMIT") == 6


def _unchanged(appender: SqliteAppender) -> bool:
    with appender.transaction() as tx:
        tx.run(sa.text("INSERT INTO t VALUES (1)"), {})
        return tx.unchanged


def test_a_transaction_is_unchanged_only_when_no_other_connection_committed_since_its_own_last_commit(
    appender: SqliteAppender,
) -> None:
    """`unchanged` lets the store reuse the head row its previous commit left: it must never be True after another
    connection (of this process or another) committed, and it is True after our own commit."""
    assert appender._committed_version is not None  # the fixture's transaction committed
    assert _unchanged(appender) is True  # our own commits do not count
    other = sqlite3.connect(appender.path, isolation_level=None)
    try:
        other.execute("INSERT INTO t VALUES (2)")  # another connection commits
        assert _unchanged(appender) is False
        assert _unchanged(appender) is True
        other.execute("BEGIN IMMEDIATE")  # a transaction that writes nothing and rolls back is no change
        other.execute("ROLLBACK")
        assert _unchanged(appender) is True
    finally:
        other.close()


def test_a_failed_transaction_forgets_what_the_last_commit_left(appender: SqliteAppender) -> None:
    assert _unchanged(appender) is True
    with pytest.raises(RuntimeError), appender.transaction() as tx:
        tx.run(sa.text("INSERT INTO t VALUES (3)"), {})
        raise RuntimeError("the caller failed")
    assert _unchanged(appender) is False  # rolled back: the next one reads again
    assert _unchanged(appender) is True


def test_another_process_commit_is_a_change(appender: SqliteAppender) -> None:
    assert _unchanged(appender) is True
    code = (
        f"import sqlite3; sqlite3.connect({appender.path!r}, isolation_level=None).execute('INSERT INTO t VALUES (9)')"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert _unchanged(appender) is False


def test_stores_sharing_a_database_read_each_others_head(tmp_path: Path) -> None:
    """Two stores on one file (two replicas, as far as SQLite can tell): each reuses the head its own last commit
    left only while the other has not appended, so their interleaved appends form one chain."""
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    first, second = open_store(url), open_store(url)
    try:
        reads: list[str] = []
        for store in (first, second):
            assert store._sqlite is not None
            store._sqlite._connect().set_trace_callback(
                lambda statement: reads.append(statement) if statement.startswith("SELECT audit_head") else None
            )
        seqs = [store.append([ENTRIES[0]])[0] for store in (first, first, first, second, first, second, second)]
        assert seqs == list(range(7))
        # Read: each store's first append, and the two later appends that follow one of the other store; the rest
        # (first's 2nd and 3rd, second's last) reused their own commit's head.
        assert len(reads) == 2 + 2
        verify_chain(first, TRUSTED)
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("code", [sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_BUSY | (2 << 8)])
def test_a_busy_database_after_begin_is_busy_for_a_transaction_that_must_not_wait(
    appender: SqliteAppender, code: int
) -> None:
    """Should a statement after BEGIN find the database busy (the write lock is ours, so in WAL mode none should),
    a transaction that must not wait rolls back and says DatabaseBusy (its caller then takes the waiting path); one
    that waits fails with the driver's error. Either way nothing is written."""
    busy = sqlite3.OperationalError("database is locked")
    busy.sqlite_errorcode = code  # type: ignore[attr-defined]
    for wait, expected in ((False, DatabaseBusy), (True, sqlite3.OperationalError)):
        with pytest.raises(expected), appender.transaction(wait=wait) as tx:
            tx.run(sa.text("INSERT INTO t VALUES (1)"), {})
            raise busy
        assert appender._connect().execute("SELECT count(*) FROM t").fetchone() == (0,)
    other = sqlite3.OperationalError("disk I/O error")
    other.sqlite_errorcode = sqlite3.SQLITE_IOERR  # type: ignore[attr-defined]
    with pytest.raises(sqlite3.OperationalError), appender.transaction(wait=False):
        raise other  # not a busy database: the error itself, never a retry


INSERT_T = sa.text("INSERT INTO t VALUES (:x)")


def insert(appender: SqliteAppender, x: int, *, wait: bool = True) -> int:
    """One row through insert_rows, the way the event loop stages a decision."""
    return appender.insert_rows("t", [{"x": x}], wait=wait)[0]


def test_an_insert_of_its_own_is_one_statement_committed_by_itself(appender: SqliteAppender) -> None:
    """`insert_rows`: no BEGIN, PRAGMA data_version or COMMIT around it (SQLite's autocommit), and the row is committed
    when it returns: another connection reads it at once."""
    statements: list[str] = []
    appender._connect().set_trace_callback(statements.append)
    first = insert(appender, 7, wait=False)
    second = insert(appender, 8, wait=False)
    assert second == first + 1  # the rowids
    assert statements == ["PRAGMA busy_timeout = 0", "INSERT INTO t (x) VALUES (7)", "INSERT INTO t (x) VALUES (8)"]
    assert not appender._connect().in_transaction
    other = sqlite3.connect(appender.path)
    try:
        assert other.execute("SELECT x FROM t ORDER BY rowid").fetchall() == [(7,), (8,)]
    finally:
        other.close()


def test_an_insert_of_its_own_leaves_unchanged_as_it_was(appender: SqliteAppender) -> None:
    """Our own insert is no change for the next transaction (the head row it left is still good); another
    connection's commit between them still is."""
    assert _unchanged(appender) is True
    insert(appender, 1)
    assert _unchanged(appender) is True
    insert(appender, 2)
    other = sqlite3.connect(appender.path, isolation_level=None)
    try:
        other.execute("INSERT INTO t VALUES (3)")
    finally:
        other.close()
    insert(appender, 4)
    assert _unchanged(appender) is False


def test_an_insert_that_must_not_wait_refuses_a_held_lock(appender: SqliteAppender) -> None:
    with write_lock_held(appender) as other:
        started = time.perf_counter()
        with pytest.raises(DatabaseBusy):
            insert(appender, 1, wait=False)
        assert time.perf_counter() - started < 0.5
        threading.Timer(0.3, other.execute, ("ROLLBACK",)).start()
        started = time.perf_counter()
        insert(appender, 2)  # waiting: lands once the lock is released
        assert time.perf_counter() - started >= 0.25
    assert appender._connect().execute("SELECT x FROM t").fetchall() == [(2,)]


def test_an_insert_inside_an_open_transaction_is_refused(appender: SqliteAppender) -> None:
    """It would join the transaction and commit nothing: never a row reported durable that is not."""
    with pytest.raises(RuntimeError), appender.transaction() as tx:
        tx.run(INSERT_T, {"x": 1})
        with pytest.raises(sqlite3.ProgrammingError, match="inside an open transaction"):
            insert(appender, 2)
        raise RuntimeError("roll back")
    assert appender._connect().execute("SELECT count(*) FROM t").fetchone() == (0,)


def test_a_failed_insert_writes_nothing_and_the_connection_goes_on(appender: SqliteAppender) -> None:
    with pytest.raises(sqlite3.OperationalError):
        appender.insert_rows("missing", [{"x": 1}])
    assert not appender._connect().in_transaction
    insert(appender, 5)
    assert appender._connect().execute("SELECT x FROM t").fetchall() == [(5,)]


def test_rows_inserted_together_are_one_statement_and_come_back_in_order(appender: SqliteAppender) -> None:
    statements: list[str] = []
    appender._connect().set_trace_callback(statements.append)
    ids = appender.insert_rows("t", [{"x": n} for n in (10, 11, 12)], wait=False)
    assert [s for s in statements if not s.startswith("PRAGMA")] == ["INSERT INTO t (x) VALUES (10), (11), (12)"]
    rows = dict(appender._connect().execute("SELECT rowid, x FROM t").fetchall())
    assert rows == dict(zip(ids, (10, 11, 12), strict=True))
    assert appender.insert_rows("t", []) == []


def test_rows_past_the_bound_parameter_limit_go_in_several_statements(appender: SqliteAppender) -> None:
    """An SQLite built with a low limit of bound parameters (999 before 3.32): as many statements as it takes."""
    connection = appender._connect()
    connection.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 400)
    statements: list[str] = []
    connection.set_trace_callback(statements.append)
    ids = appender.insert_rows("t", [{"x": n} for n in range(1000)])  # past the 999 every build takes
    assert len([s for s in statements if s.startswith("INSERT")]) == 3  # 400 + 400 + 200
    assert dict(connection.execute("SELECT rowid, x FROM t").fetchall()) == dict(zip(ids, range(1000), strict=True))


def test_rows_inserted_together_must_have_the_same_plain_columns(appender: SqliteAppender) -> None:
    with pytest.raises(sqlite3.ProgrammingError, match="same columns"):
        appender.insert_rows("t", [{"x": 1}, {"y": 2}])
    with pytest.raises(sqlite3.ProgrammingError, match="not a table or column name"):
        appender.insert_rows("t", [{"x) VALUES (1); DROP TABLE t; --": 1}])
    assert appender._connect().execute("SELECT count(*) FROM t").fetchone() == (0,)
