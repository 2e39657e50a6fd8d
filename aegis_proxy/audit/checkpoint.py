"""C2SP `tlog-checkpoint` in the C2SP `signed-note` format: signing, strict parsing, verification, fork detection.

A note is `<body>\n<signature lines>`; the body is `origin\nsize\nbase64(root)\n` and each signature line is
`— <name> base64(key_id[4] || ed25519_sig)`, the signature being over the body bytes. Parsing is strict: anything
we would not have written ourselves is refused, so that two different texts never verify as the same checkpoint.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from aegis_proxy.audit.errors import AuditError, VerificationError
from aegis_proxy.audit.keys import TrustedKey
from aegis_proxy.audit.merkle import HASH_SIZE, MAX_TREE_SIZE, verify_consistency

SIGNATURE_PREFIX = "— "  # em dash U+2014 and a space
_ED25519_ALG = b"\x01"
_KEY_ID_SIZE = 4
_ED25519_SIG_SIZE = 64
# Bounds hostile input before any work: a checkpoint is a few hundred bytes; Go's note package caps signatures at 100.
MAX_NOTE_SIZE = 64 * 1024
MAX_SIGNATURES = 100


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed tree head: the log `origin` had `size` leaves with Merkle root `root`."""

    origin: str
    size: int
    root: bytes

    def __post_init__(self) -> None:
        problem = _origin_problem(self.origin)
        if problem:
            raise AuditError(
                f"checkpoint origin {problem}", hint="use the log's origin, e.g. 'example.com/aegis/audit'"
            )
        if isinstance(self.size, bool) or not isinstance(self.size, int) or not 0 <= self.size <= MAX_TREE_SIZE:
            raise AuditError(f"checkpoint size {self.size!r} is not in 0..2^63-1", hint="pass the tree size")
        if not isinstance(self.root, bytes) or len(self.root) != HASH_SIZE:
            raise AuditError(f"checkpoint root must be {HASH_SIZE} bytes", hint="pass the Merkle root")

    def body(self) -> str:
        """The signed text, `origin\\nsize\\nbase64(root)\\n`."""
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode('ascii')}\n"


@dataclass(frozen=True, slots=True)
class NoteSignature:
    """One signature line as written; not yet verified."""

    name: str
    key_id: bytes
    signature: bytes


def key_id(name: str, public_key: Ed25519PublicKey) -> bytes:
    """Ed25519 key id of signed-note: SHA-256(name || 0x0A || 0x01 || pubkey)[:4]."""
    raw = public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    return hashlib.sha256(name.encode("utf-8") + b"\n" + _ED25519_ALG + raw).digest()[:_KEY_ID_SIZE]


def _has_control_chars(text: str) -> bool:
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)


def _origin_problem(origin: object) -> str:
    if not isinstance(origin, str) or not origin:
        return "is empty"
    if _has_control_chars(origin):
        return "contains control characters or newlines"
    if origin != origin.strip():
        return "has leading or trailing whitespace"
    return ""


def _name_problem(name: object) -> str:
    # signed-note: names are non-empty and contain no Unicode spaces and no '+'
    if not isinstance(name, str) or not name:
        return "is empty"
    if "+" in name or any(c.isspace() for c in name) or _has_control_chars(name):
        return "contains whitespace, '+' or control characters"
    return ""


