"""What `aegis audit ...` and `aegis keys ...` do: open a log read-only, verify it, list and show records, make keys.

The CLI only parses arguments and prints; everything here returns plain values. Usage and configuration problems
(bad URL, missing database, unreadable trusted keys) raise AuditError; a log that does not verify is a result
(`VerifyReport.failure`), not an exception.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from aegis_proxy.audit.errors import AuditError, VerificationError
from aegis_proxy.audit.keys import TrustedKey, generate_key, key_id, load_trusted_keys, public_key_hex
from aegis_proxy.audit.merkle import leaf_hash
from aegis_proxy.audit.record import format_time, verify_record
from aegis_proxy.audit.store import (
    StoredRecord,
    audit_head,
    audit_records,
    column_bytes,
    stored_record,
    verify_chain,
)

# The steps of store.verify_chain, in its numbering (its messages start with "step N:").
VERIFY_STEPS: tuple[str, ...] = (
    "seq is contiguous from 0",
    "every record verifies on its own (canonical body, leaf hash, trusted key, signature)",
    "every prev is the leaf hash of the record before",
    "indexed columns equal the signed bodies",
    "head row matches the last record",
)
_STEP_PREFIX = re.compile(r"step ([1-9]): ")  # our own messages, never request content
_INDEXED = ("time", "type", "tool", "decision", "agent_id", "session_id")
EFFECTS = ("allow", "deny", "ask")
_DB_HINT = "give an SQLAlchemy URL, e.g. sqlite:///var/aegis/audit.db or postgresql+psycopg2://user@host/db"


# ----------------------------------------------------------------------------------------------------------------------
# Opening a log


def open_log(url: str) -> Engine:
    """An engine that only reads; never creates a database, a table or a head row (unlike AuditStore)."""
    try:
        parsed = make_url(url)
    except ArgumentError as error:
        raise AuditError(f"--db {url!r} is not a database URL", hint=_DB_HINT) from error
    is_sqlite = parsed.get_backend_name() == "sqlite"
    if is_sqlite and (not parsed.database or parsed.database == ":memory:" or not Path(parsed.database).is_file()):
        raise AuditError(f"no audit database at {parsed.database or '(none)'}", hint="check the --db path")
    try:
        engine = create_engine(url, pool_pre_ping=not is_sqlite)
        if is_sqlite:
            _sqlite_snapshot_reads(engine)
        tables = inspect(engine).get_table_names()
    except (NoSuchModuleError, SQLAlchemyError, ImportError) as error:
        raise AuditError(f"cannot open audit database {parsed!r}: {str(error)[:300]}", hint=_DB_HINT) from error
    if audit_records.name not in tables or audit_head.name not in tables:
        engine.dispose()
        raise AuditError(f"{parsed!r} holds no audit log (no {audit_records.name} table)", hint="check the --db URL")
    return engine


def _sqlite_snapshot_reads(engine: Engine) -> None:
    # pysqlite opens no transaction for SELECTs, so the head row and the records could come from different moments
    # while the proxy appends. An explicit deferred BEGIN makes every read in one transaction one WAL snapshot.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN")


def _snapshot(engine: Engine) -> Connection:
    connection = engine.connect()
    if engine.dialect.name == "postgresql":  # one snapshot for the head row and every record
        connection = connection.execution_options(isolation_level="REPEATABLE READ")
    return connection


def _origins(conn: Connection) -> list[str]:
    return list(conn.execute(select(audit_head.c.origin).order_by(audit_head.c.origin).limit(20)).scalars())


def _head(conn: Connection, origin: str) -> tuple[int, bytes]:
    row = conn.execute(select(audit_head.c.seq, audit_head.c.leaf_hash).where(audit_head.c.origin == origin)).first()
    if row is None:
        known = ", ".join(_origins(conn)) or "none"
        raise AuditError(f"no log with origin {origin!r} in this database", hint=f"origins here: {known}")
    return row.seq, column_bytes(row.leaf_hash)


def _trusted(path: str) -> dict[str, TrustedKey]:
    return load_trusted_keys(path)  # AuditError (usage) on an unreadable or invalid file


# ----------------------------------------------------------------------------------------------------------------------
# verify


@dataclasses.dataclass(frozen=True)
class VerifyFailure:
    step: int | None  # 1-based index into VERIFY_STEPS, when the message names one
    seq: int | None
    message: str
    hint: str


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    origin: str
    records: int  # records that passed every check
    failure: VerifyFailure | None

    @property
    def ok(self) -> bool:
        return self.failure is None


def verify_log(url: str, origin: str, trusted_keys_path: str) -> VerifyReport:
    """Run store.verify_chain over one origin (steps 1-4) plus the head-row check (step 5), in one snapshot."""
    trusted = _trusted(trusted_keys_path)
    engine = open_log(url)
    counted = 0
    try:
        with _snapshot(engine) as conn, conn.begin():
            head_seq, head_leaf = _head(conn, origin)

            def records() -> Iterator[StoredRecord]:
                nonlocal counted
                query = select(audit_records).where(audit_records.c.origin == origin).order_by(audit_records.c.seq)
                for row in conn.execution_options(yield_per=1000).execute(query):
                    yield stored_record(row)
                    counted += 1  # after the consumer returns: the previous record passed every check

            last_leaf = bytes(32)
            try:
                verify_chain(records(), trusted)
                if counted:
                    last_leaf = conn.execute(
                        select(audit_records.c.leaf_hash).where(
                            audit_records.c.origin == origin, audit_records.c.seq == counted - 1
                        )
                    ).scalar_one()
                if head_seq != counted - 1 or column_bytes(last_leaf) != head_leaf:
                    raise VerificationError(
                        f"step 5: head row says seq {head_seq}, but the last record is seq {counted - 1}",
                        index=counted - 1,
                    )
            except VerificationError as error:
                match = _STEP_PREFIX.match(error.message)
                step = int(match.group(1)) if match else None
                message = error.message[match.end() :] if match else error.message
                verified = counted if error.index is None else min(counted, error.index)
                return VerifyReport(origin, verified, VerifyFailure(step, error.index, message, error.hint))
    except SQLAlchemyError as error:
        raise AuditError(f"reading the audit log failed: {str(error)[:300]}", hint=_DB_HINT) from error
    finally:
        engine.dispose()
    return VerifyReport(origin, counted, None)


# ----------------------------------------------------------------------------------------------------------------------
# list


@dataclasses.dataclass(frozen=True)
class RecordFilter:
    tool: str | None = None
    effect: str | None = None
    agent: str | None = None
    session: str | None = None
    since: str | None = None  # RFC 3339 as given by the user
    until: str | None = None
    limit: int | None = None  # the most recent N


@dataclasses.dataclass(frozen=True)
class RecordSummary:
    """The indexed columns of one record: copies of the body that only `aegis audit verify` vouches for."""

    seq: int
    time: str
    type: str
    decision: str | None
    tool: str | None
    agent_id: str | None
    session_id: str | None
    key_id: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_rfc3339(text: str, flag: str) -> str:
    """A user's RFC 3339 time as the store's column spelling (UTC, 6 digits), so string order is time order."""
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise AuditError(
            f"{flag} {text!r} is not an RFC 3339 time with a zone", hint=f"e.g. {flag} 2026-11-29T10:00:00Z"
        )
    return format_time(moment)


def list_records(url: str, origin: str, record_filter: RecordFilter) -> list[RecordSummary]:
    """Records of `origin` matching every given filter, in seq order (with `limit`: the most recent ones)."""
    if record_filter.effect is not None and record_filter.effect not in EFFECTS:
        raise AuditError(f"--effect {record_filter.effect!r} is not an effect", hint=f"one of {', '.join(EFFECTS)}")
    if record_filter.limit is not None and record_filter.limit < 1:
        raise AuditError(f"--limit {record_filter.limit} must be at least 1", hint="e.g. --limit 50")
    columns = audit_records.c
    query = select(
        columns.seq,
        columns.time,
        columns.type,
        columns.decision,
        columns.tool,
        columns.agent_id,
        columns.session_id,
        columns.key_id,
    ).where(columns.origin == origin)
    for column, value in (
        (columns.tool, record_filter.tool),
        (columns.decision, record_filter.effect),
        (columns.agent_id, record_filter.agent),
        (columns.session_id, record_filter.session),
    ):
        if value is not None:
            query = query.where(column == value)
    if record_filter.since is not None:
        query = query.where(columns.time >= parse_rfc3339(record_filter.since, "--since"))
    if record_filter.until is not None:
        query = query.where(columns.time <= parse_rfc3339(record_filter.until, "--until"))
    query = query.order_by(columns.seq.desc())
    if record_filter.limit is not None:
        query = query.limit(record_filter.limit)
    engine = open_log(url)
    try:
        with engine.connect() as conn:
            _head(conn, origin)  # an unknown origin is a usage error, not an empty list
            rows = conn.execute(query).all()
    except SQLAlchemyError as error:
        raise AuditError(f"reading the audit log failed: {str(error)[:300]}", hint=_DB_HINT) from error
    finally:
        engine.dispose()
    return [RecordSummary(**row._asdict()) for row in reversed(rows)]


# ----------------------------------------------------------------------------------------------------------------------
# show


@dataclasses.dataclass(frozen=True)
class RecordDetail:
    seq: int
    body: Any | None  # the parsed body JSON; None when the stored bytes are not JSON
    body_bytes: bytes
    stored_leaf_hash: bytes
    computed_leaf_hash: bytes  # SHA-256(0x00 || body): differs from the stored one when the body was altered
    key_id: str
    signature_check: str | None  # None: no trusted keys given; "OK" or what failed

    @property
    def signature_ok(self) -> bool | None:
        return None if self.signature_check is None else self.signature_check == "OK"


def show_record(url: str, origin: str, seq: int, trusted_keys_path: str | None) -> RecordDetail:
    """One record's body, leaf hash and key id; with trusted keys, whether it verifies on its own (not its links)."""
    trusted = None if trusted_keys_path is None else _trusted(trusted_keys_path)
    engine = open_log(url)
    try:
        with engine.connect() as conn:
            _head(conn, origin)
            row = conn.execute(
                select(audit_records).where(audit_records.c.origin == origin, audit_records.c.seq == seq)
            ).first()
    except SQLAlchemyError as error:
        raise AuditError(f"reading the audit log failed: {str(error)[:300]}", hint=_DB_HINT) from error
    finally:
        engine.dispose()
    if row is None:
        raise AuditError(f"log {origin!r} has no record with seq {seq}", hint="list them with `aegis audit list`")
    stored = stored_record(row)
    try:
        body: Any | None = json.loads(stored.record.body_bytes)
    except (ValueError, RecursionError):
        body = None
    check = None
    if trusted is not None:
        try:
            verify_record(stored.record, trusted)
            check = "OK"
        except VerificationError as error:
            check = error.message
    return RecordDetail(
        seq=seq,
        body=body,
        body_bytes=stored.record.body_bytes,
        stored_leaf_hash=stored.record.leaf_hash,
        computed_leaf_hash=leaf_hash(stored.record.body_bytes),
        key_id=stored.record.key_id,
        signature_check=check,
    )


