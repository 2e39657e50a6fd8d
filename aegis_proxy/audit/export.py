"""The JSON-lines export of an audit log and its offline verification (audit/FORMAT.md section 10).

An export is self-contained evidence: a header line (format, origin, record count, the latest stored checkpoint),
then one line per record with the exact body bytes (base64), leaf hash, key id, signature and, optionally, an
inclusion proof against the header's checkpoint. `verify_export` runs the log verifier's checks on it without a
database. Every line must be byte-identical to what the exporter writes, so one export has exactly one byte form and
any changed byte is reported with its line number; malformed input only ever raises VerificationError.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aegis_proxy.audit.checkpoint import Checkpoint, parse_checkpoint, verify_checkpoint_keys
from aegis_proxy.audit.errors import VerificationError
from aegis_proxy.audit.keys import TrustedKey, verify_rotation
from aegis_proxy.audit.merkle import (
    MerkleFrontier,
    consistency_proof,
    verify_consistency,
    verify_inclusion,
)
from aegis_proxy.audit.record import MAX_SAFE_INTEGER, ZERO_HASH, RecordBody, SignedRecord, verify_record
from aegis_proxy.strict_json import object_without_duplicates

EXPORT_FORMAT = "aegis-audit-export"
EXPORT_VERSION = 1
# A body is at most 1 MiB (record.MAX_BODY_BYTES), 1.4 MiB in base64; a proof adds at most 64 hashes.
MAX_LINE_CHARS = 2 * 1024 * 1024

# Shared by `aegis audit verify` on a database (commands.VERIFY_STEPS) and on an export: steps 7 and 8 are the same.
TRUSTED_CHECKPOINT_STEPS: tuple[str, str] = (
    "trusted checkpoints are signed by trusted keys and name this log",
    "the log is a consistent extension of every trusted checkpoint",
)
EXPORT_STEPS: tuple[str, ...] = (
    "the header names the format, the log, its record count and whether proofs are included",
    "every line is a well-formed record line, seq contiguous from 0, as many as the header says",
    "every record verifies on its own (canonical body, leaf hash, trusted key, signature)",
    "every body names this log and its line's seq, and its prev is the leaf hash of the record before",
    "the header's checkpoint is signed by a trusted key and is the root of the first records",
    "every inclusion proof leads from its record to the checkpoint's root",
    *TRUSTED_CHECKPOINT_STEPS,
)

_HEADER_FIELDS = frozenset({"format", "v", "origin", "records", "checkpoint", "proofs"})
_RECORD_FIELDS = frozenset({"seq", "body", "leaf_hash", "key_id", "signature", "proof"})
_PROOF_FIELDS = frozenset({"size", "root", "hashes"})
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX32 = re.compile(r"[0-9a-f]{32}")
_HEX128 = re.compile(r"[0-9a-f]{128}")
_ORIGIN = re.compile(r"[\x21-\x7e]{1,256}")


class AnchorError(VerificationError):
    """A checkpoint does not match the log; `size` is the checkpoint's tree size (records 0..size-1)."""

    def __init__(self, message: str, *, size: int, index: int | None = None, hint: str | None = None) -> None:
        if hint is None:
            super().__init__(message, index=index)
        else:
            super().__init__(message, index=index, hint=hint)
        self.size = size


# ----------------------------------------------------------------------------------------------------------------------
# Writing


