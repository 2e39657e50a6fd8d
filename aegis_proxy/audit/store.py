"""Audit log storage (SQLAlchemy Core): the tables, the serialized chain append, reading, and chain verification.

Appends from many threads and processes form one contiguous chain: each batch runs in one transaction that first
locks the origin's `audit_head` row (`BEGIN IMMEDIATE` on SQLite, `SELECT ... FOR UPDATE` on PostgreSQL). The primary
key (origin, seq) and the unique (origin, prev_hash) make the database refuse a fork if that lock is ever bypassed.

Tables are created with `metadata.create_all` for now; Alembic migrations (under `audit/`) replace that later.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Index,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from aegis_proxy.audit.errors import AuditError, VerificationError
from aegis_proxy.audit.keys import TrustedKey, key_id, verify_rotation
from aegis_proxy.audit.record import (
    ZERO_HASH,
    FindingSummary,
    RecordBody,
    RecordType,
    SignedRecord,
    args_commitment,
    format_time,
    sign_record,
    verify_record,
)

_EMPTY_HEAD_SEQ = -1  # the head row of a log with no records yet
_ZERO_LEAF = bytes(32)

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


@dataclasses.dataclass(frozen=True)
class StoredRecord:
    """One row of audit_records: the signed record plus the column copies the verifier compares with the body."""

    origin: str
    seq: int
    record: SignedRecord
    prev_hash: bytes
    columns: Mapping[str, str | None]  # time, type, tool, decision, agent_id, session_id


_READ_ONLY = "aegis_audit_read_only"  # execution option: this connection only reads
_INDEXED = ("time", "type", "tool", "decision", "agent_id", "session_id")


def _sqlite_hooks(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from pysqlite so the "begin" hook below decides how transactions start.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")  # a committed record survives power loss
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # IMMEDIATE takes the write lock up front: appends queue here instead of deadlocking on lock upgrade.
        # Readers (marked by _READ_ONLY) begin deferred so that, under WAL, they never block a writer.
        read_only = connection.get_execution_options().get(_READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


class AuditStore:
    """The audit log of one origin in one database. Thread-safe; share one instance per process."""

    def __init__(self, url: str, *, origin: str, signer_key: Ed25519PrivateKey, replica: str) -> None:
        self.origin = origin
        self.replica = replica
        self._key = signer_key
        self._key_id = key_id(signer_key.public_key())
        try:
            if url.startswith("sqlite"):
                self.engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False})
                _sqlite_hooks(self.engine)
            else:
                self.engine = create_engine(url, pool_pre_ping=True)
            metadata.create_all(self.engine)
            self._ensure_head()
        except AuditError:
            raise
        except Exception as error:
            raise AuditError(f"cannot open audit database: {error}", hint="check the --db URL") from error

    def _ensure_head(self) -> None:
        try:
            with self.engine.begin() as conn:
                exists = conn.execute(select(audit_head.c.seq).where(audit_head.c.origin == self.origin)).first()
                if exists is None:
                    conn.execute(
                        insert(audit_head).values(origin=self.origin, seq=_EMPTY_HEAD_SEQ, leaf_hash=_ZERO_LEAF)
                    )
        except IntegrityError:
            pass  # another process created it first

    def close(self) -> None:
        self.engine.dispose()

    def append(self, entries: Sequence[AppendEntry]) -> list[int]:
        """Append a batch in one transaction (group commit) and return the seqs. Raises AuditError on any failure,
        in which case nothing of the batch was written and the caller must deny the tool call (fail closed)."""
        try:
            with self.engine.begin() as conn:
                head = conn.execute(
                    select(audit_head.c.seq, audit_head.c.leaf_hash)
                    .where(audit_head.c.origin == self.origin)
                    .with_for_update()
                ).one()
                seq, prev = head.seq, bytes(head.leaf_hash)  # psycopg2 returns memoryview
                seqs: list[int] = []
                for entry in entries:
                    seq += 1
                    prev = self._insert(conn, entry, seq, prev)
                    seqs.append(seq)
                if seqs:
                    conn.execute(
                        update(audit_head).where(audit_head.c.origin == self.origin).values(seq=seq, leaf_hash=prev)
                    )
            return seqs
        except AuditError:
            raise
        except Exception as error:  # database, validation, anything: the record was not written
            raise AuditError(
                f"audit append failed: {type(error).__name__}: {str(error)[:300]}", hint="the call is denied"
            ) from error

    def _insert(self, conn: Connection, entry: AppendEntry, seq: int, prev: bytes) -> bytes:
        """Insert one signed record after `prev`; return its leaf hash."""
        nonce = secrets.token_bytes(32)
        commit = None if entry.arguments is None else args_commitment(nonce, entry.arguments)
        body = RecordBody(
            origin=self.origin,
            seq=seq,
            prev=ZERO_HASH if seq == 0 else prev.hex(),
            type=entry.type,
            time=format_time(dt.datetime.now(dt.UTC)),
            replica=self.replica,
            request_id=entry.request_id,
            session_id=entry.session_id,
            agent_id=entry.agent_id,
            tool=entry.tool,
            args_commit=commit,
            decision=entry.decision,
            rules=tuple(entry.rules),
            policy_digest=entry.policy_digest,
            findings=tuple(entry.findings),
            scores=dict(entry.scores),
            approver=entry.approver,
            ref_seq=entry.ref_seq,
            latency_us=entry.latency_us,
            key_id=self._key_id,
        )
        signed = sign_record(body, self._key)
        conn.execute(
            insert(audit_records).values(
                origin=self.origin,
                seq=seq,
                body=signed.body_bytes,
                leaf_hash=signed.leaf_hash,
                prev_hash=bytes.fromhex(body.prev),
                key_id=signed.key_id,
                signature=signed.signature,
                **{name: getattr(body, name) for name in _INDEXED},
            )
        )
        if entry.arguments is not None:
            conn.execute(
                insert(audit_arguments).values(
                    origin=self.origin, seq=seq, nonce=nonce, arguments=rfc8785.dumps(entry.arguments)
                )
            )
        return signed.leaf_hash

    def head(self) -> tuple[int, bytes]:
        """(seq, leaf hash) of the last record; (-1, 32 zero bytes) for an empty log."""
        with self.engine.connect().execution_options(**{_READ_ONLY: True}) as conn:
            row = conn.execute(
                select(audit_head.c.seq, audit_head.c.leaf_hash).where(audit_head.c.origin == self.origin)
            ).first()
        return (_EMPTY_HEAD_SEQ, _ZERO_LEAF) if row is None else (row.seq, column_bytes(row.leaf_hash))

    def iter_records(self) -> Iterator[StoredRecord]:
        """All records of this origin in seq order, streamed."""
        query = select(audit_records).where(audit_records.c.origin == self.origin).order_by(audit_records.c.seq)
        with self.engine.connect().execution_options(**{_READ_ONLY: True}) as conn:
            for row in conn.execution_options(yield_per=1000).execute(query):
                yield stored_record(row)


def column_bytes(value: Any) -> bytes:
    """A binary column as bytes. psycopg2 returns memoryview; a row edited with the sqlite3 shell may hold TEXT or
    INTEGER, which must fail verification, not crash it (bytes(64) would even be 64 zero bytes)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return repr(value).encode()


