"""Audit log storage (SQLAlchemy Core): the tables, the serialized chain append, checkpoints, key rotation and reading
(verifying a log: audit/verify.py).

Appends from many threads and processes form one contiguous chain: each batch runs in one transaction that first
locks the origin's `audit_head` row (`BEGIN IMMEDIATE` on SQLite, `SELECT ... FOR UPDATE` on PostgreSQL). The primary
key (origin, seq) and the unique (origin, prev_hash) make the database refuse a fork if that lock is ever bypassed.

The head row also holds the Merkle tree's right edge (`frontier`), so every transaction that appends can compute the new
root in O(log n) and write a signed checkpoint in the same transaction: a checkpoint never covers an uncommitted record.

Tables are made by the Alembic migrations under `audit/migrations` (`migrate.upgrade`), run when a store opens.
"""

from __future__ import annotations

import _thread
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import re
import secrets
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    bindparam,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError
from sqlalchemy.sql import Executable, Select

from aegis_proxy.audit import migrate
from aegis_proxy.audit.checkpoint import Checkpoint, parse_checkpoint, sign_checkpoint, verify_checkpoint
from aegis_proxy.audit.errors import AuditError, VerificationError
from aegis_proxy.audit.keys import TrustedKey, key_id, load_key, public_key_hex, rotation_body
from aegis_proxy.audit.merkle import HASH_SIZE, MerkleFrontier
from aegis_proxy.audit.record import (
    ZERO_HASH,
    FindingSummary,
    RecordBody,
    RecordSigner,
    RecordType,
    SignedRecord,
    canonical_arguments,
    format_time,
    schema_problem,
)
from aegis_proxy.audit.sqlite_append import DatabaseBusy, SqliteAppender, database_path
from aegis_proxy.strict_json import loads as strict_loads

_EMPTY_HEAD_SEQ = -1  # the head row of a log with no records yet
ZERO_LEAF = bytes(32)
DEFAULT_CHECKPOINT_EVERY = 1000  # records appended since the last checkpoint
DEFAULT_CHECKPOINT_INTERVAL = 10.0  # seconds since the last checkpoint (checkpoint_if_due)
_ORIGIN = re.compile(r"[\x21-\x2a\x2c-\x7e]{1,256}")  # a record origin (printable ASCII) that is also a note key name

metadata = MetaData()

