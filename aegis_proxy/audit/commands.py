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
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    create_engine,
    event,
    func,
    inspect,
    select,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from aegis_proxy.audit.checkpoint import MAX_NOTE_SIZE, parse_checkpoint, verify_checkpoint_keys
from aegis_proxy.audit.errors import AuditError, VerificationError
from aegis_proxy.audit.export import (
    EXPORT_STEPS,
    MAX_LINE_CHARS,
    TRUSTED_CHECKPOINT_STEPS,
    AnchorError,
    check_trusted_checkpoints,
    header_line,
    record_line,
    roots_at,
    verify_export,
)
from aegis_proxy.audit.keys import TrustedKey, generate_key, key_id, load_key, load_trusted_keys, public_key_hex
from aegis_proxy.audit.merkle import MerkleTree, leaf_hash
from aegis_proxy.audit.record import format_time, parse_body, verify_record
from aegis_proxy.audit.store import (
    StoredCheckpoint,
    audit_checkpoints,
    audit_head,
    audit_records,
    audit_staged,
    column_bytes,
    stored_record,
    verify_query,
)
from aegis_proxy.audit.verify import verify_rows

# The steps of verify.verify_chain, in its numbering (its messages start with "step N:").
VERIFY_STEPS: tuple[str, ...] = (
    "seq is contiguous from 0",
    "every record verifies on its own (canonical body, leaf hash, trusted key, signature)",
    "every prev is the leaf hash of the record before",
    "indexed columns equal the signed bodies",
    "head row matches the last record",
    "stored checkpoints are signed by trusted keys and are roots of the log's tree",
    *TRUSTED_CHECKPOINT_STEPS,
)
_PARALLEL_FROM = 10_000  # records; below this one process verifies faster than starting workers
_STEP_PREFIX = re.compile(r"step ([1-9]): ")  # our own messages, never request content
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
    step: int | None  # 1-based index into the report's steps, when the message names one
    seq: int | None
    message: str
    hint: str
    size: int | None = None  # the checkpoint size at fault, for checkpoint steps


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    origin: str
    records: int  # records that passed every check
    failure: VerifyFailure | None
    steps: tuple[str, ...] = VERIFY_STEPS
    statuses: Mapping[int, str] = dataclasses.field(default_factory=dict)  # step -> what to print instead of "OK"
    trusted_sizes: tuple[int, ...] = ()  # trusted checkpoints the log extends
    latest_checkpoint: int | None = None  # size of the newest stored (or exported-with) checkpoint
    # Decisions durable but not chained yet (audit/FORMAT.md section 9): how many, and the oldest one's time.
    staged: tuple[int, str | None] = (0, None)

    @property
    def ok(self) -> bool:
        return self.failure is None

    @property
    def anchored(self) -> int:
        """Records 0..anchored-1 are pinned by a trusted (exported) checkpoint."""
        return max(self.trusted_sizes, default=0)

    @property
    def unanchored(self) -> tuple[int, int] | None:
        """(first, last) seq of the records no trusted checkpoint covers; None when every record is anchored."""
        return (self.anchored, self.records - 1) if self.ok and self.records > self.anchored else None


def _failure(error: VerificationError, counted: int) -> tuple[int, VerifyFailure]:
    match = _STEP_PREFIX.match(error.message)
    step = int(match.group(1)) if match else None
    message = error.message[match.end() :] if match else error.message
    verified = counted if error.index is None or step is None or step > 5 else min(counted, error.index)
    size = error.size if isinstance(error, AnchorError) else None
    return verified, VerifyFailure(step, error.index, message, error.hint, size)


def read_checkpoint_file(path: str | os.PathLike[str]) -> str:
    """A trusted checkpoint note as the user keeps it; unreadable is a usage error, malformed a verification one."""
    try:
        with open(path, "rb") as stream:
            data = stream.read(MAX_NOTE_SIZE + 1)
    except OSError as error:
        raise AuditError(
            f"cannot read checkpoint {path}: {error.strerror}", hint="give a note written by `aegis audit checkpoint`"
        ) from error
    # Undecodable bytes become U+FFFD, which checkpoint parsing refuses with a clear message.
    return data.decode("utf-8", "replace")