def stored_record(row: Any) -> StoredRecord:
    """One `audit_records` row as read, whatever a tamperer left in its columns."""
    return StoredRecord(
        origin=str(row.origin),
        seq=row.seq,
        record=SignedRecord(
            body_bytes=column_bytes(row.body),
            leaf_hash=column_bytes(row.leaf_hash),
            key_id=str(row.key_id),
            signature=column_bytes(row.signature),
        ),
        prev_hash=column_bytes(row.prev_hash),
        columns={name: getattr(row, name) for name in _INDEXED},
    )


def verify_chain(source: AuditStore | Iterable[StoredRecord], trusted_keys: Mapping[str, TrustedKey]) -> None:
    """Verify a whole log; raise VerificationError naming the first seq at fault and the step that failed.

    1. seq is contiguous from 0.
    2. Each record verifies on its own (record.verify_record; key rotations also keys.verify_rotation).
    3. Each record's prev equals the previous record's leaf hash (and the prev_hash column equals it).
    4. The columns origin (one for all records), seq, time, type, tool, decision, agent_id and session_id equal the
       body's fields.
    5. The head row matches the last record (only when `source` is an AuditStore).
    """
    records = source.iter_records() if isinstance(source, AuditStore) else source
    expected_seq, prev_leaf, origin = 0, None, source.origin if isinstance(source, AuditStore) else None
    for stored in records:
        origin = stored.origin if origin is None else origin  # one log, one origin
        seq = stored.seq
        if seq != expected_seq:
            raise VerificationError(f"step 1: expected seq {expected_seq}, found seq {seq} (gap or reorder)", index=seq)
        try:
            check = verify_rotation if stored.columns.get("type") == "key_rotation" else verify_record
            body = check(stored.record, trusted_keys)
        except VerificationError as error:
            raise VerificationError(f"step 2: seq {seq} does not verify: {error.message}", index=seq) from error
        expected_prev = ZERO_HASH if prev_leaf is None else prev_leaf.hex()
        if body.prev != expected_prev or stored.prev_hash.hex() != expected_prev:
            raise VerificationError(f"step 3: seq {seq}: prev is not the leaf hash of seq {seq - 1}", index=seq)
        mismatched = [name for name in _INDEXED if stored.columns.get(name) != getattr(body, name)]
        if body.origin != stored.origin or stored.origin != origin:
            mismatched.insert(0, "origin")
        if body.seq != seq:
            mismatched.insert(0, "seq")
        if mismatched:
            raise VerificationError(
                f"step 4: seq {seq}: column(s) {', '.join(mismatched)} differ from the signed body", index=seq
            )
        prev_leaf, expected_seq = stored.record.leaf_hash, seq + 1
    if isinstance(source, AuditStore):
        head_seq, head_leaf = source.head()
        last_leaf = _ZERO_LEAF if prev_leaf is None else prev_leaf
        if head_seq != expected_seq - 1 or head_leaf != last_leaf:
            raise VerificationError(
                f"step 5: head row says seq {head_seq}, but the last record is seq {expected_seq - 1}",
                index=expected_seq - 1,
            )
