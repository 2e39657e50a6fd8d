"""Audit records: the body schema, its RFC 8785 canonical bytes, the leaf hash and the Ed25519 record signature.

The body bytes are the source of truth (audit/FORMAT.md). `parse_body` accepts only bytes that are exactly what
`canonical_body` would produce, so one record has exactly one byte representation and one leaf hash.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import nacl.bindings
import rfc8785
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from aegis_proxy.audit.errors import AuditError, VerificationError
from aegis_proxy.audit.keys import TrustedKey, key_id
from aegis_proxy.audit.merkle import leaf_hash  # one RFC 6962 leaf hash for the chain and the tree
from aegis_proxy.strict_json import object_without_duplicates

FORMAT_VERSION = 1
RECORD_DOMAIN = b"aegis-proxy/audit/v1 record\n"
ZERO_HASH = "0" * 64
MAX_SAFE_INTEGER = 2**53 - 1
MAX_BODY_BYTES = 1 << 20  # bounds parsing work on hostile input; real bodies are a few hundred bytes
SIGNATURE_BYTES = 64
PPM = 1_000_000

RecordType = Literal["decision", "approval", "timeout", "policy_reload", "key_rotation"]
EffectName = Literal["allow", "deny", "ask"]
SeverityName = Literal["info", "low", "medium", "high", "critical"]

Hex64 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Hex32 = Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
Hex128 = Annotated[str, Field(pattern=r"^[0-9a-f]{128}$")]
SafeUInt = Annotated[int, Field(ge=0, le=MAX_SAFE_INTEGER)]
# Identifiers: printable, no control characters (they end up in terminals and log lines).
Label = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[^\x00-\x1f\x7f]+$")]
Text = Annotated[str, Field(max_length=4096, pattern=r"^[^\x00-\x1f\x7f]*$")]
Origin = Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[\x21-\x7e]+$")]
_TIME_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z$"  # not \d: Unicode digits


class _Strict(BaseModel):
    # strict: "5" is not a seq and 1.0 is not an int; frozen: a record never changes once built.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


# Fields are declared in RFC 8785 order (sorted), here and in the nested models, so that pydantic's own JSON
# serialiser writes the canonical bytes: the verifier checks a body by re-serialising it (parse_body), millions of
# times.


class FindingSummary(_Strict):
    """What a scanner found, without the matched text (which may be a secret)."""

    category: Label
    path: Text
    severity: SeverityName


class RotationInfo(_Strict):
    """Payload of a `key_rotation` record: the new key and its countersignature (see keys.countersign)."""

    countersignature: Hex128
    new_key_id: Hex32
    new_public_key: Hex64


class RecordBody(_Strict):
    """One audit record. Every field is required on the wire (null where it does not apply); audit/FORMAT.md
    describes them in their logical order (log position, what was decided, by whom)."""

    agent_id: Label | None = None
    approver: Label | None = None
    args_commit: Hex64 | None = None
    decision: EffectName | None = None
    findings: tuple[FindingSummary, ...] = ()
    key_id: Hex32
    latency_us: SafeUInt = 0
    origin: Origin
    policy_digest: Hex64 | None = None
    prev: Hex64
    ref_seq: SafeUInt | None = None
    replica: Label
    request_id: Label | None = None
    rotation: RotationInfo | None = None
    rules: tuple[Label, ...] = ()
    # Risk scores in parts per million (0..1_000_000): JCS serialises floats with ECMAScript's shortest round-trip
    # algorithm, which other languages reproduce unevenly; integers have one spelling everywhere.
    scores: dict[Label, Annotated[int, Field(ge=0, le=PPM)]] = Field(default_factory=dict)
    seq: SafeUInt
    session_id: Label | None = None
    time: Annotated[str, Field(pattern=_TIME_PATTERN)]
    tool: Label | None = None
    type: RecordType
    v: Literal[1] = FORMAT_VERSION

    @model_validator(mode="after")
    def _consistent(self) -> RecordBody:
        if self.seq == 0 and self.prev != ZERO_HASH:
            raise ValueError("seq 0 must have prev = 64 zeros")
        try:  # the pattern fixes the shape; this rejects impossible dates such as 2026-02-30 (40x faster than strptime)
            dt.datetime.fromisoformat(self.time)
        except ValueError as error:
            raise ValueError(f"time is not a valid RFC 3339 UTC timestamp: {self.time!r}") from error
        if (self.type == "key_rotation") != (self.rotation is not None):
            raise ValueError("rotation is required on key_rotation records and forbidden on others")
        if self.type in ("approval", "timeout") and self.ref_seq is None:
            raise ValueError(f"{self.type} records must name the ask record in ref_seq")
        if self.ref_seq is not None and self.ref_seq >= self.seq:
            raise ValueError("ref_seq must point to an earlier record")
        if self.type == "decision" and (self.decision is None or self.args_commit is None):
            raise ValueError("decision records need decision and args_commit")
        return self


@dataclasses.dataclass(frozen=True, slots=True)
class SignedRecord:
    """A body as stored: its exact bytes, their leaf hash, and the signature over the domain-separated leaf hash.

    A plain dataclass, not a pydantic model: a verifier builds one per row, millions of times.
    """

    body_bytes: bytes
    leaf_hash: bytes
    key_id: str
    signature: bytes

    def __post_init__(self) -> None:
        # Strict types, as at every boundary: text where bytes belong is a caller's bug, never coerced.
        if not (
            type(self.body_bytes) is bytes
            and type(self.leaf_hash) is bytes
            and type(self.key_id) is str
            and type(self.signature) is bytes
        ):
            raise TypeError("SignedRecord takes bytes body_bytes, leaf_hash and signature, and a str key_id")


def format_time(moment: dt.datetime) -> str:
    """RFC 3339 in UTC with exactly six fractional digits, e.g. 2026-11-29T10:26:51.000123Z."""
    if moment.tzinfo is None:
        raise AuditError("audit timestamps must be timezone-aware", hint="pass datetime.now(datetime.UTC)")
    # isoformat, not strftime: strftime took 20 us in the running proxy, a tenth of the record's build; it also pads
    # years below 1000 (the pattern wants four digits)
    return moment.astimezone(dt.UTC).isoformat(timespec="microseconds")[:-6] + "Z"  # without "+00:00"


def score_ppm(score: float) -> int:
    """Convert a 0..1 risk score to integer parts per million (clamped), the only form scores take in a body."""
    if score != score:  # NaN
        raise AuditError("risk score is NaN", hint="scanners must produce scores in 0..1")
    return max(0, min(PPM, round(score * PPM)))


def _json_compatible(value: Any) -> bool:
    """True when json.dumps(sort_keys, compact, ensure_ascii=False) is byte-identical to RFC 8785 for `value`.

    That holds without floats (JCS's number formatting) and with ASCII string object keys (JCS sorts keys by UTF-16
    code units, Python by code points, which differ only beyond U+E000; json.dumps would turn other keys into strings
    where JCS refuses them). Python escapes exactly what JCS escapes.
    """
    if isinstance(value, dict):
        return all(isinstance(key, str) and key.isascii() and _json_compatible(item) for key, item in value.items())
    if isinstance(value, list | tuple):
        return all(_json_compatible(item) for item in value)
    if isinstance(value, int):
        return -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER
    return value is None or isinstance(value, str)


def canonical_json(value: Any) -> bytes:
    """RFC 8785 bytes of a JSON value, byte for byte rfc8785.dumps (which raises CanonicalizationError the same way).

    A fast path through the C json encoder for the float-free values bodies and tool arguments hold: rfc8785 is pure
    Python, 10-20x slower, and arguments are canonicalised on every audited call."""
    if _json_compatible(value):
        try:
            return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:  # lone surrogate: let rfc8785 refuse it
            pass
    return rfc8785.dumps(value)


def canonical_arguments(arguments: Any) -> bytes:
    """The RFC 8785 bytes of a call's arguments, as committed to and stored; AuditError, naming the first value
    that has no such form, when they have none."""
    try:
        return canonical_json(arguments)
    except (rfc8785.CanonicalizationError, RecursionError) as error:
        problem = json_problem(arguments, "arguments") or str(error)[:200]
        raise AuditError(
            f"arguments cannot be canonicalised: {problem}",
            hint="arguments must be JSON: no NaN, no integers beyond 2^53",
        ) from error


def schema_problem(error: ValidationError, whole: str = "") -> str:
    """The first thing the record schema refused, as "field: why" (`whole` names the field of a check on the whole
    record, whose location is empty)."""
    first = error.errors()[0]
    return f"{'.'.join(str(part) for part in first['loc']) or whole}: {first['msg']}"


def json_problem(value: Any, path: str, depth: int = 0) -> str:
    """Why `value` has no RFC 8785 form, naming where (e.g. "arguments.n is not a finite number"); "" when it has one.
    Only called once canonicalisation failed: it explains, it does not decide."""
    if depth > 256:
        return f"{path} nests deeper than 256 levels"
    if value is None or isinstance(value, bool):
        return ""
    if isinstance(value, int):
        return "" if abs(value) <= MAX_SAFE_INTEGER else f"{path} is an integer beyond 2^53"
    if isinstance(value, float):
        return "" if value == value and abs(value) != float("inf") else f"{path} is not a finite number"
    if isinstance(value, str):
        return "" if _encodable(value) else f"{path} holds a lone surrogate"
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or not _encodable(key):
                return f"{path} has a key that is not a valid string"
            problem = json_problem(item, f"{path}.{key[:32]}", depth + 1)
            if problem:
                return problem
        return ""
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            problem = json_problem(item, f"{path}[{index}]", depth + 1)
            if problem:
                return problem
        return ""
    return f"{path} is a {type(value).__name__}, not JSON"


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def canonical_body(body: RecordBody) -> bytes:
    """The RFC 8785 bytes of the body: every field present, tuples as arrays."""
    # Fields are declared sorted and the schema admits no floats and only safe integers, so pydantic's serialiser
    # writes RFC 8785 whenever the one free-form object, `scores`, has ASCII names in sorted order (see
    # _json_compatible for why ASCII). Lone surrogates make it raise: rfc8785 then refuses them with a clear error.
    names = list(body.scores)
    if all(name.isascii() for name in names) and names == sorted(names):
        try:
            return body.__pydantic_serializer__.to_json(body)
        except ValueError:
            pass
    try:
        return canonical_json(body.model_dump(mode="json"))
    except rfc8785.CanonicalizationError as error:
        raise AuditError(f"body cannot be canonicalised: {error}", hint="check the field values") from error


def args_commitment(nonce: bytes, arguments: Any) -> str:
    """Hex SHA-256 over nonce || JCS(arguments). The nonce (>= 16 bytes) stops guessing low-entropy arguments."""
    if len(nonce) < 16:
        raise AuditError("argument nonce is shorter than 16 bytes", hint="use secrets.token_bytes(32)")
    return hashlib.sha256(nonce + canonical_arguments(arguments)).hexdigest()


def signing_message(leaf: bytes) -> bytes:
    """What a record signature covers: a domain prefix, so no other aegis signature can be replayed as a record's."""
    return RECORD_DOMAIN + leaf


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _reject_float(text: str) -> Any:
    raise ValueError(f"non-integer number {text} (bodies hold integers only)")