def verify_log(url: str, origin: str, trusted_keys_path: str, trusted_checkpoints: Sequence[str] = ()) -> VerifyReport:
    """Verify one origin in one snapshot: the chain (steps 1-4, verify.verify_chain), the head row (5), the stored
    checkpoints against the log's tree (6), and the trusted checkpoint notes `trusted_checkpoints` (7, 8)."""
    trusted = _trusted(trusted_keys_path)
    engine = open_log(url)
    counted = 0
    leaves: list[bytes] = []
    try:
        with _snapshot(engine) as conn, conn.begin():
            head_seq, head_leaf = _head(conn, origin)

            stored_checkpoints: list[StoredCheckpoint] = []
            try:
                # Checking in parallel pays for the worker start-up only on long logs.
                workers = (os.cpu_count() or 1) if head_seq >= _PARALLEL_FROM else 1
                rows = conn.execution_options(yield_per=1000).execute(verify_query(origin))
                chain = verify_rows(rows, trusted, origin=origin, workers=workers, leaves=leaves)
                counted = chain.verified
                if chain.error is not None:
                    raise chain.error
                last_leaf = leaves[-1] if leaves else bytes(32)
                if head_seq != counted - 1 or last_leaf != head_leaf:
                    raise VerificationError(
                        f"step 5: head row says seq {head_seq}, but the last record is seq {counted - 1}",
                        index=counted - 1,
                    )
                stored_checkpoints = _stored_checkpoints(conn, origin, limit=None)
                _check_stored_checkpoints(stored_checkpoints, origin, leaves, trusted)
                trusted_sizes = check_trusted_checkpoints(trusted_checkpoints, origin, leaves, trusted)
                staged = _staged(conn, origin)
            except VerificationError as error:
                verified, failure = _failure(error, counted)
                return VerifyReport(origin, verified, failure)
    except SQLAlchemyError as error:
        raise AuditError(f"reading the audit log failed: {str(error)[:300]}", hint=_DB_HINT) from error
    finally:
        engine.dispose()
    latest = stored_checkpoints[-1].size if stored_checkpoints else None
    statuses = {
        6: "OK (none stored yet)"
        if latest is None
        else f"OK ({_count(len(stored_checkpoints), 'checkpoint')}, the latest at size {latest})",
        7: "skipped: no --trusted checkpoint given" if not trusted_checkpoints else "OK",
        8: "skipped: no --trusted checkpoint given"
        if not trusted_checkpoints
        else f"OK (trusted sizes {', '.join(map(str, trusted_sizes))})",
    }
    return VerifyReport(origin, counted, None, VERIFY_STEPS, statuses, trusted_sizes, latest, staged)


def _staged(conn: Connection, origin: str) -> tuple[int, str | None]:
    if audit_staged.name not in inspect(conn).get_table_names():  # a log not yet upgraded to revision 0003
        return 0, None
    query = select(func.count(), func.min(audit_staged.c.time)).where(audit_staged.c.origin == origin)
    count, oldest = conn.execute(query).one()
    return int(count), oldest


