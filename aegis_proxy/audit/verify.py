"""Verifying an audit log's chain: steps 1-5 of `aegis audit verify` (audit/FORMAT.md), over the rows of one log in
seq order, in this process or in worker processes chunk by chunk, with the same first failure and message either way.

Each row is first checked in one pass (`_passes_plainly`: the common case, without building objects); a row it does
not pass goes through the step-by-step check (`_check_row`), which decides and names the failure. Steps 6-8 (stored
and trusted checkpoints) are `commands.verify_log`'s.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import itertools
import multiprocessing
import operator
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from aegis_proxy.audit.errors import VerificationError
from aegis_proxy.audit.keys import TrustedKey, verify_rotation
from aegis_proxy.audit.merkle import leaf_hash
from aegis_proxy.audit.record import (
    SIGNATURE_BYTES,
    ZERO_HASH,
    SignedRecord,
    parse_body,
    signing_message,
    verify_record,
)
from aegis_proxy.audit.store import (
    INDEXED_COLUMNS,
    READ_ONLY,
    ZERO_LEAF,
    AuditStore,
    StoredRecord,
    column_bytes,
    stored_from_values,
    verify_query,
)

_CHUNK = 1024  # rows per unit of work: large enough that handing it to a worker costs little per row

# What the chain check needs from one record that verified on its own: (prev, origin, seq, indexed field values);
# or, when it did not verify, the error message.
_Outcome = tuple[str, str, int, tuple[Any, ...]] | str
# A failure as it crosses a process boundary: (message, seq or None, hint or None).
_Failure = tuple[str, int | None, str | None]


@dataclasses.dataclass(frozen=True)
class ChainResult:
    """What verifying rows in order found: records 0..verified-1 passed steps 1-4; `error` names the first that
    did not (None when every row passed)."""

    verified: int
    last_leaf: bytes | None
    error: VerificationError | None


@dataclasses.dataclass(frozen=True)
class _Continuation:
    """Where a run of rows continues the chain, assuming every earlier row verified (if one did not, its error is
    reported first and this is never looked at)."""

    expected_seq: int
    prev_leaf: bytes | None  # None before seq 0: prev must be 64 zeros
    origin: str | None  # None until the first row names the log


def _verify_one(record: SignedRecord, rotation: bool, trusted_keys: Mapping[str, TrustedKey]) -> _Outcome:
    try:
        body = (verify_rotation if rotation else verify_record)(record, trusted_keys)
    except VerificationError as error:
        return error.message
    except Exception as error:  # a verifier bug must not pass a record, nor crash without saying which one
        return f"verifier error {type(error).__name__}: {str(error)[:200]}"
    return body.prev, body.origin, body.seq, tuple(getattr(body, name) for name in INDEXED_COLUMNS)


def _check_link(
    stored: StoredRecord, outcome: _Outcome, expected_seq: int, prev_leaf: bytes | None, origin: str
) -> None:
    """Steps 1-4 for one record; raises VerificationError naming the step."""
    seq = stored.seq
    if seq != expected_seq:
        raise VerificationError(f"step 1: expected seq {expected_seq}, found seq {seq} (gap or reorder)", index=seq)
    if isinstance(outcome, str):
        raise VerificationError(f"step 2: seq {seq} does not verify: {outcome}", index=seq)
    body_prev, body_origin, body_seq, body_indexed = outcome
    expected_prev = ZERO_HASH if prev_leaf is None else prev_leaf.hex()
    if body_prev != expected_prev or stored.prev_hash.hex() != expected_prev:
        raise VerificationError(f"step 3: seq {seq}: prev is not the leaf hash of seq {seq - 1}", index=seq)
    if body_indexed == tuple(stored.columns.values()) and body_origin == stored.origin == origin and body_seq == seq:
        return  # the common case, in one comparison; the rest names what differs
    mismatched = [
        name for name, value in zip(INDEXED_COLUMNS, body_indexed, strict=True) if stored.columns.get(name) != value
    ]
    if body_origin != stored.origin or stored.origin != origin:
        mismatched.insert(0, "origin")
    if body_seq != seq:
        mismatched.insert(0, "seq")
    if mismatched:
        raise VerificationError(
            f"step 4: seq {seq}: column(s) {', '.join(mismatched)} differ from the signed body", index=seq
        )


def _check_rows(
    rows: Sequence[Sequence[Any]], start: _Continuation, trusted_keys: Mapping[str, TrustedKey]
) -> tuple[int, _Failure | None]:
    """Steps 1-4 over consecutive rows continuing `start`: (rows that passed, the first failure or None)."""
    expected_seq, prev_leaf, origin = start.expected_seq, start.prev_leaf, start.origin
    for passed, values in enumerate(rows):
        leaf = _passes_plainly(values, expected_seq, prev_leaf, origin, trusted_keys)
        if leaf is None:  # the quick check did not pass the row: the reference check decides, and names the failure
            try:
                leaf = _check_row(values, expected_seq, prev_leaf, origin, trusted_keys)
            except VerificationError as error:
                return passed, (error.message, error.index, error.hint)
        origin = str(values[0]) if origin is None else origin  # one log, one origin: the first row's
        prev_leaf, expected_seq = leaf, expected_seq + 1
    return len(rows), None


def _check_row(
    values: Sequence[Any],
    expected_seq: int,
    prev_leaf: bytes | None,
    origin: str | None,
    trusted_keys: Mapping[str, TrustedKey],
) -> bytes:
    """Steps 1-4 for one row, the reference check: its leaf hash, or VerificationError naming the step."""
    stored = stored_from_values(values)
    rotation = stored.columns.get("type") == "key_rotation"
    chain_origin = stored.origin if origin is None else origin
    _check_link(stored, _verify_one(stored.record, rotation, trusted_keys), expected_seq, prev_leaf, chain_origin)
    return stored.record.leaf_hash


_indexed_fields = operator.attrgetter(*INDEXED_COLUMNS)


def _passes_plainly(
    values: Sequence[Any],
    expected_seq: int,
    prev_leaf: bytes | None,
    origin: str | None,
    trusted_keys: Mapping[str, TrustedKey],
) -> bytes | None:
    """The row's leaf hash if it passes steps 1-4 as an ordinary (non-rotation) record with well-typed columns,
    else None. The checks of _check_row in one pass, without building its objects (a log verifies millions of rows,
    and this halves the work besides the signature); anything unusual is left to _check_row, so this never passes a
    row that _check_row would refuse, and every failure is still _check_row's to name."""
    try:
        row_origin, seq, body_bytes, leaf, kid, signature, prev = values[:7]
        indexed = tuple(values[7:])
        if not (
            type(seq) is int
            and seq == expected_seq
            and type(row_origin) is str
            and (origin is None or row_origin == origin)
            and type(body_bytes) is bytes
            and type(leaf) is bytes
            and type(kid) is str
            and type(signature) is bytes
            and len(signature) == SIGNATURE_BYTES
            and type(prev) is bytes
            and indexed[1] != "key_rotation"  # the type column; rotations take verify_rotation
        ):
            return None
        trusted = trusted_keys.get(kid)
        if trusted is None:
            return None
        body = parse_body(body_bytes)
        expected_prev = ZERO_HASH if prev_leaf is None else prev_leaf.hex()
        if (
            leaf_hash(body_bytes) == leaf
            and body.key_id == kid
            and trusted.covers(body.seq)
            and body.seq == seq
            and body.origin == row_origin
            and body.prev == expected_prev
            and prev.hex() == expected_prev
            and _indexed_fields(body) == indexed
            and trusted.verifies(signature, signing_message(leaf))
        ):
            return leaf
    except Exception:  # whatever went wrong, the reference check says it properly
        pass
    return None