def _check_int(text: str) -> int:
    number = int(text)
    if abs(number) > MAX_SAFE_INTEGER:
        raise ValueError(f"integer {text[:30]} is outside ±(2^53-1)")
    return number


_FIELDS = frozenset(RecordBody.model_fields)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def parse_body(data: bytes) -> RecordBody:
    """Parse body bytes, accepting only the exact canonical form. Raises VerificationError saying why.

    Bytes are canonical exactly when they are the canonical serialisation of the record the schema reads from them:
    that one comparison refuses duplicate keys, other spellings, whitespace, key order and anything the schema would
    normalise. It is checked first because it is cheap (a log verifies millions of bodies); bytes that fail it go
    through the step-by-step parse, which says what is wrong.
    """
    if len(data) > MAX_BODY_BYTES:
        raise VerificationError(f"body not canonical: {len(data)} bytes exceeds {MAX_BODY_BYTES}")
    try:
        body = RecordBody.model_validate_json(data)
        if canonical_body(body) == data:
            return body
    except (ValidationError, AuditError, ValueError, RecursionError):
        pass
    return _parse_body_explained(data)


def _parse_body_explained(data: bytes) -> RecordBody:
    try:
        text = data.decode("utf-8")
        value = json.loads(
            text,
            object_pairs_hook=object_without_duplicates,
            parse_float=_reject_float,
            parse_int=_check_int,
            parse_constant=_reject_constant,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise VerificationError(f"body not canonical: {_CONTROL.sub('?', str(error))[:200]}") from error
    if not isinstance(value, dict):
        raise VerificationError("body not canonical: not a JSON object")
    missing, extra = _FIELDS - value.keys(), value.keys() - _FIELDS
    if missing or extra:
        message = f"body fields wrong: missing {sorted(missing)}, unexpected {sorted(extra)[:10]}"
        raise VerificationError(_CONTROL.sub("?", message)[:300])
    try:
        recanonical = canonical_json(value)
    except (rfc8785.CanonicalizationError, RecursionError) as error:  # e.g. a lone surrogate escape
        raise VerificationError(f"body not canonical: {str(error)[:200]}") from error
    if recanonical != data:
        raise VerificationError("body not canonical: bytes differ from their RFC 8785 re-serialisation")
    try:
        body = RecordBody.model_validate_json(data)  # JSON mode: arrays are tuples, strings may be Literals
    except ValidationError as error:
        raise VerificationError(f"body invalid: {schema_problem(error)}"[:300]) from error
    if body.model_dump(mode="json") != value:  # the schema must not normalise anything away
        raise VerificationError("body not canonical: schema round-trip changed the bytes", index=body.seq)
    return body


@dataclasses.dataclass(frozen=True, slots=True)
class RecordSigner:
    """A signing key with its key id, derived once: deriving it (public key, encoding, hash) cost about 9 us, a
    twentieth of an append, when it was done for every record.

    Records are signed with libsodium (`sodium_key`, the same key in its form), which signs Ed25519 in half the time
    OpenSSL takes (measured: 47 us against 102 us on the build machine, a tenth of an append). Ed25519 signatures are
    deterministic (RFC 8032), so the bytes are those `key.sign` gives; the key itself stays the one object the store,
    checkpoints and rotations use."""

    key: Ed25519PrivateKey
    key_id: str
    sodium_key: bytes = dataclasses.field(repr=False)  # libsodium's secret key: the 32-byte seed, then the public key

    @classmethod
    def of(cls, key: Ed25519PrivateKey) -> RecordSigner:
        public = key.public_key()
        seed = key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        derived, sodium_key = nacl.bindings.crypto_sign_seed_keypair(seed)
        if derived != public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw):
            raise AuditError("libsodium derived another public key from this signing key", hint="a library bug")
        return cls(key, key_id(public), sodium_key)

    def sign(self, body: RecordBody) -> SignedRecord:
        """Serialise, hash and sign a body. The body must name this key's id."""
        if body.key_id != self.key_id:
            raise AuditError(
                f"body names key {body.key_id} but is signed with {self.key_id}", hint="set key_id from the key"
            )
        data = canonical_body(body)
        leaf = leaf_hash(data)
        # crypto_sign returns the signature followed by the message
        signature = nacl.bindings.crypto_sign(signing_message(leaf), self.sodium_key)[:SIGNATURE_BYTES]
        return SignedRecord(body_bytes=data, leaf_hash=leaf, key_id=self.key_id, signature=signature)