def verify_export_file(
    path: str, trusted_keys_path: str, trusted_checkpoints: Sequence[str] = (), origin: str | None = None
) -> VerifyReport:
    """`aegis audit verify --export FILE`: export.verify_export over the file, as a VerifyReport."""
    trusted = _trusted(trusted_keys_path)
    try:
        stream = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as error:
        raise AuditError(
            f"cannot read export {path}: {error.strerror}", hint="give a file from `aegis audit export`"
        ) from error
    counter = _LineCounter(stream)
    try:
        report = verify_export(counter, trusted, trusted_checkpoints)
    except VerificationError as error:
        verified, failure = _failure(error, max(0, counter.lines - 2))
        return VerifyReport(counter.origin or "?", verified, failure, EXPORT_STEPS)
    except OSError as error:
        raise AuditError(f"reading export {path} failed: {error.strerror}", hint="check the file") from error
    finally:
        stream.close()
    if origin is not None and report.origin != origin:
        failure = VerifyFailure(1, None, f"the export is of log {report.origin!r}, not {origin!r}", "check --origin")
        return VerifyReport(report.origin, 0, failure, EXPORT_STEPS)
    statuses = {
        5: "skipped: the export carries no checkpoint"
        if report.checkpoint_size is None
        else f"OK (size {report.checkpoint_size})",
        6: f"OK ({_count(report.proofs, 'proof')})" if report.proofs else "skipped: exported without --proofs",
        7: "skipped: no --trusted checkpoint given" if not trusted_checkpoints else "OK",
        8: "skipped: no --trusted checkpoint given"
        if not trusted_checkpoints
        else f"OK (trusted sizes {', '.join(map(str, report.trusted_sizes))})",
    }
    return VerifyReport(
        report.origin, report.records, None, EXPORT_STEPS, statuses, report.trusted_sizes, report.checkpoint_size
    )


class _LineCounter:
    """Lines of a binary file, each at most MAX_LINE_CHARS + 1 bytes read (a missing newline is then reported)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.lines = 0
        self.origin: str | None = None

    def __iter__(self) -> Iterator[bytes]:
        while True:
            line = self._stream.readline(MAX_LINE_CHARS + 2)
            if not line:
                return
            self.lines += 1
            if self.lines == 1:
                self.origin = _header_origin(line)
            yield line


def _header_origin(line: bytes) -> str | None:
    try:
        value = json.loads(line)
    except (ValueError, RecursionError):
        return None
    origin = value.get("origin") if isinstance(value, dict) else None
    return printable(origin) if isinstance(origin, str) else None


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


# ----------------------------------------------------------------------------------------------------------------------
# checkpoints


def _stored_checkpoints(conn: Connection, origin: str, limit: int | None) -> list[StoredCheckpoint]:
    """The origin's stored checkpoints in size order (with `limit`: the newest ones); none if the table is absent."""
    if not inspect(conn).has_table(audit_checkpoints.name):
        return []
    columns = audit_checkpoints.c
    query = select(audit_checkpoints).where(columns.origin == origin).order_by(columns.size.desc())
    if limit is not None:
        query = query.limit(limit)
    rows = conn.execute(query).all()
    return [
        StoredCheckpoint(
            origin=str(row.origin),
            size=row.size if isinstance(row.size, int) else -1,
            root_hash=column_bytes(row.root_hash),
            note=row.note if isinstance(row.note, str) else repr(row.note),
            time=str(row.time),
        )
        for row in reversed(rows)
    ]


def _check_stored_checkpoints(
    checkpoints: Sequence[StoredCheckpoint], origin: str, leaves: Sequence[bytes], trusted: Mapping[str, TrustedKey]
) -> None:
    """Step 6: every stored checkpoint is signed by a trusted key, its columns equal its note, and its root is the
    root of the log's first `size` records (the leaves were verified by steps 1-5)."""
    roots = roots_at(leaves, [c.size for c in checkpoints if 0 <= c.size <= len(leaves)])
    for stored in checkpoints:
        where = f"step 6: stored checkpoint at size {stored.size}"
        try:
            checkpoint = verify_checkpoint_keys(stored.note, trusted)
        except VerificationError as error:
            raise AnchorError(f"{where}: {error.message}", size=stored.size, hint=error.hint) from error
        if (checkpoint.origin, checkpoint.size, checkpoint.root) != (origin, stored.size, stored.root_hash):
            raise AnchorError(
                f"{where}: its origin, size or root column differs from its signed note", size=stored.size
            )
        if checkpoint.size > len(leaves):
            raise AnchorError(
                f"{where}: the log has only {len(leaves)} records: records {len(leaves)}..{checkpoint.size - 1} "
                "were deleted, or an older backup was restored",
                size=checkpoint.size,
                index=len(leaves),
                hint="the log was truncated after this checkpoint was signed",
            )
        if roots[checkpoint.size] != checkpoint.root:
            raise AnchorError(
                f"{where}: its root is not the root of the log's first {checkpoint.size} records (fork or rewrite)",
                size=checkpoint.size,
                hint="records before that size were replaced after the checkpoint was signed",
            )