class _Chunks:
    """Rows as picklable tuples, in chunks, each with where it continues the chain. Keeps the last row's leaf hash
    column, and every one in `leaves` when given (they are verified once the whole chain is)."""

    def __init__(self, rows: Iterable[Sequence[Any]], origin: str | None, leaves: list[bytes] | None) -> None:
        self._rows, self._origin, self._leaves = iter(rows), origin, leaves
        self.last_leaf: bytes | None = None

    def __iter__(self) -> Iterator[tuple[list[tuple[Any, ...]], _Continuation]]:
        start = _Continuation(0, None, self._origin)
        plain: Callable[[Sequence[Any]], tuple[Any, ...]] | None = None
        while chunk := list(itertools.islice(self._rows, _CHUNK)):
            if plain is None:  # psycopg2 returns bytea as memoryview, which cannot be pickled to a worker
                plain = _without_memoryviews if any(type(value) is memoryview for value in chunk[0]) else tuple
            chunk = [plain(row) for row in chunk]
            if self._leaves is not None:
                self._leaves.extend(column_bytes(values[3]) for values in chunk)
            self.last_leaf = column_bytes(chunk[-1][3])
            yield chunk, start
            origin = str(chunk[0][0]) if start.origin is None else start.origin
            start = _Continuation(start.expected_seq + len(chunk), self.last_leaf, origin)