def sign_record(body: RecordBody, key: Ed25519PrivateKey) -> SignedRecord:
    """Serialise, hash and sign a body with a one-off key (a store signs through its RecordSigner)."""
    return RecordSigner.of(key).sign(body)


# Messages aegis signs for other purposes; a record signature over one of these means a cross-domain replay.
_OTHER_DOMAINS: tuple[tuple[str, bytes], ...] = (("bare leaf hash, without the record domain prefix", b""),)


def verify_record(signed: SignedRecord, trusted_keys: Mapping[str, TrustedKey]) -> RecordBody:
    """Check one record against the trusted keys and return its body; VerificationError names what failed.

    Does not check chain links (prev, seq order) — that needs the neighbouring records.
    """
    trusted = trusted_keys.get(signed.key_id)
    if trusted is None:
        raise VerificationError(
            f"unknown key id {signed.key_id[:64]!r}", hint="add the key to the trusted-keys file if it is yours"
        )
    if len(signed.signature) != SIGNATURE_BYTES:
        raise VerificationError(f"malformed signature: {len(signed.signature)} bytes, expected {SIGNATURE_BYTES}")
    body = parse_body(signed.body_bytes)
    leaf = leaf_hash(signed.body_bytes)
    if signed.leaf_hash != leaf:
        raise VerificationError("leaf hash mismatch: stored hash is not SHA-256(0x00 || body)", index=body.seq)
    if body.key_id != signed.key_id:
        raise VerificationError(
            f"key id mismatch: body says {body.key_id}, record says {signed.key_id}", index=body.seq
        )
    if not trusted.covers(body.seq):
        raise VerificationError(
            f"key {trusted.key_id} is not valid at seq {body.seq} (valid {trusted.range_text()})", index=body.seq
        )
    if not trusted.verifies(signed.signature, signing_message(leaf)):
        for name, prefix in _OTHER_DOMAINS:
            if trusted.verifies(signed.signature, prefix + leaf):
                raise VerificationError(f"wrong domain: signature is over the {name}", index=body.seq)
        raise VerificationError("bad signature", index=body.seq)
    return body