def _strict_b64decode(text: str) -> bytes | None:
    """Standard padded base64, canonical only (re-encoding must give the same text); None if not."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return None
    return raw if base64.b64encode(raw).decode("ascii") == text else None


def _signature_line(body: str, name: str, private_key: Ed25519PrivateKey) -> str:
    problem = _name_problem(name)
    if problem:
        raise AuditError(f"key name {name!r} {problem}", hint="use a name like 'example.com/aegis/audit'")
    blob = key_id(name, private_key.public_key()) + private_key.sign(body.encode("utf-8"))
    return f"{SIGNATURE_PREFIX}{name} {base64.b64encode(blob).decode('ascii')}\n"


def sign_checkpoint(cp: Checkpoint, name: str, private_key: Ed25519PrivateKey) -> str:
    """The signed note text for `cp`, with one Ed25519 signature by `name`."""
    body = cp.body()
    return f"{body}\n{_signature_line(body, name, private_key)}"


def add_signature(note: str, name: str, private_key: Ed25519PrivateKey) -> str:
    """Append a signature to an already signed note (cosigning, or the new key's signature during rotation)."""
    checkpoint, _ = parse_checkpoint(note)
    return note + _signature_line(checkpoint.body(), name, private_key)


def _parse_body(body: str) -> Checkpoint:
    lines = body.split("\n")
    # body ends with "\n", so a well-formed body splits into exactly origin, size, root and a final "".
    if len(lines) != 4 or lines[3] != "":
        raise VerificationError(f"checkpoint body has {len(lines) - 1} lines; expected origin, size and root")
    origin, size_text, root_text = lines[:3]
    problem = _origin_problem(origin)
    if problem:
        raise VerificationError(f"checkpoint origin {problem}")
    if not size_text.isascii() or not size_text.isdigit() or (len(size_text) > 1 and size_text[0] == "0"):
        raise VerificationError(f"checkpoint size {size_text[:30]!r} is not a canonical decimal number")
    if len(size_text) > 19 or int(size_text) > MAX_TREE_SIZE:
        raise VerificationError(f"checkpoint size {size_text[:30]} is larger than 2^63-1")
    root = _strict_b64decode(root_text)
    if root is None or len(root) != HASH_SIZE:
        raise VerificationError(f"checkpoint root is not canonical base64 of {HASH_SIZE} bytes")
    return Checkpoint(origin, int(size_text), root)


def _parse_signature_line(line: str) -> NoteSignature:
    if not line.startswith(SIGNATURE_PREFIX):
        raise VerificationError("a line after the blank line is not a signature ('— name base64')")
    parts = line[len(SIGNATURE_PREFIX) :].split(" ")
    if len(parts) != 2:
        raise VerificationError("signature line must be '— name base64' with single spaces")
    name, blob_text = parts
    problem = _name_problem(name)
    if problem:
        raise VerificationError(f"signature key name {problem}")
    blob = _strict_b64decode(blob_text)
    if blob is None or len(blob) <= _KEY_ID_SIZE:
        raise VerificationError(f"signature by {name[:80]!r} is not canonical base64 of a key id and a signature")
    return NoteSignature(name, blob[:_KEY_ID_SIZE], blob[_KEY_ID_SIZE:])


def parse_checkpoint(text: str) -> tuple[Checkpoint, list[NoteSignature]]:
    """Split and parse a signed checkpoint note, strictly; the signatures are NOT verified here."""
    _, checkpoint, signatures = _parse_note(text)
    return checkpoint, signatures


def _parse_note(text: str) -> tuple[str, Checkpoint, list[NoteSignature]]:
    if not isinstance(text, str):
        raise VerificationError("checkpoint note must be text")
    if len(text) > MAX_NOTE_SIZE:
        raise VerificationError(f"checkpoint note is larger than {MAX_NOTE_SIZE} characters")
    # Control characters (CR included: CRLF notes are refused) and lone surrogates never appear in a note we write.
    if any((ord(c) < 0x20 and c != "\n") or ord(c) == 0x7F or 0xD800 <= ord(c) <= 0xDFFF for c in text):
        raise VerificationError("checkpoint note contains control characters (CRLF line ends are not accepted)")
    split = text.rfind("\n\n")
    if split < 0:
        raise VerificationError("checkpoint note has no blank line between body and signatures")
    body, signature_block = text[: split + 1], text[split + 2 :]
    if not signature_block.endswith("\n"):
        raise VerificationError("checkpoint note does not end with a newline after its last signature")
    checkpoint = _parse_body(body)
    lines = signature_block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise VerificationError(f"checkpoint note has more than {MAX_SIGNATURES} signatures")
    return body, checkpoint, [_parse_signature_line(line) for line in lines]


def verify_checkpoint(text: str, trusted: Mapping[str, Ed25519PublicKey]) -> Checkpoint:
    """Return the checkpoint if at least one signature by a trusted key verifies.

    Signatures by unknown names or unknown key ids are ignored (signed-note: that is what allows key rotation and
    cosigning). A signature that claims a trusted name *and* its key id but does not verify is tampering: rejected.
    """
    for name, public_key in trusted.items():
        if not isinstance(public_key, Ed25519PublicKey):
            raise AuditError(f"trusted key {name!r} is not an Ed25519 public key", hint="load it with keys.py")
    body_text, checkpoint, signatures = _parse_note(text)
    body = body_text.encode("utf-8")  # the exact signed bytes, as signed-note requires
    verified: list[str] = []
    for sig in signatures:
        public_key = trusted.get(sig.name)
        if public_key is None or sig.key_id != key_id(sig.name, public_key):
            continue
        if len(sig.signature) != _ED25519_SIG_SIZE:
            raise VerificationError(f"signature by trusted key {sig.name!r} is not {_ED25519_SIG_SIZE} bytes")
        try:
            public_key.verify(sig.signature, body)
        except InvalidSignature:
            raise VerificationError(
                f"signature by trusted key {sig.name!r} does not match the checkpoint at size {checkpoint.size}",
                index=checkpoint.size,
            ) from None
        verified.append(sig.name)
    if not verified:
        names = ", ".join(sorted({s.name[:80] for s in signatures}))
        raise VerificationError(
            f"checkpoint at size {checkpoint.size} has no signature by a trusted key (signed by: {names})",
            index=checkpoint.size,
            hint="check the trusted key names and public keys; a key id mismatch means a different key signed it",
        )
    return checkpoint


def may_sign_size(trusted: TrustedKey, size: int) -> bool:
    """Whether a record key may sign a checkpoint of `size` leaves: its range covers the tree's last record
    (size - 1; seq 0 for the empty tree). The same rule as the store's (store.verify_note): the key that signed the
    records up to a checkpoint signs it, and a retired key's signature on a later tree does not count.
    """
    return trusted.covers(max(size - 1, 0))


def verify_checkpoint_keys(text: str, trusted_keys: Mapping[str, TrustedKey]) -> Checkpoint:
    """Verify a note against the audit trusted-keys file (keys.load_trusted_keys) instead of a name -> key map.

    Signature lines are matched to trusted keys by their C2SP key id, `key_id(line name, public key)`, so the signer
    name is whatever the log used (its origin, usually) and several trusted keys may sign under one name (rotation).
    A matching line that does not verify is tampering: rejected. At least one signature by a key whose trusted
    range covers the checkpoint's size (`may_sign_size`) must verify.
    """
    body_text, checkpoint, signatures = _parse_note(text)
    body = body_text.encode("utf-8")
    accepted, out_of_range = False, []
    for sig in signatures:
        for trusted in trusted_keys.values():
            if sig.key_id != key_id(sig.name, trusted.public_key):
                continue
            if len(sig.signature) != _ED25519_SIG_SIZE:
                raise VerificationError(
                    f"signature by trusted key {trusted.key_id} is not {_ED25519_SIG_SIZE} bytes", index=checkpoint.size
                )
            try:
                trusted.public_key.verify(sig.signature, body)
            except InvalidSignature:
                raise VerificationError(
                    f"signature by trusted key {trusted.key_id} does not match the checkpoint "
                    f"at size {checkpoint.size}",
                    index=checkpoint.size,
                ) from None
            if may_sign_size(trusted, checkpoint.size):
                accepted = True
            else:
                out_of_range.append(f"{trusted.key_id} (valid {trusted.range_text()})")
    if not accepted:
        detail = f"; signed only by keys outside their range: {', '.join(out_of_range)}" if out_of_range else ""
        raise VerificationError(
            f"checkpoint at size {checkpoint.size} has no signature by a trusted key valid at that size{detail}",
            index=checkpoint.size,
            hint="check the trusted-keys file; a checkpoint signed by another key is not this log's",
        )
    return checkpoint


def assert_consistent(older: Checkpoint, newer: Checkpoint, proof: list[bytes]) -> None:
    """Raise VerificationError unless `newer` is an append-only extension of `older` (same origin).

    Same size with different roots is a fork (equivocation); a smaller size is truncation or rollback.
    """
    if older.origin != newer.origin:
        raise VerificationError(f"checkpoints are of different logs: {older.origin!r} and {newer.origin!r}")
    if older.size == newer.size and older.root != newer.root:
        raise VerificationError(
            f"fork: two checkpoints of size {older.size} with different roots",
            index=older.size,
            hint="the log signed two histories; keep both notes as evidence and stop trusting the log",
        )
    verify_consistency(older.size, newer.size, older.root, newer.root, proof)