@dataclasses.dataclass(frozen=True)
class CheckpointView:
    """A stored checkpoint and what was checked about it."""

    size: int
    root: bytes
    time: str
    note: str
    signature_check: str | None  # None: no trusted keys given; else "OK" or what failed
    tree_check: str  # "OK" or why the log's records do not give this root

    @property
    def ok(self) -> bool:
        return self.signature_check in (None, "OK") and self.tree_check == "OK"


@dataclasses.dataclass(frozen=True)
class CheckpointListing:
    origin: str
    log_size: int  # records in the log when read
    checkpoints: tuple[CheckpointView, ...]  # oldest first


def show_checkpoints(url: str, origin: str, trusted_keys_path: str | None, count: int | None = 1) -> CheckpointListing:
    """The newest `count` stored checkpoints (all with None), each checked against the trusted keys (if given) and
    against the root of the log's records at its size (leaf hashes recomputed from the bodies)."""
    if count is not None and count < 1:
        raise AuditError(f"--count {count} must be at least 1", hint="e.g. --count 5, or --all")
    trusted = None if trusted_keys_path is None else _trusted(trusted_keys_path)
    engine = open_log(url)
    try:
        with _snapshot(engine) as conn, conn.begin():
            head_seq, _ = _head(conn, origin)
            stored = _stored_checkpoints(conn, origin, count)
            horizon = max([0, *(c.size for c in stored)])
            bodies = conn.execution_options(yield_per=1000).execute(
                select(audit_records.c.seq, audit_records.c.body)
                .where(audit_records.c.origin == origin, audit_records.c.seq < horizon)
                .order_by(audit_records.c.seq)
            )
            leaves: list[bytes] = []
            for seq, body in bodies:
                if seq != len(leaves):
                    break  # a gap: trees beyond it cannot be computed; those checkpoints show as not matching
                leaves.append(leaf_hash(column_bytes(body)))
    except SQLAlchemyError as error:
        raise AuditError(f"reading the audit log failed: {str(error)[:300]}", hint=_DB_HINT) from error
    finally:
        engine.dispose()
    roots = roots_at(leaves, [c.size for c in stored if 0 <= c.size <= len(leaves)])
    views = []
    for checkpoint in stored:
        signature_check = None
        if trusted is not None:
            try:
                verified = verify_checkpoint_keys(checkpoint.note, trusted)
                same = (verified.origin, verified.size, verified.root) == (
                    origin,
                    checkpoint.size,
                    checkpoint.root_hash,
                )
                signature_check = "OK" if same else "the note differs from the row's origin, size or root"
            except VerificationError as error:
                signature_check = error.message
        if checkpoint.size not in roots:
            tree_check = f"the log has no {checkpoint.size} contiguous records from seq 0 (truncated?)"
        elif roots[checkpoint.size] != checkpoint.root_hash:
            tree_check = f"the log's first {checkpoint.size} records have another root (rewritten or forked)"
        else:
            tree_check = "OK"
        views.append(
            CheckpointView(
                checkpoint.size, checkpoint.root_hash, checkpoint.time, checkpoint.note, signature_check, tree_check
            )
        )
    return CheckpointListing(origin, head_seq + 1, tuple(views))