# ----------------------------------------------------------------------------------------------------------------------
# keys generate


@dataclasses.dataclass(frozen=True)
class GeneratedKey:
    path: str
    key_id: str
    public_key: str  # raw Ed25519, hex
    first_seq: int

    def trust_entry(self) -> str:
        """The trusted-keys TOML entry (audit/FORMAT.md section 5) for verifiers to add."""
        return f'[[keys]]\nkey_id = "{self.key_id}"\npublic_key = "{self.public_key}"\nfirst_seq = {self.first_seq}\n'


def generate_key_file(path: str | os.PathLike[str], first_seq: int = 0) -> GeneratedKey:
    """Create a 0600 Ed25519 key file (never overwriting one) and describe its trusted-keys entry."""
    if first_seq < 0:
        raise AuditError(f"--first-seq {first_seq} must be >= 0", hint="the seq of the first record it signs")
    public = generate_key(path).public_key()
    return GeneratedKey(str(path), key_id(public), public_key_hex(public), first_seq)


def summary_columns(summary: RecordSummary) -> Mapping[str, str]:
    """Table cells for one summary; control characters escaped (columns are unverified and reach a terminal)."""
    cells = {
        "seq": str(summary.seq),
        "time": summary.time,
        "type": summary.type,
        "effect": summary.decision or "-",
        "tool": summary.tool or "-",
        "agent": summary.agent_id or "-",
        "session": summary.session_id or "-",
    }
    return {name: printable(value) for name, value in cells.items()}


def printable(text: str) -> str:
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}" for c in text)