audit_records = Table(
    "audit_records",
    metadata,
    Column("origin", Text, primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("body", LargeBinary, nullable=False),  # the source of truth; everything below is a copy or derived
    Column("leaf_hash", LargeBinary, nullable=False),
    Column("prev_hash", LargeBinary, nullable=False),
    Column("key_id", String(32), nullable=False),
    Column("signature", LargeBinary, nullable=False),
    # Indexed copies of body fields for querying; the verifier checks them against the body.
    Column("time", String(27), nullable=False),
    Column("type", String(16), nullable=False),
    Column("tool", Text),
    Column("decision", String(8)),
    Column("agent_id", Text),
    Column("session_id", Text),
    UniqueConstraint("origin", "prev_hash", name="uq_audit_records_prev"),  # two records with one parent = a fork
    Index("ix_audit_records_time", "origin", "time"),
    Index("ix_audit_records_tool", "origin", "tool"),
    Index("ix_audit_records_agent", "origin", "agent_id"),
    Index("ix_audit_records_session", "origin", "session_id"),
)

audit_head = Table(
    "audit_head",
    metadata,
    Column("origin", Text, primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("leaf_hash", LargeBinary, nullable=False),
    # MerkleFrontier.state() hashes of the tree over records 0..seq, concatenated (32 bytes each, largest first).
    Column("frontier", LargeBinary, nullable=False),
    # Space-separated ids of keys that a key_rotation record retired: a process still holding one must stop signing.
    Column("retired_keys", Text, nullable=False),
)

# Full arguments live outside the chain (only args_commit is chained), so retention can delete them.
audit_arguments = Table(
    "audit_arguments",
    metadata,
    Column("origin", Text, primary_key=True),
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("nonce", LargeBinary, nullable=False),
    Column("arguments", LargeBinary, nullable=False),  # RFC 8785 bytes, already redacted by the caller
)

# Signed tree heads, written in the transaction that makes their last record durable (audit/FORMAT.md section 8).
audit_checkpoints = Table(
    "audit_checkpoints",
    metadata,
    Column("origin", Text, primary_key=True),
    Column("size", BigInteger, primary_key=True, autoincrement=False),
    Column("root_hash", LargeBinary, nullable=False),  # copy of the note's root; the note is the source of truth
    Column("note", Text, nullable=False),  # C2SP signed note (checkpoint.sign_checkpoint)
    Column("time", String(27), nullable=False),  # RFC 3339 UTC, when it was written
)

# Decisions made durable before they are chained (audit/FORMAT.md section 9): `stage` writes a row, the next append
# (the writer thread's) turns the rows into records and deletes them in its transaction. Empty while the writer keeps
# up.
audit_staged = Table(
    "audit_staged",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True),
    Column("origin", Text, nullable=False),
    Column("time", String(27), nullable=False),  # the decision's time: the record's `time`
    Column("nonce", LargeBinary, nullable=False),  # the record's argument nonce
    Column("arguments", LargeBinary),  # RFC 8785 bytes, as audit_arguments will hold them; NULL: none
    Column("entry", LargeBinary, nullable=False),  # the rest of the AppendEntry, as JSON (staged_entry_json)
)


class AppendWouldWait(Exception):
    """An append asked not to wait (`wait=False`) found the log busy: nothing was written; append again waiting."""


class EntryRefused(AuditError):
    """The entry at `index` of an append can never become a record (the schema refuses a field, or its arguments
    have no canonical form), whatever the database holds: nothing of the append was written, and the others may be
    appended without it."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message, hint="the call is denied; fix the field's source")
        self.index = index


def _refusal(index: int, error: Exception) -> EntryRefused:
    if isinstance(error, ValidationError):
        return EntryRefused(index, f"audit entry refused: {schema_problem(error, 'entry')}"[:300])
    reason = error.message if isinstance(error, AuditError) else str(error)
    return EntryRefused(index, f"audit entry refused: {reason}"[:300])


def _staging_failed(error: Exception) -> AuditError:
    return AuditError(f"audit staging failed: {type(error).__name__}: {str(error)[:300]}", hint="the call is denied")


def _commitment(nonce: bytes, stored_arguments: bytes | None) -> str | None:
    """record.args_commitment(nonce, arguments), from the canonical bytes that are stored anyway; None: no arguments."""
    return None if stored_arguments is None else hashlib.sha256(nonce + stored_arguments).hexdigest()


@dataclasses.dataclass(frozen=True, slots=True)
class _Staged:
    """What a staged row fixes of its record: the decision's time, the argument nonce and the arguments' bytes."""

    id: int
    time: str
    nonce: bytes
    arguments: bytes | None


@dataclasses.dataclass(frozen=True)
class AppendEntry:
    """What the caller knows about one event; the store adds origin, seq, prev, time, replica and key id."""

    type: RecordType
    decision: str | None = None
    tool: str | None = None
    arguments: Mapping[str, Any] | None = None  # committed in the body, stored in audit_arguments
    request_id: str | None = None
    session_id: str | None = None
    agent_id: str | None = None
    rules: tuple[str, ...] = ()
    policy_digest: str | None = None
    findings: tuple[FindingSummary, ...] = ()
    scores: Mapping[str, int] = dataclasses.field(default_factory=dict)
    approver: str | None = None
    ref_seq: int | None = None
    latency_us: int = 0

    def body(
        self, *, origin: str, seq: int, prev: str, time: str, replica: str, args_commit: str | None, key_id: str
    ) -> RecordBody:
        """The record body of this entry at a place in a log (pydantic ValidationError if the schema refuses it)."""
        return RecordBody(
            origin=origin,
            seq=seq,
            prev=prev,
            type=self.type,
            time=time,
            replica=replica,
            request_id=self.request_id,
            session_id=self.session_id,
            agent_id=self.agent_id,
            tool=self.tool,
            args_commit=args_commit,
            decision=self.decision,
            rules=tuple(self.rules),
            policy_digest=self.policy_digest,
            findings=tuple(self.findings),
            scores=dict(self.scores),
            approver=self.approver,
            ref_seq=self.ref_seq,
            latency_us=self.latency_us,
            key_id=key_id,
        )


_ENTRY_FIELDS = (
    "type", "decision", "tool", "request_id", "session_id", "agent_id", "rules", "policy_digest", "scores",
    "approver", "ref_seq", "latency_us",
)  # fmt: skip


def staged_entry_json(entry: AppendEntry) -> bytes:
    """An entry without its arguments (staged apart, as canonical bytes), as the JSON of a staged row. Strict UTF-8:
    a lone surrogate in any field, which no record body can hold, raises UnicodeEncodeError here."""
    fields: dict[str, Any] = {name: getattr(entry, name) for name in _ENTRY_FIELDS}
    fields["scores"] = dict(entry.scores)
    fields["findings"] = [finding.model_dump(mode="json") for finding in entry.findings]
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def staged_entry(entry_json: bytes, arguments: bytes | None) -> AppendEntry:
    """The entry of a staged row (ValueError, AuditError or pydantic's ValidationError if it is not one)."""
    fields = strict_loads(bytes(entry_json).decode("utf-8"))
    if not isinstance(fields, dict) or set(fields) != {*_ENTRY_FIELDS, "findings"}:
        raise ValueError("the staged entry does not have the fields of an entry")
    if not isinstance(fields["rules"], list) or not isinstance(fields["findings"], list):
        raise ValueError("the staged entry's rules and findings are not lists")
    fields["rules"] = tuple(fields["rules"])
    fields["findings"] = tuple(FindingSummary.model_validate(finding) for finding in fields["findings"])
    if arguments is not None:
        fields["arguments"] = strict_loads(bytes(arguments).decode("utf-8"))
    return AppendEntry(**fields)


@dataclasses.dataclass(frozen=True)
class StoredRecord:
    """One row of audit_records: the signed record plus the column copies the verifier compares with the body."""

    origin: str
    seq: int
    record: SignedRecord
    prev_hash: bytes
    columns: Mapping[str, str | None]  # time, type, tool, decision, agent_id, session_id


def checkpoint_key_name(origin: str, signer_key_id: str) -> str:
    """The signed-note key name a store signs its checkpoints with: `<origin>/<record key id>`."""
    return f"{origin}/{signer_key_id}"


@dataclasses.dataclass(frozen=True)
class StoredCheckpoint:
    """One row of audit_checkpoints, as read (unverified until `verify`)."""

    origin: str
    size: int
    root_hash: bytes
    note: str
    time: str

    def verify(self, trusted_keys: Mapping[str, TrustedKey]) -> Checkpoint:
        """Check the note's signature and that the row's columns are the note's; return the signed checkpoint.

        Accepted signers: `checkpoint_key_name(origin, key id)` of a trusted key whose seq range covers the
        checkpoint's last record (size - 1), i.e. the key that was signing records when the checkpoint was made.
        """
        checkpoint = verify_note(self.note, self.origin, trusted_keys)
        if checkpoint.size != self.size or checkpoint.root != self.root_hash:
            raise VerificationError(
                f"checkpoint row {self.size}: size or root_hash column differs from the signed note", index=self.size
            )
        return checkpoint


def verify_note(note: str, origin: str, trusted_keys: Mapping[str, TrustedKey]) -> Checkpoint:
    """Verify a checkpoint note of log `origin` against the trusted record keys (see StoredCheckpoint.verify)."""
    checkpoint, _ = parse_checkpoint(note)
    if checkpoint.origin != origin:
        raise VerificationError(f"checkpoint is of log {checkpoint.origin[:80]!r}, not {origin[:80]!r}")
    last = max(checkpoint.size - 1, 0)
    signers = {
        checkpoint_key_name(origin, trusted.key_id): trusted.public_key
        for trusted in trusted_keys.values()
        if trusted.covers(last)
    }
    return verify_checkpoint(note, signers)


@dataclasses.dataclass(frozen=True)
class KeyRotation:
    """What `AuditStore.rotate` wrote: the key_rotation record's seq and both keys."""

    seq: int
    old_key_id: str
    new_key_id: str
    new_public_key: str  # raw Ed25519, hex

    def trust_update(self) -> str:
        """Instructions and the TOML entry verifiers add to their trusted-keys file (audit/FORMAT.md section 5)."""
        return (
            f'# on the entry with key_id = "{self.old_key_id}" set: last_seq = {self.seq}\n'
            f'[[keys]]\nkey_id = "{self.new_key_id}"\npublic_key = "{self.new_public_key}"\n'
            f"first_seq = {self.seq + 1}\n"
        )


READ_ONLY = "aegis_audit_read_only"  # execution option: this connection only reads
_INSERT_RECORD = insert(audit_records)
_INSERT_ARGUMENTS = insert(audit_arguments)
# Built once: a statement built per call costs its cache key and compiled-cache lookup on every append (~0.5 ms).
_LOCK_HEAD = (
    select(audit_head.c.seq, audit_head.c.leaf_hash, audit_head.c.frontier, audit_head.c.retired_keys)
    .where(audit_head.c.origin == bindparam("head_origin"))
    .with_for_update()
)
_ADVANCE_HEAD = (
    update(audit_head)
    .where(audit_head.c.origin == bindparam("head_origin"))
    .values(
        seq=bindparam("new_seq"),
        leaf_hash=bindparam("new_leaf"),
        frontier=bindparam("new_frontier"),
        retired_keys=bindparam("new_retired"),
    )
)
_NEWEST_CHECKPOINT = select(func.max(audit_checkpoints.c.size)).where(
    audit_checkpoints.c.origin == bindparam("head_origin")
)
_INSERT_CHECKPOINT = insert(audit_checkpoints)
_STAGED = (
    select(audit_staged.c.id, audit_staged.c.time, audit_staged.c.nonce, audit_staged.c.arguments, audit_staged.c.entry)
    .where(audit_staged.c.origin == bindparam("staged_origin"))
    .order_by(audit_staged.c.id)
)
_UNSTAGE = delete(audit_staged).where(
    audit_staged.c.origin == bindparam("staged_origin"), audit_staged.c.id <= bindparam("last_id")
)
INDEXED_COLUMNS = ("time", "type", "tool", "decision", "agent_id", "session_id")


class WriteTransaction(Protocol):
    """An open write transaction as the append, checkpoint and rotation code uses it: the statements above (built
    once) with their parameters. SQLAlchemy's connection (`_CoreTransaction`) or, for appends on SQLite, the sqlite3
    driver itself (`sqlite_append.SqliteTransaction`). `unchanged`: no other connection has committed since this
    connection's previous commit (only the sqlite3 driver's transactions know; SQLAlchemy's say False)."""

    unchanged: bool

    def rows(self, statement: Executable, parameters: Mapping[str, Any]) -> Sequence[Sequence[Any]]: ...

    def run(self, statement: Executable, parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> None: ...


@dataclasses.dataclass(frozen=True)
class _CoreTransaction:
    """WriteTransaction over a SQLAlchemy connection inside `engine.begin()`."""

    conn: Connection
    unchanged: bool = False  # never known here: the head row is always read

    def rows(self, statement: Executable, parameters: Mapping[str, Any]) -> Sequence[Sequence[Any]]:
        return self.conn.execute(statement, parameters).all()

    def run(self, statement: Executable, parameters: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> None:
        self.conn.execute(statement, parameters)  # a list of rows: one executemany


SYNC_MODES = ("full", "normal")
SYNC_HINT = (
    'audit.sync = "full" (default: every committed record survives power loss; one fsync per commit) or "normal" '
    "(survives a crash of the proxy, not of the machine: no fsync per commit)"
)


def configure_sqlite(engine: Engine, sync: str = "full") -> None:
    """WAL, synchronous FULL (or NORMAL), and `BEGIN IMMEDIATE` for every transaction not marked read-only."""
    synchronous = "FULL" if sync == "full" else "NORMAL"

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from pysqlite so the "begin" hook below decides how transactions start.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed record survives power loss. NORMAL under WAL: it survives a crash of this process (the
        # WAL is in the OS's cache), and the database is never corrupted; fsync happens at WAL checkpoints only.
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # IMMEDIATE takes the write lock up front: appends queue here instead of deadlocking on lock upgrade.
        # Readers (marked by READ_ONLY) begin deferred so that, under WAL, they never block a writer.
        read_only = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


_sqlite_hooks = configure_sqlite  # the earlier name


def _postgres_async_commit(engine: Engine) -> None:
    """audit.sync = "normal" on PostgreSQL: commit without waiting for the WAL flush. A crash of the database
    server may lose the last few hundred milliseconds of commits, never consistency (the chain stays contiguous)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("SET synchronous_commit TO off")
        cursor.close()
        dbapi_connection.commit()


@dataclasses.dataclass(frozen=True)
class _Head:
    """The locked head row, decoded."""

    seq: int
    leaf: bytes
    frontier: MerkleFrontier
    retired: frozenset[str]


def _sqlite_database(url: str) -> str | None:
    try:
        return make_url(url).database
    except ArgumentError as error:
        raise AuditError(f"{url[:80]!r} is not a database URL", hint="e.g. sqlite:///var/aegis/audit.db") from error


def _parse_time(text: str) -> dt.datetime | None:
    try:
        return dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC)
    except (TypeError, ValueError):
        return None


class AuditStore:
    """The audit log of one origin in one database. Thread-safe; share one instance per process.

    `checkpoint_every` (N) and `checkpoint_interval` (T seconds) set the checkpoint cadence: an append transaction
    writes a checkpoint once N records were appended since the last one, and `checkpoint_if_due()` (call it on a timer)
    writes one when T seconds passed and the log grew.
    """

    def __init__(
        self,
        url: str,
        *,
        origin: str,
        signer_key: Ed25519PrivateKey,
        replica: str,
        checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
        checkpoint_interval: float = DEFAULT_CHECKPOINT_INTERVAL,
        sync: str = "full",
    ) -> None:
        if sync not in SYNC_MODES:
            raise AuditError(f"audit sync mode {sync!r} is not one of {', '.join(SYNC_MODES)}", hint=SYNC_HINT)
        if not isinstance(origin, str) or not _ORIGIN.fullmatch(origin):
            raise AuditError(
                f"log origin {str(origin)[:80]!r} must be 1..256 printable ASCII characters without spaces or '+'",
                hint="use a name like proxy.example/prod",
            )
        if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 1:
            raise AuditError(f"checkpoint_every {checkpoint_every!r} must be an integer >= 1", hint="e.g. 1000")
        if not checkpoint_interval > 0:
            raise AuditError(f"checkpoint_interval {checkpoint_interval!r} must be > 0 seconds", hint="e.g. 10")
        if url.startswith("sqlite") and _sqlite_database(url) in (None, "", ":memory:"):
            raise AuditError(
                "an in-memory SQLite database cannot hold an audit log (not durable, not shared)",
                hint="give a file, e.g. sqlite:///var/aegis/audit.db",
            )
        self.origin = origin
        self.replica = replica
        self.checkpoint_every = checkpoint_every
        self.checkpoint_interval = float(checkpoint_interval)
        self._signer = RecordSigner.of(signer_key)
        # Appends read the signer under this lock after locking the head row; rotate() takes it before its commit
        # releases the head row and swaps the key before letting go, so no later append signs with the retired key.
        self._signer_lock = threading.Lock()
        # SQLite makes a waiting writer poll with sleeps of up to 100 ms (the busy handler); threads of this process
        # queue here instead and get the database lock the moment the previous transaction ends. PostgreSQL's row
        # lock wakes waiters itself. Always taken before the head row, so it cannot deadlock with it.
        self._write_lock: contextlib.AbstractContextManager[Any] = (
            threading.Lock() if url.startswith("sqlite") else contextlib.nullcontext()
        )
        self._checkpointed_size = 0  # lower bound of the newest checkpoint's size (others may have written newer)
        # The head row as this process's last append on the sqlite3 connection committed it: the next append reuses
        # it instead of reading and decoding the row when no other connection has committed since (the transaction
        # is `unchanged`). Taken out while an append runs and put back only after its commit, under the write lock.
        self._head_cache: _Head | None = None
        self._sqlite: SqliteAppender | None = None  # appends on SQLite: the raw driver (sqlite_append.py)
        migrate.upgrade(url)
        try:
            if url.startswith("sqlite"):
                self.engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})
                configure_sqlite(self.engine, sync)
                path = database_path(url)
                self._sqlite = SqliteAppender(path, sync) if path is not None else None
            else:
                self.engine = create_engine(url, pool_pre_ping=True)
                if sync == "normal":
                    _postgres_async_commit(self.engine)
            self.sync = sync
            self._ensure_head()
        except AuditError:
            raise
        except Exception as error:
            raise AuditError(f"cannot open audit database: {error}", hint="check the --db URL") from error

    @property
    def key_id(self) -> str:
        """Id of the key that signs this store's next record."""
        return self._signer.key_id

    def _ensure_head(self) -> None:
        try:
            with self.engine.begin() as conn:
                row = conn.execute(select(audit_head.c.retired_keys).where(audit_head.c.origin == self.origin)).first()
                if row is None:
                    conn.execute(
                        insert(audit_head).values(
                            origin=self.origin, seq=_EMPTY_HEAD_SEQ, leaf_hash=ZERO_LEAF, frontier=b"", retired_keys=""
                        )
                    )
                elif self.key_id in str(row.retired_keys).split():
                    raise _retired(self.key_id)
        except IntegrityError:
            pass  # another process created it first

    def close(self) -> None:
        if self._sqlite is not None:
            with self._write_lock:  # not under an append of another thread
                self._sqlite.close()
        self.engine.dispose()

    # ------------------------------------------------------------------------------------------------------------------
    # writing

    @contextlib.contextmanager
    def _append_transaction(self, wait: bool = True) -> Iterator[WriteTransaction]:
        """The write transaction of an append: the raw sqlite3 one on SQLite, SQLAlchemy's elsewhere."""
        if self._sqlite is not None:
            with self._sqlite.transaction(wait=wait) as raw:
                yield raw
        else:
            with self.engine.begin() as conn:
                yield _CoreTransaction(conn)

    def _lock_head(self, tx: WriteTransaction, cached: _Head | None = None) -> _Head:
        """The head row, read under the transaction's lock; or `cached`, the head this connection's previous commit
        left, when no other connection has committed since."""
        if cached is not None and tx.unchanged:
            return cached
        rows = tx.rows(_LOCK_HEAD, {"head_origin": self.origin})
        if len(rows) != 1:  # deleted (or, impossibly, duplicated): the chain cannot continue
            raise LookupError(f"log {self.origin!r} has {len(rows)} head rows, not 1; run `aegis audit verify`")
        seq, leaf, frontier_column, retired = rows[0]
        raw = column_bytes(frontier_column)
        if len(raw) % HASH_SIZE:
            raise AuditError(
                f"head row of {self.origin!r}: frontier is {len(raw)} bytes, not a multiple of {HASH_SIZE}",
                hint="the head row was altered; run `aegis audit verify`",
            )
        hashes = [raw[i : i + HASH_SIZE] for i in range(0, len(raw), HASH_SIZE)]
        frontier = MerkleFrontier.restore(seq + 1, hashes)  # AuditError if it cannot be this size's edge
        return _Head(seq, column_bytes(leaf), frontier, frozenset(str(retired).split()))

    def _signer_for(self, head: _Head) -> RecordSigner:
        with self._signer_lock:
            signer = self._signer
        if signer.key_id in head.retired:
            raise _retired(signer.key_id)
        return signer

    def _advance_head(
        self, tx: WriteTransaction, seq: int, leaf: bytes, frontier: MerkleFrontier, retired: str
    ) -> None:
        tx.run(
            _ADVANCE_HEAD,
            {
                "head_origin": self.origin,
                "new_seq": seq,
                "new_leaf": leaf,
                "new_frontier": b"".join(frontier.state()[1]),
                "new_retired": retired,
            },
        )

    @property
    def appends_without_waiting(self) -> bool:
        """Whether `append(..., wait=False)` is available: SQLite through the raw driver, where an append can refuse
        to wait for a lock. Its commit still syncs as `sync` says (with `full`, an fsync)."""
        return self._sqlite is not None

    @property
    def quick_appends(self) -> bool:
        """Whether an append that does not wait is also short and bounded: `appends_without_waiting` with
        `sync = "normal"`, whose commit makes no fsync."""
        return self.appends_without_waiting and self.sync == "normal"

    def append(self, entries: Sequence[AppendEntry], *, wait: bool = True) -> list[int]:
        """Append a batch in one transaction (group commit) and return the seqs. Raises AuditError on any failure,
        in which case nothing of the batch was written and the caller must deny the tool call (fail closed).

        `wait=False` (only when `appends_without_waiting`): raise AppendWouldWait, having written nothing, instead of
        waiting for another thread's transaction or another process's database lock."""
        return self._append(entries, wait=wait, chain_staged=False)[1]

    def append_staged(self, entries: Sequence[AppendEntry] = ()) -> tuple[int, list[int]]:
        """`append`, with the staged decisions of this origin first: each becomes its record (with the time and nonce
        it was staged with) and its row is deleted, in the same transaction as the batch. Returns how many were
        chained and the batch's seqs. A staged row that cannot become a record fails the whole transaction (an
        AuditError naming it, not EntryRefused): nothing more is appended until an operator looks at it."""
        return self._append(entries, wait=True, chain_staged=True)

    def _append(self, entries: Sequence[AppendEntry], *, wait: bool, chain_staged: bool) -> tuple[int, list[int]]:
        try:
            checkpointed = None
            with self._locked(wait):
                cached, self._head_cache = self._head_cache, None  # any failure below leaves no cached head
                with self._append_transaction(wait) as tx:
                    head = self._lock_head(tx, cached)
                    signer = self._signer_for(head)
                    seq, prev, frontier = head.seq, head.leaf, head.frontier
                    seqs: list[int] = []
                    records: list[dict[str, Any]] = []
                    arguments: list[dict[str, Any]] = []
                    chained = 0
                    if chain_staged:
                        last_id = None
                        for row in tx.rows(_STAGED, {"staged_origin": self.origin}):
                            staged, entry = self._read_staged(row)
                            seq += 1
                            prev = self._build(signer, entry, seq, prev, records, arguments, staged)
                            frontier.append(prev)
                            last_id, chained = staged.id, chained + 1
                        if last_id is not None:
                            tx.run(_UNSTAGE, {"staged_origin": self.origin, "last_id": last_id})
                    for index, entry in enumerate(entries):
                        seq += 1
                        try:
                            prev = self._build(signer, entry, seq, prev, records, arguments)
                        except (AuditError, ValueError) as error:  # ValueError: pydantic's ValidationError
                            raise _refusal(index, error) from error
                        frontier.append(prev)
                        seqs.append(seq)
                    if records:
                        # One executemany per table: per-row INSERTs cost more than signing the records.
                        tx.run(_INSERT_RECORD, records)
                        if arguments:
                            tx.run(_INSERT_ARGUMENTS, arguments)
                        self._advance_head(tx, seq, prev, frontier, " ".join(sorted(head.retired)))
                        checkpointed = self._checkpoint_by_count(tx, frontier, signer)
                if self._sqlite is not None:  # committed: what the head row now holds
                    self._head_cache = _Head(seq, prev, frontier, head.retired)
            if checkpointed is not None:
                self._checkpointed_size = max(self._checkpointed_size, checkpointed.size)
            return chained, seqs
        except (AuditError, AppendWouldWait):
            raise
        except DatabaseBusy as busy:
            raise AppendWouldWait(str(busy)) from busy
        except Exception as error:  # database, validation, anything: the record was not written
            raise AuditError(
                f"audit append failed: {type(error).__name__}: {str(error)[:300]}", hint="the call is denied"
            ) from error

    def _read_staged(self, row: Sequence[Any]) -> tuple[_Staged, AppendEntry]:
        staged_id, time, nonce, arguments, entry_json = row
        try:
            nonce, arguments = column_bytes(nonce), None if arguments is None else column_bytes(arguments)
            if len(nonce) < 16:
                raise ValueError("its nonce is shorter than 16 bytes")
            entry = staged_entry(column_bytes(entry_json), arguments)
            return _Staged(int(staged_id), str(time), nonce, arguments), entry
        except Exception as error:
            raise AuditError(
                f"staged decision {staged_id} of {self.origin!r} cannot become a record: {type(error).__name__}: "
                f"{str(error)[:200]}",
                hint="nothing is appended until it is resolved: see audit/FORMAT.md section 9 (a row changed outside "
                "aegis, or a bug)",
            ) from error

    def stage(self, entry: AppendEntry) -> int:
        """Make a decision durable without chaining it: one row of audit_staged (its entry, time, nonce and canonical
        arguments: `staging_row`), one INSERT committed by itself, synced as `sync` says. The next `append_staged`
        turns it into its record. Returns the row's id.

        Only where appends need not wait (`appends_without_waiting`): a lock held by another thread or process raises
        AppendWouldWait, having written nothing. An entry that could never become a record raises EntryRefused
        (index 0) before anything is written."""
        sqlite = self._stager()
        row = self.staging_row(entry)
        try:
            with self._locked(False):
                # One insert, its own transaction: it reads and changes nothing of the chain, so the cached head
                # stays as good as it was (the next append still checks that no other connection committed).
                return sqlite.insert_rows(audit_staged.name, [row], wait=False)[0]
        except AppendWouldWait:
            raise
        except DatabaseBusy as busy:
            raise AppendWouldWait(str(busy)) from busy
        except Exception as error:
            raise _staging_failed(error) from error

    def stage_rows(self, rows: Sequence[Mapping[str, Any]]) -> list[int]:
        """Stage decisions whose rows `staging_row` made, all in one INSERT committed by itself (one fsync with
        `full`), waiting for the write lock as appends do: the audit writer thread's way. Their ids, in order."""
        sqlite = self._stager()
        try:
            with self._locked(True):
                return sqlite.insert_rows(audit_staged.name, rows)  # as in `stage`, the cached head stays good
        except Exception as error:
            raise _staging_failed(error) from error

    def staging_row(self, entry: AppendEntry) -> dict[str, Any]:
        """The audit_staged row of a decision, its time and nonce fixed now. Raises EntryRefused (index 0) for an
        entry that could never become a record: the checks `append` makes are made here, on a body built with this
        log's fields, so that chaining it later cannot fail for it. Only where the store stages (AppendWouldWait)."""
        self._stager()
        if entry.type != "decision":  # records that point at others (approval, timeout) are appended, not staged
            raise AuditError(f"only decisions are staged, not {entry.type!r} records", hint="append it instead")
        nonce = secrets.token_bytes(32)
        time = format_time(dt.datetime.now(dt.UTC))
        try:
            stored_arguments = None if entry.arguments is None else canonical_arguments(entry.arguments)
            commit = _commitment(nonce, stored_arguments)
            # The body of any seq: seq, prev and key id are the only fields chaining sets, and the schema takes any
            # value of theirs (decision records name no earlier seq).
            entry.body(
                origin=self.origin,
                seq=1,
                prev=ZERO_HASH,
                time=time,
                replica=self.replica,
                args_commit=commit,
                key_id=self._signer.key_id,
            )
            entry_json = staged_entry_json(entry)
        except (AuditError, ValueError) as error:  # ValueError: pydantic's, and UnicodeEncodeError
            raise _refusal(0, error) from error
        return {"origin": self.origin, "time": time, "nonce": nonce, "arguments": stored_arguments, "entry": entry_json}

    def _stager(self) -> SqliteAppender:
        if self._sqlite is None:
            raise AppendWouldWait("this store has no appends that avoid waiting (PostgreSQL, SQLite URLs with options)")
        return self._sqlite

    def staged(self) -> tuple[int, str | None]:
        """How many decisions of this origin are staged and not yet chained, and the oldest one's time."""
        query = select(func.count(), func.min(audit_staged.c.time)).where(audit_staged.c.origin == self.origin)
        with self.engine.connect().execution_options(**{READ_ONLY: True}) as conn:
            count, oldest = conn.execute(query).one()
        return int(count), oldest

    @contextlib.contextmanager
    def _locked(self, wait: bool) -> Iterator[None]:
        if wait:
            with self._write_lock:
                yield
            return
        if not self.appends_without_waiting:
            raise AppendWouldWait("this store has no appends that avoid waiting (PostgreSQL, SQLite URLs with options)")
        lock = self._write_lock  # a threading.Lock: appends that do not wait are SQLite's
        if not isinstance(lock, _thread.LockType) or not lock.acquire(blocking=False):
            raise AppendWouldWait("another thread of this process is writing to the audit log")
        try:
            yield
        finally:
            lock.release()

    def _build(
        self,
        signer: RecordSigner,
        entry: AppendEntry,
        seq: int,
        prev: bytes,
        records: list[dict[str, Any]],
        arguments: list[dict[str, Any]],
        staged: _Staged | None = None,
    ) -> bytes:
        """Sign the record after `prev`, add its rows to `records` / `arguments`; return its leaf hash. A `staged`
        decision keeps the time, nonce and argument bytes it was staged with."""
        if staged is not None:
            nonce, stored_arguments, time = staged.nonce, staged.arguments, staged.time
        else:
            nonce, time = secrets.token_bytes(32), format_time(dt.datetime.now(dt.UTC))
            stored_arguments = None if entry.arguments is None else canonical_arguments(entry.arguments)
        commit = _commitment(nonce, stored_arguments)
        body = entry.body(
            origin=self.origin,
            seq=seq,
            prev=ZERO_HASH if seq == 0 else prev.hex(),
            time=time,
            replica=self.replica,
            args_commit=commit,
            key_id=signer.key_id,
        )
        signed = signer.sign(body)
        records.append(self._record_row(body, signed))
        if stored_arguments is not None:
            arguments.append({"origin": self.origin, "seq": seq, "nonce": nonce, "arguments": stored_arguments})
        return signed.leaf_hash

    def _record_row(self, body: RecordBody, signed: SignedRecord) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "seq": body.seq,
            "body": signed.body_bytes,
            "leaf_hash": signed.leaf_hash,
            "prev_hash": bytes.fromhex(body.prev),
            "key_id": signed.key_id,
            "signature": signed.signature,
            **{name: getattr(body, name) for name in INDEXED_COLUMNS},
        }

    # ------------------------------------------------------------------------------------------------------------------
    # checkpoints

    def _latest_in(self, conn: Connection) -> StoredCheckpoint | None:
        row = conn.execute(
            select(audit_checkpoints)
            .where(audit_checkpoints.c.origin == self.origin)
            .order_by(audit_checkpoints.c.size.desc())
            .limit(1)
        ).first()
        return None if row is None else _stored_checkpoint(row)

    def _write_checkpoint(
        self, tx: WriteTransaction, frontier: MerkleFrontier, signer: RecordSigner
    ) -> StoredCheckpoint:
        """Sign and insert the checkpoint of `frontier`; the caller holds the head lock and commits."""
        checkpoint = Checkpoint(self.origin, frontier.size, frontier.root())
        note = sign_checkpoint(checkpoint, checkpoint_key_name(self.origin, signer.key_id), signer.key)
        stored = StoredCheckpoint(
            self.origin, checkpoint.size, checkpoint.root, note, format_time(dt.datetime.now(dt.UTC))
        )
        tx.run(_INSERT_CHECKPOINT, dataclasses.asdict(stored))
        return stored

    def _checkpoint_by_count(
        self, tx: WriteTransaction, frontier: MerkleFrontier, signer: RecordSigner
    ) -> StoredCheckpoint | None:
        if frontier.size - self._checkpointed_size < self.checkpoint_every:
            return None  # the cached size only lags the real one, so "not due" by the cache is never wrong
        newest = tx.rows(_NEWEST_CHECKPOINT, {"head_origin": self.origin})[0][0]
        self._checkpointed_size = max(self._checkpointed_size, newest or 0)
        if frontier.size - self._checkpointed_size < self.checkpoint_every:
            return None
        return self._write_checkpoint(tx, frontier, signer)

    def _due(self, size: int, latest: StoredCheckpoint | None, now: dt.datetime) -> bool:
        if size <= (0 if latest is None else latest.size):
            return False
        if latest is None:
            return True
        written = _parse_time(latest.time)
        return written is None or (now - written).total_seconds() >= self.checkpoint_interval

    def checkpoint_if_due(self) -> StoredCheckpoint | None:
        """Write a checkpoint if the log grew and `checkpoint_interval` seconds passed since the newest one (or there
        is none); return it, else None. Cheap when nothing is due: one read, no write lock."""
        now = dt.datetime.now(dt.UTC)
        if not self._due(self.head()[0] + 1, self.latest_checkpoint(), now):
            return None
        return self._checkpoint(force=False)

    def checkpoint(self) -> StoredCheckpoint:
        """The checkpoint of the log as committed now, written unless one of this size exists already."""
        written = self._checkpoint(force=True)
        assert written is not None  # force always yields one or raises
        return written

    def _checkpoint(self, *, force: bool) -> StoredCheckpoint | None:
        try:
            with self._write_lock, self.engine.begin() as conn:
                tx = _CoreTransaction(conn)
                head = self._lock_head(tx)
                signer = self._signer_for(head)  # a retired key neither signs nor vouches for old checkpoints
                size = head.frontier.size
                if size == 0:
                    if force:
                        raise AuditError(f"log {self.origin!r} is empty", hint="a checkpoint needs at least one record")
                    return None
                latest = self._latest_in(conn)
                if latest is not None and latest.size == size:
                    return latest if force else None
                if not force and not self._due(size, latest, dt.datetime.now(dt.UTC)):
                    return None  # another writer checkpointed between our read and the lock
                written = self._write_checkpoint(tx, head.frontier, signer)
            self._checkpointed_size = max(self._checkpointed_size, written.size)
            return written
        except AuditError:
            raise
        except Exception as error:
            raise AuditError(
                f"audit checkpoint failed: {type(error).__name__}: {str(error)[:300]}", hint="check the database"
            ) from error

    def checkpoints(self) -> list[StoredCheckpoint]:
        """Every checkpoint of this origin, smallest size first (unverified: see StoredCheckpoint.verify)."""
        query = (
            select(audit_checkpoints)
            .where(audit_checkpoints.c.origin == self.origin)
            .order_by(audit_checkpoints.c.size)
        )
        with self.engine.connect().execution_options(**{READ_ONLY: True}) as conn:
            return [_stored_checkpoint(row) for row in conn.execute(query)]

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        """The checkpoint with the largest size, or None."""
        with self.engine.connect().execution_options(**{READ_ONLY: True}) as conn:
            return self._latest_in(conn)

    # ------------------------------------------------------------------------------------------------------------------
    # key rotation

    def rotate(self, new_key: Ed25519PrivateKey) -> int:
        """Append a `key_rotation` record (signed by the current key, countersigned by `new_key`) and a checkpoint
        covering it (signed by the current key), in one transaction; from then on this store signs with `new_key`.
        Returns the seq of the key_rotation record.

        Other processes still holding the old key refuse to append from then on (fail closed): restart them with the
        new key. Verifiers must trust the old key up to the returned seq and the new key from seq + 1.
        """
        if not isinstance(new_key, Ed25519PrivateKey):
            raise AuditError("the new key is not an Ed25519 private key", hint="load it with keys.load_key")
        new_id = key_id(new_key.public_key())
        connection = self.engine.connect()
        locked = False
        try:
            with self._write_lock, connection.begin():
                tx = _CoreTransaction(connection)
                head = self._lock_head(tx)
                old = self._signer_for(head)
                if new_id == old.key_id or new_id in head.retired:
                    raise AuditError(
                        f"key {new_id} is the current key or was retired before", hint="generate a new key to rotate to"
                    )
                seq = head.seq + 1
                body = rotation_body(
                    origin=self.origin,
                    seq=seq,
                    prev=ZERO_HASH if seq == 0 else head.leaf.hex(),
                    time=format_time(dt.datetime.now(dt.UTC)),
                    replica=self.replica,
                    old_key=old.key,
                    new_key=new_key,
                )
                signed = old.sign(body)
                tx.run(_INSERT_RECORD, [self._record_row(body, signed)])
                leaf = signed.leaf_hash
                head.frontier.append(leaf)
                self._advance_head(tx, seq, leaf, head.frontier, " ".join(sorted(head.retired | {old.key_id})))
                checkpointed = self._write_checkpoint(tx, head.frontier, old)
                # Taken before the commit releases the head row: an append of this process that gets the row next
                # waits here and then reads the new key, never the retired one.
                self._signer_lock.acquire()
                locked = True
            self._signer = RecordSigner.of(new_key)
            self._checkpointed_size = max(self._checkpointed_size, checkpointed.size)
            return seq
        except AuditError:
            raise
        except Exception as error:
            raise AuditError(
                f"key rotation failed: {type(error).__name__}: {str(error)[:300]}",
                hint="nothing was written; the old key stays in use",
            ) from error
        finally:
            if locked:
                self._signer_lock.release()
            connection.close()

    # ------------------------------------------------------------------------------------------------------------------
    # reading

    def head(self) -> tuple[int, bytes]:
        """(seq, leaf hash) of the last record; (-1, 32 zero bytes) for an empty log."""
        with self.engine.connect().execution_options(**{READ_ONLY: True}) as conn:
            row = conn.execute(
                select(audit_head.c.seq, audit_head.c.leaf_hash).where(audit_head.c.origin == self.origin)
            ).first()
        return (_EMPTY_HEAD_SEQ, ZERO_LEAF) if row is None else (row.seq, column_bytes(row.leaf_hash))

    def iter_records(self) -> Iterator[StoredRecord]:
        """All records of this origin in seq order, streamed."""
        query = select(audit_records).where(audit_records.c.origin == self.origin).order_by(audit_records.c.seq)
        with self.engine.connect().execution_options(**{READ_ONLY: True}) as conn:
            for row in conn.execution_options(yield_per=1000).execute(query):
                yield stored_record(row)


def _retired(signer_key_id: str) -> AuditError:
    return AuditError(
        f"signing key {signer_key_id} was retired by a key rotation; refusing to sign with it",
        hint="restart with the new key named in the log's key_rotation record",
    )


def rotate_key_files(url: str, origin: str, key_path: str, new_key_path: str, replica: str) -> KeyRotation:
    """`aegis keys rotate`: load both key files (0600, owner) and rotate the log `origin` at `url` to the new key."""
    old_key, new_key = load_key(key_path), load_key(new_key_path)
    store = AuditStore(url, origin=origin, signer_key=old_key, replica=replica)
    try:
        seq = store.rotate(new_key)
        return KeyRotation(seq, key_id(old_key.public_key()), store.key_id, public_key_hex(new_key.public_key()))
    finally:
        store.close()


def column_bytes(value: Any) -> bytes:
    """A binary column as bytes. psycopg2 returns memoryview; a row edited with the sqlite3 shell may hold TEXT or
    INTEGER, which must fail verification, not crash it (bytes(64) would even be 64 zero bytes)."""
    if type(value) is bytes:  # nearly always: no copy
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return repr(value).encode()


def stored_record(row: Any) -> StoredRecord:
    """One `audit_records` row as read, whatever a tamperer left in its columns."""
    return stored_from_values(tuple(getattr(row, name) for name in VERIFY_COLUMNS))


def stored_from_values(values: Sequence[Any]) -> StoredRecord:
    origin, seq, body, leaf, kid, signature, prev, *indexed = values
    return StoredRecord(
        origin=str(origin),
        seq=seq,
        record=SignedRecord(
            body_bytes=column_bytes(body),
            leaf_hash=column_bytes(leaf),
            key_id=str(kid),
            signature=column_bytes(signature),
        ),
        prev_hash=column_bytes(prev),
        columns=dict(zip(INDEXED_COLUMNS, indexed, strict=True)),
    )


def _stored_checkpoint(row: Any) -> StoredCheckpoint:
    return StoredCheckpoint(
        origin=str(row.origin),
        size=row.size,
        root_hash=column_bytes(row.root_hash),
        note=str(row.note),
        time=str(row.time),
    )


# ----------------------------------------------------------------------------------------------------------------------
# the rows a verifier reads

# The columns verification reads, in this order: a row travels to a worker process as a plain tuple of them.
VERIFY_COLUMNS = ("origin", "seq", "body", "leaf_hash", "key_id", "signature", "prev_hash", *INDEXED_COLUMNS)


def verify_query(origin: str) -> Select[Any]:
    """The rows of one log in seq order, with exactly the columns of VERIFY_COLUMNS."""
    columns = [audit_records.c[name] for name in VERIFY_COLUMNS]
    return select(*columns).where(audit_records.c.origin == origin).order_by(audit_records.c.seq)