def dump_line(value: Mapping[str, Any]) -> str:
    """The one byte form of an export line: compact JSON, sorted keys, ASCII only, ending in a newline."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True) + "\n"


def header_line(origin: str, records: int, checkpoint_note: str | None, proofs: bool) -> str:
    return dump_line(
        {
            "format": EXPORT_FORMAT,
            "v": EXPORT_VERSION,
            "origin": origin,
            "records": records,
            "checkpoint": checkpoint_note,
            "proofs": proofs,
        }
    )


def record_line(seq: int, record: SignedRecord, proof: tuple[Checkpoint, Sequence[bytes]] | None = None) -> str:
    """One record; `proof` is (checkpoint, inclusion path) for records the checkpoint covers."""
    return dump_line(
        {
            "seq": seq,
            "body": base64.b64encode(record.body_bytes).decode("ascii"),
            "leaf_hash": record.leaf_hash.hex(),
            "key_id": record.key_id,
            "signature": record.signature.hex(),
            "proof": None
            if proof is None
            else {"size": proof[0].size, "root": proof[0].root.hex(), "hashes": [h.hex() for h in proof[1]]},
        }
    )


# ----------------------------------------------------------------------------------------------------------------------
# Checks shared with the database verifier


def roots_at(leaves: Sequence[bytes], sizes: Iterable[int]) -> dict[int, bytes]:
    """Merkle roots of the prefixes of `leaves` of the given sizes (each <= len(leaves)), in one O(n) pass."""
    wanted = sorted(set(sizes))
    frontier, roots = MerkleFrontier(), {}
    for size in wanted:
        while frontier.size < size:
            frontier.append(leaves[frontier.size])
        roots[size] = frontier.root()
    return roots


def check_trusted_checkpoints(
    notes: Sequence[str], origin: str, leaves: Sequence[bytes], trusted_keys: Mapping[str, TrustedKey]
) -> tuple[int, ...]:
    """Steps 7 and 8: each trusted note is signed by a trusted key for `origin`, and the log (its leaf hashes, all
    verified already) is a consistent extension of it. Returns the trusted sizes, ascending.

    Fewer records than a trusted size is truncation or a restored backup; the same size with another root is a fork;
    otherwise an RFC 9162 consistency proof built from the log must verify from the trusted root to the log's root.
    """
    checkpoints: list[Checkpoint] = []
    for number, note in enumerate(notes, start=1):
        try:
            checkpoint = verify_checkpoint_keys(note, trusted_keys)
        except VerificationError as error:
            raise VerificationError(f"step 7: trusted checkpoint {number}: {error.message}", hint=error.hint) from error
        if checkpoint.origin != origin:
            raise VerificationError(
                f"step 7: trusted checkpoint {number} is of log {checkpoint.origin[:256]!r}, not {origin!r}",
                hint="give the checkpoints exported from this log",
            )
        checkpoints.append(checkpoint)
    by_size: dict[int, Checkpoint] = {}
    for checkpoint in checkpoints:
        other = by_size.setdefault(checkpoint.size, checkpoint)
        if other.root != checkpoint.root:
            raise AnchorError(
                f"step 8: fork: two trusted checkpoints of size {checkpoint.size} have different roots",
                size=checkpoint.size,
                hint="the log signed two histories; keep both notes as evidence and stop trusting the log",
            )
    if not by_size:
        return ()  # nothing to prove; hashing the whole tree would cost as much as step 6
    size = len(leaves)
    log_root = roots_at(leaves, [size])[size]
    for old in sorted(by_size.values(), key=lambda c: c.size):
        if old.size > size:
            raise AnchorError(
                f"step 8: the log has {size} records but a trusted checkpoint has {old.size}: records "
                f"{size}..{old.size - 1} were deleted, or an older backup was restored",
                size=old.size,
                index=size,
                hint="restore the missing records from a backup made after that checkpoint; the log was truncated",
            )
        if old.size == size and old.root != log_root:
            raise AnchorError(
                f"step 8: fork: the log's root at size {size} differs from the trusted checkpoint of the same size",
                size=size,
                hint="the records before that size were rewritten (a fork); keep the checkpoint as evidence",
            )
        proof = consistency_proof(old.size, leaves)
        try:
            verify_consistency(old.size, size, old.root, log_root, proof)
        except VerificationError as error:
            raise AnchorError(
                f"step 8: the log is not an extension of the trusted checkpoint at size {old.size}: {error.message}",
                size=old.size,
                hint="the records before that size were rewritten (a fork); keep the checkpoint as evidence",
            ) from error
    return tuple(sorted(by_size))


# ----------------------------------------------------------------------------------------------------------------------
# Verifying an export


@dataclasses.dataclass(frozen=True)
class ExportReport:
    """What a verified export proved."""

    origin: str
    records: int
    checkpoint_size: int | None  # the header's checkpoint, verified against the records
    proofs: int  # inclusion proofs verified
    trusted_sizes: tuple[int, ...]  # trusted checkpoints the records extend

    @property
    def anchored(self) -> int:
        """Records 0..anchored-1 are pinned by a trusted checkpoint; the rest are unanchored."""
        return max(self.trusted_sizes, default=0)


def _fail(step: int, number: int, message: str, seq: int | None = None) -> VerificationError:
    return VerificationError(f"step {step}: line {number}: {message}", index=seq)


def _parse_line(raw: str | bytes, number: int, step: int) -> dict[str, Any]:
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _fail(step, number, "is not UTF-8") from None
    if not isinstance(raw, str):
        raise _fail(step, number, f"is a {type(raw).__name__}, not text")
    if len(raw) > MAX_LINE_CHARS:
        raise _fail(step, number, f"is longer than {MAX_LINE_CHARS} characters")
    if not raw.endswith("\n"):
        raise _fail(step, number, "does not end with a newline (the file was truncated)")
    text = raw[:-1]
    try:
        value = json.loads(
            text,
            object_pairs_hook=object_without_duplicates,
            parse_float=_reject_float,
            parse_constant=_reject_constant,
        )
    except (ValueError, RecursionError) as error:
        raise _fail(step, number, f"is not JSON: {_printable(str(error))[:200]}") from None
    if not isinstance(value, dict):
        raise _fail(step, number, "is not a JSON object")
    try:
        canonical = dump_line(value)[:-1]
    except (ValueError, RecursionError):  # e.g. integers too large to print
        canonical = None
    if canonical != text:
        raise _fail(step, number, "is not byte-identical to the exporter's form (compact, sorted keys, ASCII)")
    return value


def _reject_float(text: str) -> Any:
    raise ValueError(f"non-integer number {text[:30]}")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in text)


def _fields(value: dict[str, Any], expected: frozenset[str], what: str, step: int, number: int) -> None:
    if value.keys() != expected:
        missing, extra = sorted(expected - value.keys()), sorted(value.keys() - expected)
        message = f"{what} fields wrong: missing {missing}, unexpected {[_printable(k)[:40] for k in extra[:5]]}"
        raise _fail(step, number, message)


def _is_int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _hex(value: Any, pattern: re.Pattern[str], what: str, step: int, number: int, seq: int | None) -> bytes:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise _fail(step, number, f"{what} is not lowercase hex of the right length", seq)
    return bytes.fromhex(value)


def _base64(value: Any, step: int, number: int, seq: int) -> bytes:
    if not isinstance(value, str):
        raise _fail(step, number, "body is not a base64 string", seq)
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise _fail(step, number, "body is not base64", seq) from None
    if base64.b64encode(raw).decode("ascii") != value:  # padding bits and '=' must be canonical: one spelling
        raise _fail(step, number, "body is not canonical base64", seq)
    return raw


@dataclasses.dataclass(frozen=True)
class _Header:
    origin: str
    records: int
    checkpoint: Checkpoint | None
    note: str | None
    proofs: bool


def _header(raw: str | bytes) -> _Header:
    value = _parse_line(raw, 1, 1)
    _fields(value, _HEADER_FIELDS, "header", 1, 1)
    if value["format"] != EXPORT_FORMAT:
        raise _fail(1, 1, f"format is not {EXPORT_FORMAT!r}")
    if not _is_int(value["v"], EXPORT_VERSION, EXPORT_VERSION):
        raise _fail(1, 1, f"version is not {EXPORT_VERSION}")
    origin, records, note, proofs = value["origin"], value["records"], value["checkpoint"], value["proofs"]
    if not isinstance(origin, str) or not _ORIGIN.fullmatch(origin):
        raise _fail(1, 1, "origin is not 1..256 printable ASCII characters without spaces")
    if not _is_int(records, 0, MAX_SAFE_INTEGER):
        raise _fail(1, 1, "records is not a record count")
    if not isinstance(proofs, bool):
        raise _fail(1, 1, "proofs is not true or false")
    checkpoint = None
    if note is not None:
        if not isinstance(note, str):
            raise _fail(1, 1, "checkpoint is not a signed note (text) or null")
        try:
            checkpoint, _ = parse_checkpoint(note)
        except VerificationError as error:
            raise _fail(1, 1, f"checkpoint: {error.message}") from error
        if checkpoint.origin != origin:
            raise _fail(1, 1, f"checkpoint is of log {checkpoint.origin!r}, not {origin!r}")
        if checkpoint.size > records:
            raise _fail(1, 1, f"checkpoint size {checkpoint.size} is larger than the {records} records")
    elif proofs:
        raise _fail(1, 1, "proofs are announced but there is no checkpoint to prove against")
    return _Header(origin, records, checkpoint, note, proofs)


def _record(value: dict[str, Any], number: int, expected_seq: int) -> tuple[SignedRecord, Any]:
    _fields(value, _RECORD_FIELDS, "record", 2, number)
    seq = value["seq"]
    if not _is_int(seq, 0, MAX_SAFE_INTEGER) or seq != expected_seq:
        raise _fail(2, number, f"seq {_printable(str(seq))[:30]} is not the expected seq {expected_seq}", expected_seq)
    key_id = value["key_id"]
    if not isinstance(key_id, str) or not _HEX32.fullmatch(key_id):
        raise _fail(2, number, "key_id is not 32 lowercase hex digits", seq)
    record = SignedRecord(
        body_bytes=_base64(value["body"], 2, number, seq),
        leaf_hash=_hex(value["leaf_hash"], _HEX64, "leaf_hash", 2, number, seq),
        key_id=key_id,
        signature=_hex(value["signature"], _HEX128, "signature", 2, number, seq),
    )
    return record, value["proof"]


def _check_proof(proof: Any, header: _Header, record: SignedRecord, seq: int, number: int) -> bool:
    """Step 6 for one record: True if a proof was verified. Which records carry one is fixed by the header."""
    checkpoint = header.checkpoint
    expected = header.proofs and checkpoint is not None and seq < checkpoint.size
    if proof is None:
        if expected:
            raise _fail(6, number, "has no inclusion proof although the header announces proofs", seq)
        return False
    if not expected or checkpoint is None:
        raise _fail(6, number, "has an inclusion proof the header does not announce", seq)
    if not isinstance(proof, dict):
        raise _fail(6, number, "proof is not an object", seq)
    _fields(proof, _PROOF_FIELDS, "proof", 6, number)
    if proof["size"] != checkpoint.size or isinstance(proof["size"], bool):
        raise _fail(6, number, f"proof is for size {_printable(str(proof['size']))[:30]}, not {checkpoint.size}", seq)
    if _hex(proof["root"], _HEX64, "proof root", 6, number, seq) != checkpoint.root:
        raise _fail(6, number, "proof root is not the checkpoint's root", seq)
    hashes = proof["hashes"]
    if not isinstance(hashes, list) or len(hashes) > 64:
        raise _fail(6, number, "proof hashes are not a list of at most 64 hashes", seq)
    path = [_hex(h, _HEX64, "proof hash", 6, number, seq) for h in hashes]
    try:
        verify_inclusion(seq, checkpoint.size, record.leaf_hash, path, checkpoint.root)
    except VerificationError as error:
        raise _fail(6, number, f"inclusion proof fails: {error.message}", seq) from error
    return True


def verify_export(
    lines: Iterable[str | bytes],
    trusted_keys: Mapping[str, TrustedKey],
    trusted_checkpoints: Sequence[str] = (),
) -> ExportReport:
    """Verify an export (its lines, each ending in a newline, as read from the file) against trusted keys and,
    optionally, trusted checkpoint notes. Raises VerificationError ("step N: line L: ...", index = seq) on the first
    problem; malformed input of any kind raises nothing else.
    """
    iterator = iter(lines)
    first = next(iterator, None)
    if first is None:
        raise VerificationError("step 1: line 1: the export is empty (no header)")
    header = _header(first)
    leaves: list[bytes] = []
    prev_leaf = ZERO_HASH
    proof_failure: VerificationError | None = None  # step 6 is reported after steps 2-5 have seen every line
    proofs = 0
    for number, raw in enumerate(iterator, start=2):
        seq = number - 2
        if seq >= header.records:
            raise _fail(2, number, f"is beyond the {header.records} records the header announces", seq)
        record, proof = _record(_parse_line(raw, number, 2), number, seq)
        try:
            body = verify_record(record, trusted_keys)
            if body.type == "key_rotation":
                body = verify_rotation(record, trusted_keys)
        except VerificationError as error:
            raise _fail(3, number, f"seq {seq} does not verify: {error.message}", seq) from error
        _check_link(body, header.origin, seq, prev_leaf, number)
        if proof_failure is None:
            try:
                proofs += _check_proof(proof, header, record, seq, number)
            except VerificationError as error:
                proof_failure = error
        leaves.append(record.leaf_hash)
        prev_leaf = record.leaf_hash.hex()
    if len(leaves) != header.records:
        raise VerificationError(
            f"step 2: line {len(leaves) + 2}: the export ends after {len(leaves)} of the {header.records} records "
            "the header announces (lines were deleted or the file was truncated)",
            index=len(leaves),
        )
    _check_header_checkpoint(header, leaves, trusted_keys)
    if proof_failure is not None:
        raise proof_failure
    trusted_sizes = check_trusted_checkpoints(trusted_checkpoints, header.origin, leaves, trusted_keys)
    checkpoint_size = None if header.checkpoint is None else header.checkpoint.size
    return ExportReport(header.origin, len(leaves), checkpoint_size, proofs, trusted_sizes)


def _check_link(body: RecordBody, origin: str, seq: int, prev_leaf: str, number: int) -> None:
    if body.origin != origin:
        raise _fail(4, number, f"seq {seq}: body is of log {body.origin!r}, not {origin!r}", seq)
    if body.seq != seq:
        raise _fail(4, number, f"seq {seq}: body says seq {body.seq}", seq)
    if body.prev != prev_leaf:
        raise _fail(4, number, f"seq {seq}: prev is not the leaf hash of seq {seq - 1}", seq)


def _check_header_checkpoint(header: _Header, leaves: Sequence[bytes], trusted_keys: Mapping[str, TrustedKey]) -> None:
    if header.checkpoint is None or header.note is None:
        return
    try:
        verify_checkpoint_keys(header.note, trusted_keys)
    except VerificationError as error:
        raise VerificationError(f"step 5: line 1: checkpoint: {error.message}", hint=error.hint) from error
    size = header.checkpoint.size
    if roots_at(leaves, [size])[size] != header.checkpoint.root:
        raise AnchorError(
            f"step 5: line 1: the checkpoint's root is not the root of the first {size} records", size=size
        )