def _without_memoryviews(row: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(bytes(value) if isinstance(value, memoryview) else value for value in row)


_worker_keys: dict[str, TrustedKey] = {}


def _init_worker(keys: list[tuple[str, bytes, int, int | None]]) -> None:
    global _worker_keys
    _worker_keys = {kid: TrustedKey(kid, Ed25519PublicKey.from_public_bytes(raw), a, b) for kid, raw, a, b in keys}


def _check_rows_in_worker(rows: list[tuple[Any, ...]], start: _Continuation) -> tuple[int, _Failure | None]:
    return _check_rows(rows, start, _worker_keys)


def _checked_in_workers(
    chunks: Iterator[tuple[list[tuple[Any, ...]], _Continuation]], trusted_keys: Mapping[str, TrustedKey], workers: int
) -> Iterator[tuple[int, _Failure | None]]:
    """_check_rows over every chunk in `workers` processes, results in chunk order, a few chunks read ahead."""
    keys = [(t.key_id, t.raw, t.first_seq, t.last_seq) for t in trusted_keys.values()]
    # fork starts workers in milliseconds; with other threads running (a proxy), fork is unsafe, so spawn.
    method = "fork" if threading.active_count() == 1 and "fork" in multiprocessing.get_all_start_methods() else "spawn"
    pool = concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context(method), initializer=_init_worker, initargs=(keys,)
    )
    pending: collections.deque[concurrent.futures.Future[tuple[int, _Failure | None]]] = collections.deque()
    try:
        for chunk, start in itertools.islice(chunks, 2 * workers):
            pending.append(pool.submit(_check_rows_in_worker, chunk, start))
        while pending:
            result = pending.popleft().result()
            for chunk, start in itertools.islice(chunks, 1):
                pending.append(pool.submit(_check_rows_in_worker, chunk, start))
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def verify_rows(
    rows: Iterable[Sequence[Any]],
    trusted_keys: Mapping[str, TrustedKey],
    *,
    origin: str | None = None,
    workers: int = 1,
    leaves: list[bytes] | None = None,
) -> ChainResult:
    """Steps 1-4 of verify_chain over rows of VERIFY_COLUMNS in seq order (verify_query); never raises for a bad row.

    With `workers` > 1 the rows are checked in that many processes, chunk by chunk; the parent only reads rows and
    tells each chunk where it continues the chain, so the first failure and its message are the same as with one.
    """
    reader = _Chunks(rows, origin, leaves)
    chunks = iter(reader)
    if workers <= 1:
        results: Iterator[tuple[int, _Failure | None]] = (_check_rows(c, s, trusted_keys) for c, s in chunks)
    else:
        results = _checked_in_workers(chunks, trusted_keys, workers)
    verified = 0
    try:
        for passed, failure in results:
            verified += passed
            if failure is not None:
                message, index, hint = failure
                return ChainResult(verified, None, VerificationError(message, index=index, hint=hint))
        return ChainResult(verified, reader.last_leaf, None)
    finally:
        # A failure leaves the generators suspended, each holding a database transaction open (a lock that blocks
        # DDL, a WAL snapshot); close them now.
        results.close()
        chunks.close()


def verify_chain(
    source: AuditStore | Iterable[StoredRecord], trusted_keys: Mapping[str, TrustedKey], *, workers: int = 1
) -> None:
    """Verify a whole log; raise VerificationError naming the first seq at fault and the step that failed.

    1. seq is contiguous from 0.
    2. Each record verifies on its own (record.verify_record; key rotations also keys.verify_rotation).
    3. Each record's prev equals the previous record's leaf hash (and the prev_hash column equals it).
    4. The columns origin (one for all records), seq, time, type, tool, decision, agent_id and session_id equal the
       body's fields.
    5. The head row matches the last record (only when `source` is an AuditStore).

    With `workers` > 1, steps 1-4 run in that many processes on chunks of records read ahead (verify_rows); the
    error is the same as with one worker.
    """
    if not isinstance(source, AuditStore):
        rows = (
            (
                s.origin,
                s.seq,
                s.record.body_bytes,
                s.record.leaf_hash,
                s.record.key_id,
                s.record.signature,
                s.prev_hash,
                *(s.columns.get(name) for name in INDEXED_COLUMNS),
            )
            for s in source
        )
        result = verify_rows(rows, trusted_keys, workers=workers)
        if result.error is not None:
            raise result.error
        return
    with source.engine.connect().execution_options(**{READ_ONLY: True}) as conn:
        rows = conn.execution_options(yield_per=1000).execute(verify_query(source.origin))
        result = verify_rows(rows, trusted_keys, origin=source.origin, workers=workers)
    if result.error is not None:
        raise result.error
    head_seq, head_leaf = source.head()
    last_leaf = ZERO_LEAF if result.last_leaf is None else result.last_leaf
    if head_seq != result.verified - 1 or head_leaf != last_leaf:
        raise VerificationError(
            f"step 5: head row says seq {head_seq}, but the last record is seq {result.verified - 1}",
            index=result.verified - 1,
        )