def checkpoint_file_name(origin: str, size: int) -> str:
    """`<origin with anything but [A-Za-z0-9._-] as _>.<size>.checkpoint`; never a path or a hidden file."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", origin)
    return f"{'_' + safe[1:] if safe.startswith('.') else safe}.{size}.checkpoint"


@dataclasses.dataclass(frozen=True)
class ExportedCheckpoint:
    size: int
    path: str
    status: str  # "written", "already exported", or why it was not written
    ok: bool


def export_checkpoints(
    url: str, origin: str, trusted_keys_path: str, directory: str | os.PathLike[str], count: int | None = 1
) -> tuple[CheckpointListing, list[ExportedCheckpoint]]:
    """Write each of the newest `count` stored checkpoints (all with None) to `directory`, one file per size, after
    verifying its signature and its root against the log. Never overwrites: an existing file with the same
    checkpoint is left as it is; one with another root at the same size is a fork and is reported."""
    folder = Path(directory)
    if not folder.is_dir():
        raise AuditError(f"--export {folder} is not a directory", hint=f"mkdir -p {folder}")
    listing = show_checkpoints(url, origin, trusted_keys_path, count)
    results = []
    for view in listing.checkpoints:
        path = folder / checkpoint_file_name(origin, view.size)
        if not view.ok:
            problem = view.signature_check if view.signature_check != "OK" else view.tree_check
            results.append(ExportedCheckpoint(view.size, str(path), f"not written: {problem}", False))
            continue
        results.append(_write_note(path, view.note, origin, view.size, view.root))
    return listing, results


def _write_note(path: Path, note: str, origin: str, size: int, root: bytes) -> ExportedCheckpoint:
    data = note.encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    except FileExistsError:
        try:
            existing = path.read_bytes()[: MAX_NOTE_SIZE + 1]
            if existing == data:
                return ExportedCheckpoint(size, str(path), "already exported", True)
            old, _ = parse_checkpoint(existing.decode("utf-8", "replace"))
        except (OSError, VerificationError) as error:
            message = error.message if isinstance(error, VerificationError) else str(error.strerror)
            return ExportedCheckpoint(
                size, str(path), f"not written: the existing file is not a checkpoint: {message}", False
            )
        if (old.origin, old.size, old.root) == (origin, size, root):
            return ExportedCheckpoint(size, str(path), "already exported (with other signatures)", True)
        return ExportedCheckpoint(
            size, str(path), f"not written: FORK: the existing file holds another checkpoint of size {size}", False
        )
    except OSError as error:
        raise AuditError(f"cannot write {path}: {error.strerror}", hint="check the --export directory") from error
    try:
        os.write(fd, data)
        os.fsync(fd)  # an anchor that is lost on power failure anchors nothing
    finally:
        os.close(fd)
    return ExportedCheckpoint(size, str(path), "written", True)


# ----------------------------------------------------------------------------------------------------------------------
# export


def export_log(url: str, origin: str, proofs: bool) -> Iterator[str]:
    """The lines of `aegis audit export --format jsonl` (audit/FORMAT.md section 10), read in one snapshot.

    The header carries the newest stored checkpoint; with `proofs`, every record it covers carries its inclusion
    proof. The exporter refuses a checkpoint that its own records do not hash to (run `aegis audit verify`)."""
    engine = open_log(url)
    try:
        with _snapshot(engine) as conn, conn.begin():
            head_seq, _ = _head(conn, origin)
            size = head_seq + 1
            latest = next(
                (c for c in reversed(_stored_checkpoints(conn, origin, limit=None)) if 0 <= c.size <= size), None
            )
            if proofs and latest is None:
                raise AuditError(
                    f"log {origin!r} has no stored checkpoint to prove inclusion against",
                    hint="export without --proofs, or wait for the proxy to write a checkpoint",
                )
            tree = None
            if proofs and latest is not None:
                leaf_rows = conn.execute(
                    select(audit_records.c.leaf_hash)
                    .where(audit_records.c.origin == origin, audit_records.c.seq < latest.size)
                    .order_by(audit_records.c.seq)
                ).scalars()
                leaves = [column_bytes(leaf) for leaf in leaf_rows]
                try:
                    tree = MerkleTree(leaves)
                except AuditError:
                    tree = None
                if tree is None or tree.size != latest.size or tree.root() != latest.root_hash:
                    raise AuditError(
                        f"the stored checkpoint at size {latest.size} does not match the log's records",
                        hint="run `aegis audit verify`: the log or the checkpoint was altered",
                    )
            checkpoint = None
            if latest is not None:
                try:
                    checkpoint, _ = parse_checkpoint(latest.note)
                except VerificationError as error:
                    raise AuditError(
                        f"the stored checkpoint at size {latest.size} is malformed: {error.message}",
                        hint="run `aegis audit verify`",
                    ) from error
            yield header_line(origin, size, None if latest is None else latest.note, proofs)
            query = select(audit_records).where(audit_records.c.origin == origin).order_by(audit_records.c.seq)
            written = 0
            for row in conn.execution_options(yield_per=1000).execute(query):
                stored = stored_record(row)
                if stored.seq != written or written >= size:
                    raise AuditError(
                        f"the log's records are not contiguous at seq {written}", hint="run `aegis audit verify`"
                    )
                proof = None
                if tree is not None and checkpoint is not None and stored.seq < checkpoint.size:
                    proof = (checkpoint, tree.inclusion_proof(stored.seq))
                yield record_line(stored.seq, stored.record, proof)
                written += 1
            if written != size:
                raise AuditError(f"the head row says {size} records, found {written}", hint="run `aegis audit verify`")
    except SQLAlchemyError as error:
        raise AuditError(f"reading the audit log failed: {str(error)[:300]}", hint=_DB_HINT) from error
    finally:
        engine.dispose()


# ----------------------------------------------------------------------------------------------------------------------
# list and tail


@dataclasses.dataclass(frozen=True)
class RecordFilter:
    tool: str | None = None
    effect: str | None = None
    agent: str | None = None
    session: str | None = None
    rule: str | None = None  # a determining rule id; only in the body, so matched after parsing it
    since: str | None = None  # RFC 3339 or a relative age (15m, 2h, 1d) as given by the user
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


@dataclasses.dataclass(frozen=True)
class RecordListing:
    records: list[RecordSummary]  # in seq order
    unreadable: tuple[int, ...] = ()  # seqs whose body did not parse, so --rule could not be decided


_RELATIVE = re.compile(r"([0-9]{1,9})([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time_arg(text: str, flag: str, now: dt.datetime | None = None) -> str:
    """An RFC 3339 time with a zone, or an age before `now` such as 30s, 15m, 2h, 1d, 1w, as the store's column
    spelling (UTC, 6 digits), so that string order is time order."""
    relative = _RELATIVE.fullmatch(text)
    if relative:
        moment = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(
            seconds=int(relative.group(1)) * _UNIT_SECONDS[relative.group(2)]
        )
        return format_time(moment)
    return parse_rfc3339(text, flag)


def parse_rfc3339(text: str, flag: str) -> str:
    """A user's RFC 3339 time as the store's column spelling (UTC, 6 digits), so string order is time order."""
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise AuditError(
            f"{flag} {text!r} is not an RFC 3339 time with a zone, nor an age like 15m, 2h or 1d",
            hint=f"e.g. {flag} 2026-11-29T10:00:00Z or {flag} 2h",
        )
    return format_time(moment)


_SUMMARY_COLUMNS = ("seq", "time", "type", "decision", "tool", "agent_id", "session_id", "key_id")


def _summary(row: Any) -> RecordSummary:
    return RecordSummary(**{name: getattr(row, name) for name in _SUMMARY_COLUMNS})


def list_records(url: str, origin: str, record_filter: RecordFilter) -> RecordListing:
    """Records of `origin` matching every given filter, in seq order (with `limit`: the most recent ones).

    Column filters run in SQL. `rule` is only in the signed body: bodies are parsed (strictly, record.parse_body)
    newest first until `limit` matches; a body that does not parse is reported in `unreadable`, never guessed."""
    if record_filter.effect is not None and record_filter.effect not in EFFECTS:
        raise AuditError(f"--effect {record_filter.effect!r} is not an effect", hint=f"one of {', '.join(EFFECTS)}")
    if record_filter.limit is not None and record_filter.limit < 1:
        raise AuditError(f"--limit {record_filter.limit} must be at least 1", hint="e.g. --limit 50")
    columns = audit_records.c
    selected = [getattr(columns, name) for name in _SUMMARY_COLUMNS]
    if record_filter.rule is not None:
        selected.append(columns.body)
    query = select(*selected).where(columns.origin == origin)
    for column, value in (
        (columns.tool, record_filter.tool),
        (columns.decision, record_filter.effect),
        (columns.agent_id, record_filter.agent),
        (columns.session_id, record_filter.session),
    ):
        if value is not None:
            query = query.where(column == value)
    if record_filter.since is not None:
        query = query.where(columns.time >= parse_time_arg(record_filter.since, "--since"))
    if record_filter.until is not None:
        query = query.where(columns.time <= parse_time_arg(record_filter.until, "--until"))
    query = query.order_by(columns.seq.desc())
    if record_filter.limit is not None and record_filter.rule is None:
        query = query.limit(record_filter.limit)
    engine = open_log(url)
    found: list[RecordSummary] = []
    unreadable: list[int] = []
    try:
        with _snapshot(engine) as conn, conn.begin():
            _head(conn, origin)  # an unknown origin is a usage error, not an empty list
            for row in conn.execution_options(yield_per=1000).execute(query):
                if record_filter.rule is not None:
                    try:
                        rules = parse_body(column_bytes(row.body)).rules
                    except VerificationError:
                        unreadable.append(row.seq)
                        continue
                    if record_filter.rule not in rules:
                        continue
                found.append(_summary(row))
                if record_filter.limit is not None and len(found) >= record_filter.limit:
                    break
    except SQLAlchemyError as error:
        raise AuditError(f"reading the audit log failed: {str(error)[:300]}", hint=_DB_HINT) from error
    finally:
        engine.dispose()
    return RecordListing(list(reversed(found)), tuple(sorted(unreadable)))


def follow_records(
    url: str, origin: str, after_seq: int, interval: float = 0.5, stop: Callable[[], bool] | None = None
) -> Iterator[RecordSummary]:
    """Records with seq > `after_seq` as they are appended, polling every `interval` seconds on a read-only
    connection (each poll its own short transaction, so it never holds a snapshot or blocks a writer). Runs until
    `stop()` is true or the consumer stops iterating."""
    if not interval > 0:
        raise AuditError(f"--interval {interval} must be positive", hint="e.g. --interval 0.5")
    columns = audit_records.c
    engine = open_log(url)
    try:
        with engine.connect() as conn:
            _head(conn, origin)
            conn.rollback()
        last = after_seq
        while stop is None or not stop():
            query = (
                select(*(getattr(columns, name) for name in _SUMMARY_COLUMNS))
                .where(columns.origin == origin, columns.seq > last)
                .order_by(columns.seq)
                .limit(1000)
            )
            with engine.connect() as conn:
                rows = conn.execute(query).all()
                conn.rollback()
            for row in rows:
                last = row.seq
                yield _summary(row)
            if len(rows) < 1000:
                time.sleep(interval)
    except SQLAlchemyError as error:
        raise AuditError(f"reading the audit log failed: {str(error)[:300]}", hint=_DB_HINT) from error
    finally:
        engine.dispose()


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


def describe_key_file(path: str | os.PathLike[str], first_seq: int = 0) -> GeneratedKey:
    """The trusted-keys entry of an existing key file (e.g. the one `aegis run` generated on first start). The file
    is opened with the same checks as when it signs (0600, owned by this user)."""
    if first_seq < 0:
        raise AuditError(f"--first-seq {first_seq} must be >= 0", hint="the seq of the first record it signs")
    public = load_key(path).public_key()
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
