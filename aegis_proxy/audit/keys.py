"""Audit signing keys: owner-only key files, key ids, the trusted-keys file, and countersigned key rotation.

Key files are unencrypted PKCS#8 PEM ("-----BEGIN PRIVATE KEY-----"): self-describing, so a truncated or foreign file is
refused rather than misread, and `openssl pkey -in FILE -pubout` can inspect them. Trusted public keys come only from a
configuration file the verifier's owner controls, never from the log's database.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import nacl.bindings
import nacl.exceptions
import rfc8785
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field

from aegis_proxy.audit.errors import AuditError, VerificationError
from aegis_proxy.strict_json import object_without_duplicates

if TYPE_CHECKING:  # record.py imports this module at load time; rotation helpers import record.py when called
    from aegis_proxy.audit.record import RecordBody, SignedRecord

KEY_ID_DOMAIN = b"aegis-proxy/audit/v1 key-id\n"
ROTATION_DOMAIN = b"aegis-proxy/audit/v1 key-rotation\n"
MAX_KEY_FILE_BYTES = 4096
MAX_TRUST_FILE_BYTES = 1 << 20
_MAX_SEQ = 2**53 - 1


def _raw_public(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key: Ed25519PublicKey) -> str:
    """Hex of the first 16 bytes of SHA-256("aegis-proxy/audit/v1 key-id\\n" || raw 32-byte public key)."""
    return hashlib.sha256(KEY_ID_DOMAIN + _raw_public(public_key)).digest()[:16].hex()


def public_key_hex(public_key: Ed25519PublicKey) -> str:
    return _raw_public(public_key).hex()


def generate_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Create a new key file at `path` with mode 0600; refuses to overwrite anything already there."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    # O_EXCL: never clobber (or follow a planted symlink to) an existing file; the mode is set at creation, so the
    # key is never readable by others, not even between a write and a chmod.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError as error:
        raise AuditError(
            f"key file {path} already exists", hint="keep it, or move it away to make a new key"
        ) from error
    except OSError as error:
        raise AuditError(f"cannot create key file {path}: {error.strerror}", hint="check the directory") from error
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    return key


def load_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Load a key file, refusing one that others could read or that someone else owns."""
    hint = f"chmod 600 {path}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as error:
        raise AuditError(
            f"cannot open key file {path}: {error.strerror}", hint="check the path; symlinks are refused"
        ) from error
    try:
        info = os.fstat(fd)  # of the file we opened, not of whatever the path points to a moment later
        if not stat.S_ISREG(info.st_mode):
            raise AuditError(f"key file {path} is not a regular file", hint="point at the PEM key file")
        if info.st_uid != os.geteuid():
            raise AuditError(
                f"key file {path} is owned by uid {info.st_uid}, not by this user (uid {os.geteuid()})",
                hint=f"chown {os.geteuid()} {path} && {hint}",
            )
        if info.st_mode & 0o077:
            raise AuditError(
                f"key file {path} has mode {stat.S_IMODE(info.st_mode):04o}; others can read it", hint=hint
            )
        data = os.read(fd, MAX_KEY_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_KEY_FILE_BYTES:
        raise AuditError(f"key file {path} is too large to be an Ed25519 key", hint="point at the PEM key file")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as error:
        raise AuditError(
            f"key file {path} is not an unencrypted PKCS#8 PEM private key", hint="generate a new key"
        ) from error
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditError(f"key file {path} holds a {type(key).__name__}, not Ed25519", hint="generate a new key")
    return key


@dataclasses.dataclass(frozen=True)
class TrustedKey:
    """A public key a verifier accepts for records first_seq..last_seq (inclusive; None = open-ended)."""

    key_id: str
    public_key: Ed25519PublicKey
    first_seq: int
    last_seq: int | None = None
    raw: bytes = dataclasses.field(init=False, repr=False, compare=False)  # the 32-byte key, for `verifies`

    def __post_init__(self) -> None:
        if key_id(self.public_key) != self.key_id:
            raise AuditError(f"key id {self.key_id} does not match its public key", hint="recompute with key_id()")
        if self.first_seq < 0 or (self.last_seq is not None and self.last_seq < self.first_seq):
            raise AuditError(
                f"key {self.key_id}: invalid seq range {self.range_text()}", hint="first <= last, both >= 0"
            )
        object.__setattr__(self, "raw", _raw_public(self.public_key))

    def verifies(self, signature: bytes, message: bytes) -> bool:
        """True when `signature` is this key's Ed25519 signature over `message` (libsodium: strict RFC 8032 checks,
        canonical S and point encodings; every signature OpenSSL makes passes)."""
        if len(signature) != 64:
            return False
        try:
            nacl.bindings.crypto_sign_open(signature + message, self.raw)
        except nacl.exceptions.BadSignatureError:
            return False
        return True

    def covers(self, seq: int) -> bool:
        return self.first_seq <= seq and (self.last_seq is None or seq <= self.last_seq)

    def range_text(self) -> str:
        return f"{self.first_seq}..{'' if self.last_seq is None else self.last_seq}"


class _TrustEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    key_id: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
    public_key: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
    first_seq: Annotated[int, Field(ge=0, le=_MAX_SEQ)]
    last_seq: Annotated[int, Field(ge=0, le=_MAX_SEQ)] | None = None


class _TrustFile(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    keys: Annotated[list[_TrustEntry], Field(min_length=1)]


def load_trusted_keys(path: str | os.PathLike[str]) -> dict[str, TrustedKey]:
    """Read the trusted-keys file (.toml or .json; audit/FORMAT.md section 5) into {key_id: TrustedKey}."""
    where = Path(path)
    hint = f"fix {where}; see audit/FORMAT.md, trusted keys"
    try:
        data = where.read_bytes()
    except OSError as error:
        raise AuditError(f"cannot read trusted keys {where}: {error.strerror}", hint=hint) from error
    if len(data) > MAX_TRUST_FILE_BYTES:
        raise AuditError(f"trusted keys file {where} is larger than {MAX_TRUST_FILE_BYTES} bytes", hint=hint)
    try:
        text = data.decode("utf-8")
        if where.suffix == ".toml":
            raw: Any = tomllib.loads(text)
        elif where.suffix == ".json":
            raw = json.loads(text, object_pairs_hook=object_without_duplicates)
        else:
            raise AuditError(f"trusted keys file {where} must end in .toml or .json", hint=hint)
        parsed = _TrustFile.model_validate(raw)
    except (UnicodeDecodeError, ValueError) as error:  # tomllib/json/pydantic errors are ValueErrors
        raise AuditError(f"trusted keys file {where} is invalid: {str(error)[:300]}", hint=hint) from error
    trusted: dict[str, TrustedKey] = {}
    for entry in parsed.keys:
        public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(entry.public_key))
        if entry.key_id in trusted:
            raise AuditError(f"key id {entry.key_id} is listed twice in {where}", hint=hint)
        try:
            trusted[entry.key_id] = TrustedKey(entry.key_id, public, entry.first_seq, entry.last_seq)
        except AuditError as error:
            raise AuditError(f"{where}: {error.message}", hint=hint) from error
    return trusted


def _rotation_statement(body: RecordBody) -> bytes:
    """What the new key countersigns: the rotation's place in the log and both keys (not the countersignature)."""
    if body.rotation is None:
        raise AuditError(f"record {body.seq} has no rotation info", hint="build it with rotation_body()")
    statement = {
        "origin": body.origin,
        "seq": body.seq,
        "prev": body.prev,
        "old_key_id": body.key_id,
        "new_key_id": body.rotation.new_key_id,
        "new_public_key": body.rotation.new_public_key,
    }
    return ROTATION_DOMAIN + rfc8785.dumps(statement)


def countersign(body: RecordBody, new_key: Ed25519PrivateKey) -> RecordBody:
    """Return `body` with the new key's countersignature filled in (the rest of the rotation info must match)."""
    from aegis_proxy.audit.record import RotationInfo

    if body.rotation is None or body.rotation.new_key_id != key_id(new_key.public_key()):
        raise AuditError("countersigning key is not the rotation's new key", hint="use the key named in the record")
    signature = new_key.sign(_rotation_statement(body))
    rotation = RotationInfo(
        new_key_id=body.rotation.new_key_id,
        new_public_key=body.rotation.new_public_key,
        countersignature=signature.hex(),
    )
    return body.model_copy(update={"rotation": rotation})


def rotation_body(
    *,
    origin: str,
    seq: int,
    prev: str,
    time: str,
    replica: str,
    old_key: Ed25519PrivateKey,
    new_key: Ed25519PrivateKey,
    policy_digest: str | None = None,
) -> RecordBody:
    """The `key_rotation` record, countersigned by `new_key`; sign it with `old_key` (record.sign_record)."""
    from aegis_proxy.audit.record import RecordBody, RotationInfo

    new_public = new_key.public_key()
    unsigned = RecordBody(
        origin=origin,
        seq=seq,
        prev=prev,
        type="key_rotation",
        time=time,
        replica=replica,
        policy_digest=policy_digest,
        key_id=key_id(old_key.public_key()),
        rotation=RotationInfo(
            new_key_id=key_id(new_public), new_public_key=public_key_hex(new_public), countersignature="0" * 128
        ),
    )
    return countersign(unsigned, new_key)


def verify_rotation(signed: SignedRecord, trusted_keys: Mapping[str, TrustedKey]) -> RecordBody:
    """Verify a key_rotation record: old key's signature, new key's countersignature, and the trusted handover.

    The trusted-keys file must already list the new key with the same public key, valid from seq + 1.
    """
    from aegis_proxy.audit.record import verify_record

    body = verify_record(signed, trusted_keys)
    rotation = body.rotation
    if body.type != "key_rotation" or rotation is None:
        raise VerificationError(f"record {body.seq} is a {body.type} record, not a key rotation", index=body.seq)
    new_public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(rotation.new_public_key))
    if key_id(new_public) != rotation.new_key_id:
        raise VerificationError("rotation: new key id does not match the new public key", index=body.seq)
    if rotation.new_key_id == body.key_id:
        raise VerificationError("rotation: new key is the old key", index=body.seq)
    try:
        new_public.verify(bytes.fromhex(rotation.countersignature), _rotation_statement(body))
    except InvalidSignature:
        raise VerificationError("rotation: bad countersignature by the new key", index=body.seq) from None
    trusted_new = trusted_keys.get(rotation.new_key_id)
    if trusted_new is None:
        raise VerificationError(
            f"rotation: new key {rotation.new_key_id} is not in the trusted keys",
            index=body.seq,
            hint="add it to the trusted-keys file if this rotation was yours",
        )
    if public_key_hex(trusted_new.public_key) != rotation.new_public_key or trusted_new.first_seq != body.seq + 1:
        raise VerificationError(
            f"rotation: trusted key {rotation.new_key_id} must start at seq {body.seq + 1} "
            f"(trusted range {trusted_new.range_text()})",
            index=body.seq,
        )
    return body
