"""Audit signing keys: key files (0600, owner), key ids, the trusted-keys file, countersigned rotation."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from aegis_proxy.audit.errors import AuditError, VerificationError
from aegis_proxy.audit.keys import (
    TrustedKey,
    countersign,
    generate_key,
    key_id,
    load_key,
    load_trusted_keys,
    public_key_hex,
    rotation_body,
    verify_rotation,
)
from aegis_proxy.audit.record import RecordBody, RotationInfo, SignedRecord, args_commitment, sign_record, verify_record


def _private(seed: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)


OLD, NEW, THIRD = _private(1), _private(2), _private(3)
OLD_ID, NEW_ID, THIRD_ID = (key_id(k.public_key()) for k in (OLD, NEW, THIRD))


def _pem(key: object) -> bytes:
    return key.private_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    os.write(fd, data)
    os.close(fd)
    os.chmod(path, mode)  # test setup only: undo the umask so the mode under test is exact
    return path


@pytest.fixture
def no_umask() -> Iterator[None]:
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


# --- key files -------------------------------------------------------------------------------------------------------


def test_generate_key_is_owner_only_even_with_permissive_umask(tmp_path: Path, no_umask: None) -> None:
    key = generate_key(tmp_path / "audit.key")
    info = os.stat(tmp_path / "audit.key")
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_uid == os.geteuid()
    assert (tmp_path / "audit.key").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert key_id(load_key(tmp_path / "audit.key").public_key()) == key_id(key.public_key())


def test_generate_key_never_overwrites(tmp_path: Path) -> None:
    path = _write(tmp_path / "audit.key", b"precious")
    with pytest.raises(AuditError, match="already exists"):
        generate_key(path)
    assert path.read_bytes() == b"precious"


def test_generate_key_does_not_follow_a_planted_symlink(tmp_path: Path) -> None:
    target = _write(tmp_path / "target", b"", 0o644)
    (tmp_path / "audit.key").symlink_to(target)
    with pytest.raises(AuditError):
        generate_key(tmp_path / "audit.key")
    assert target.read_bytes() == b""


@pytest.mark.parametrize("mode", [0o600, 0o400], ids=oct)
def test_load_key_accepts_owner_only_modes(tmp_path: Path, mode: int) -> None:
    path = _write(tmp_path / "k", _pem(OLD), mode)
    assert key_id(load_key(path).public_key()) == OLD_ID


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602, 0o660, 0o777], ids=oct)
def test_load_key_refuses_loose_modes(tmp_path: Path, mode: int) -> None:
    path = _write(tmp_path / "k", _pem(OLD), mode)
    with pytest.raises(AuditError) as caught:
        load_key(path)
    assert f"mode {mode:04o}" in caught.value.message
    assert caught.value.hint == f"chmod 600 {path}"


def test_load_key_refuses_another_owner(tmp_path: Path) -> None:
    path = _write(tmp_path / "k", _pem(OLD))
    other_uid = 65534 if os.geteuid() != 65534 else 65533
    try:
        os.chown(path, other_uid, -1)
    except PermissionError:
        pytest.skip("only root can give a file to another uid; the owner check is not exercised here")
    with pytest.raises(AuditError, match=f"owned by uid {other_uid}") as caught:
        load_key(path)
    assert "chmod 600" in caught.value.hint


def _encrypted_pem() -> bytes:
    return OLD.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(b"pw")
    )


MALFORMED_KEYS = [
    ("empty", b"", "not an unencrypted PKCS#8"),
    ("garbage", b"hello", "not an unencrypted PKCS#8"),
    ("raw-32-bytes", bytes(32), "not an unencrypted PKCS#8"),
    ("truncated-pem", _pem(OLD)[:60], "not an unencrypted PKCS#8"),
    (
        "public-key-pem",
        OLD.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        "not an unencrypted PKCS#8",
    ),
    ("encrypted-pem", _encrypted_pem(), "not an unencrypted PKCS#8"),
    ("ec-key", _pem(ec.generate_private_key(ec.SECP256R1())), "not Ed25519"),
    ("oversized", b"A" * 10_000, "too large"),
]


@pytest.mark.parametrize(("data", "reason"), [m[1:] for m in MALFORMED_KEYS], ids=[m[0] for m in MALFORMED_KEYS])
def test_load_key_refuses_malformed(tmp_path: Path, data: bytes, reason: str) -> None:
    path = _write(tmp_path / "k", data)
    with pytest.raises(AuditError, match=reason):
        load_key(path)


def test_load_key_refuses_missing_directory_and_symlink(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="cannot open"):
        load_key(tmp_path / "missing")
    with pytest.raises(AuditError, match="not a regular file"):
        load_key(tmp_path)
    real = _write(tmp_path / "real", _pem(OLD))
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(AuditError, match="symlinks are refused"):
        load_key(tmp_path / "link")


# --- key ids ---------------------------------------------------------------------------------------------------------


def test_key_id_is_stable_and_documented() -> None:
    zero = Ed25519PrivateKey.from_private_bytes(bytes(32)).public_key()
    raw = bytes.fromhex("3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29")
    assert public_key_hex(zero) == raw.hex()
    assert key_id(zero) == hashlib.sha256(b"aegis-proxy/audit/v1 key-id\n" + raw).digest()[:16].hex()
    assert key_id(zero) == "30a3810f47eb0157b0d8398c1fe645ce"  # pinned: changing it orphans every log
    assert len({OLD_ID, NEW_ID, THIRD_ID}) == 3


# --- trusted keys ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "last", "seq", "covered"),
    [
        (0, None, 0, True),
        (0, None, 2**53 - 1, True),
        (5, None, 4, False),
        (5, 9, 5, True),
        (5, 9, 9, True),
        (5, 9, 10, False),
        (3, 3, 3, True),
    ],
)
def test_trusted_key_range(first: int, last: int | None, seq: int, covered: bool) -> None:
    assert TrustedKey(OLD_ID, OLD.public_key(), first, last).covers(seq) is covered


@pytest.mark.parametrize(
    ("kid", "first", "last", "reason"),
    [(NEW_ID, 0, None, "does not match"), (OLD_ID, -1, None, "invalid seq range"), (OLD_ID, 5, 4, "invalid seq range")],
)
def test_trusted_key_refuses(kid: str, first: int, last: int | None, reason: str) -> None:
    with pytest.raises(AuditError, match=reason):
        TrustedKey(kid, OLD.public_key(), first, last)


def _entry(key: Ed25519PrivateKey, first: int, last: int | None = None) -> dict[str, object]:
    entry: dict[str, object] = {"key_id": key_id(key.public_key()), "public_key": public_key_hex(key.public_key())}
    entry["first_seq"] = first
    if last is not None:
        entry["last_seq"] = last
    return entry


GOOD_TOML = f"""
[[keys]]
key_id = "{OLD_ID}"
public_key = "{public_key_hex(OLD.public_key())}"
first_seq = 0
last_seq = 99

[[keys]]
key_id = "{NEW_ID}"
public_key = "{public_key_hex(NEW.public_key())}"
first_seq = 100
"""


def test_load_trusted_keys_toml_and_json_agree(tmp_path: Path) -> None:
    (tmp_path / "trust.toml").write_text(GOOD_TOML)
    (tmp_path / "trust.json").write_text(json.dumps({"keys": [_entry(OLD, 0, 99), _entry(NEW, 100)]}))
    for name in ("trust.toml", "trust.json"):
        trusted = load_trusted_keys(tmp_path / name)
        assert set(trusted) == {OLD_ID, NEW_ID}
        assert (trusted[OLD_ID].first_seq, trusted[OLD_ID].last_seq) == (0, 99)
        assert (trusted[NEW_ID].first_seq, trusted[NEW_ID].last_seq) == (100, None)
        assert public_key_hex(trusted[NEW_ID].public_key) == public_key_hex(NEW.public_key())


def _json(**entry_changes: object) -> str:
    entry = _entry(OLD, 0)
    entry.update(entry_changes)
    return json.dumps({"keys": [entry]})


BAD_TRUST_FILES = [
    ("wrong-key-id", "trust.json", _json(key_id=NEW_ID), "does not match"),
    ("last-before-first", "trust.json", _json(first_seq=5, last_seq=4), "invalid seq range"),
    ("negative-first", "trust.json", _json(first_seq=-1), "greater than or equal"),
    ("float-seq", "trust.json", _json(first_seq=1.0), "valid integer"),
    ("bool-seq", "trust.json", _json(first_seq=True), "valid integer"),
    ("string-seq", "trust.json", _json(first_seq="0"), "valid integer"),
    ("seq-above-2^53", "trust.json", _json(first_seq=2**53), "less than or equal"),
    ("extra-field", "trust.json", _json(comment="x"), "Extra inputs"),
    (
        "missing-first",
        "trust.json",
        json.dumps({"keys": [{k: v for k, v in _entry(OLD, 0).items() if k != "first_seq"}]}),
        "first_seq",
    ),
    ("uppercase-hex", "trust.json", _json(public_key=public_key_hex(OLD.public_key()).upper()), "pattern"),
    ("short-public-key", "trust.json", _json(public_key="ab" * 31), "pattern"),
    ("no-keys", "trust.json", json.dumps({"keys": []}), "at least 1"),
    ("not-object", "trust.json", "[]", "valid dictionary"),
    ("duplicate-json-key", "trust.json", '{"keys": [], "keys": []}', "duplicate key"),
    ("duplicate-key-id", "trust.json", json.dumps({"keys": [_entry(OLD, 0), _entry(OLD, 5)]}), "listed twice"),
    ("bad-toml", "trust.toml", "[[keys]\n", "invalid"),
    ("bad-json", "trust.json", "{", "invalid"),
    ("not-utf8", "trust.json", b"\xff", "invalid"),
    ("wrong-extension", "trust.yaml", _json(), "must end in .toml or .json"),
]


@pytest.mark.parametrize(
    ("name", "text", "reason"), [b[1:] for b in BAD_TRUST_FILES], ids=[b[0] for b in BAD_TRUST_FILES]
)
def test_load_trusted_keys_refuses(tmp_path: Path, name: str, text: str | bytes, reason: str) -> None:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(AuditError, match=reason) as caught:
        load_trusted_keys(path)
    assert "FORMAT.md" in caught.value.hint


def test_load_trusted_keys_missing_file(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="cannot read"):
        load_trusted_keys(tmp_path / "nope.toml")


# --- rotation --------------------------------------------------------------------------------------------------------

PREV = "ef" * 32
TIME = "2026-11-29T10:26:51.000123Z"


def _rotation(seq: int = 100, old: Ed25519PrivateKey = OLD, new: Ed25519PrivateKey = NEW) -> RecordBody:
    return rotation_body(
        origin="aegis.example/audit", seq=seq, prev=PREV, time=TIME, replica="r1", old_key=old, new_key=new
    )


def _trust(new_first: int = 101, new: Ed25519PrivateKey = NEW) -> dict[str, TrustedKey]:
    new_id = key_id(new.public_key())
    return {
        OLD_ID: TrustedKey(OLD_ID, OLD.public_key(), 0, 100),
        new_id: TrustedKey(new_id, new.public_key(), new_first),
    }


def test_rotation_good() -> None:
    body = _rotation()
    assert body.type == "key_rotation" and body.key_id == OLD_ID
    assert body.rotation is not None and body.rotation.new_key_id == NEW_ID
    signed = sign_record(body, OLD)
    assert verify_rotation(signed, _trust()) == body
    assert verify_record(signed, _trust()) == body  # also a plain, valid record of the chain


def _resigned(body: RecordBody, **rotation_changes: object) -> SignedRecord:
    """What an attacker holding the OLD key (only) can produce."""
    assert body.rotation is not None
    rotation = body.rotation.model_copy(update=rotation_changes)
    return sign_record(body.model_copy(update={"rotation": rotation}), OLD)


def _countersig_from(seq: int) -> str:
    rotation = _rotation(seq=seq).rotation
    assert rotation is not None
    return rotation.countersignature


def _attacker_key_claimed_as_new() -> SignedRecord:
    body = _rotation(new=THIRD)
    return _resigned(body, new_key_id=NEW_ID)


BAD_ROTATIONS = [
    ("countersig-flipped", lambda: _resigned(_rotation(), countersignature="00" * 64), _trust, "bad countersignature"),
    (
        "countersig-replayed-from-other-seq",
        lambda: _resigned(_rotation(), countersignature=_countersig_from(50)),
        _trust,
        "bad countersignature",
    ),
    ("new-key-id-does-not-match-public-key", _attacker_key_claimed_as_new, _trust, "does not match the new public key"),
    ("new-key-not-trusted", lambda: sign_record(_rotation(new=THIRD), OLD), _trust, "not in the trusted keys"),
    (
        "new-key-starts-late",
        lambda: sign_record(_rotation(), OLD),
        lambda: _trust(new_first=150),
        "must start at seq 101",
    ),
    (
        "new-key-starts-early",
        lambda: sign_record(_rotation(), OLD),
        lambda: _trust(new_first=100),
        "must start at seq 101",
    ),
    ("rotation-after-old-key-range", lambda: sign_record(_rotation(seq=101), OLD), _trust, "not valid at seq 101"),
    ("new-key-is-old-key", lambda: sign_record(_rotation(new=OLD), OLD), _trust, "new key is the old key"),
]


@pytest.mark.parametrize(("make", "trust", "reason"), [b[1:] for b in BAD_ROTATIONS], ids=[b[0] for b in BAD_ROTATIONS])
def test_rotation_refused(make: object, trust: object, reason: str) -> None:
    with pytest.raises(VerificationError, match=reason):
        verify_rotation(make(), trust())  # type: ignore[operator]


def test_verify_rotation_refuses_other_record_types() -> None:
    body = RecordBody(
        origin="aegis.example/audit",
        seq=5,
        prev=PREV,
        type="decision",
        time=TIME,
        replica="r1",
        args_commit=args_commitment(bytes(16), {}),
        decision="allow",
        key_id=OLD_ID,
    )
    with pytest.raises(VerificationError, match="not a key rotation"):
        verify_rotation(sign_record(body, OLD), _trust())


def test_countersign_requires_the_named_new_key() -> None:
    with pytest.raises(AuditError, match="not the rotation's new key"):
        countersign(_rotation(), THIRD)
    body = _rotation()
    assert countersign(body, NEW) == body  # Ed25519 is deterministic: countersigning again gives the same bytes


def test_rotation_info_shape() -> None:
    with pytest.raises(ValueError):
        RotationInfo(new_key_id=NEW_ID, new_public_key="ab" * 32, countersignature="00" * 63)


# --- `aegis keys rotate`: the full round trip through the store and a trusted-keys file ------------------------------


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    from aegis_proxy.cli import main

    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_keys_rotate_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from aegis_proxy.audit.store import AppendEntry, AuditStore
    from aegis_proxy.audit.verify import verify_chain

    old_path, new_path, url, origin = (
        tmp_path / "old.pem",
        tmp_path / "new.pem",
        f"sqlite:///{tmp_path / 'a.db'}",
        "t/x",
    )
    code, generated, _ = _cli(capsys, "keys", "generate", str(old_path))
    assert code == 0
    assert _cli(capsys, "keys", "generate", str(new_path))[0] == 0
    store = AuditStore(url, origin=origin, signer_key=load_key(old_path), replica="r1")
    entry = AppendEntry(type="decision", decision="deny", tool="shell", arguments={"command": "ls"})
    store.append([entry] * 4)

    rotate = ["keys", "rotate", "--key", str(old_path), "--new-key", str(new_path), "--db", url, "--origin", origin]
    code, out, _ = _cli(capsys, *rotate)
    assert code == 0, out
    assert "key_rotation record at seq 4" in out
    with pytest.raises(AuditError, match="retired"):  # the running writer with the old key now fails closed
        store.append([entry])
    store.close()

    # The verifiers' file: the old entry gets last_seq = 4, the new entry is printed whole.
    old_entry = generated[generated.index("[[keys]]") :] + "last_seq = 4\n"
    new_entry = out[out.index("[[keys]]") :]
    trust_file = tmp_path / "trusted.toml"
    trust_file.write_text(old_entry + "\n" + new_entry)
    trusted = load_trusted_keys(trust_file)
    assert [(t.first_seq, t.last_seq) for t in trusted.values()] == [(0, 4), (5, None)]

    restarted = AuditStore(url, origin=origin, signer_key=load_key(new_path), replica="r1")
    try:
        assert restarted.append([entry]) == [5]
        verify_chain(restarted, trusted)
        for checkpoint in restarted.checkpoints():
            checkpoint.verify(trusted)
    finally:
        restarted.close()
    code, out, _ = _cli(capsys, "audit", "verify", "--db", url, "--origin", origin, "--trusted-keys", str(trust_file))
    assert code == 0, out

    # Without the update, verification stops at the rotation record.
    stale = tmp_path / "stale.toml"
    stale.write_text(generated[generated.index("[[keys]]") :])
    code, out, _ = _cli(capsys, "audit", "verify", "--db", url, "--origin", origin, "--trusted-keys", str(stale))
    assert code == 1
    assert "seq 4" in out and "rotation: new key" in out


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        ("missing_new_key", "cannot open key file"),
        ("same_key", "current key or was retired"),
        ("loose_mode", "others can read it"),
    ],
)
def test_keys_rotate_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str], setup: str, message: str) -> None:
    old_path, new_path, url = tmp_path / "old.pem", tmp_path / "new.pem", f"sqlite:///{tmp_path / 'a.db'}"
    generate_key(old_path)
    if setup == "same_key":
        new_path = old_path
    elif setup == "loose_mode":
        generate_key(new_path)
        os.chmod(new_path, 0o644)
    rotate = ["keys", "rotate", "--key", str(old_path), "--new-key", str(new_path), "--db", url, "--origin", "t/x"]
    code, out, err = _cli(capsys, *rotate)
    assert code == 2
    assert message in err + out


# RFC 8032 section 7.1, tests 1 and 2: (secret key, public key, message, signature), hex.
RFC8032_VECTORS = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe2"
        "4655141438e7a100b",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302ae"
        "eb00d291612bb0c00",
    ),
]
GROUP_ORDER = 2**252 + 27742317777372353535851937790883648493


def _openssl_verifies(public: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    try:
        public.verify(signature, message)
    except InvalidSignature:
        return False
    return True


def _signature_variants(signature: bytes) -> list[tuple[str, bytes]]:
    s_plus_order = int.from_bytes(signature[32:], "little") + GROUP_ORDER
    return [
        ("as-signed", signature),
        ("R-bit-flip", bytes([signature[0] ^ 1]) + signature[1:]),
        ("S-bit-flip", signature[:40] + bytes([signature[40] ^ 0x10]) + signature[41:]),
        ("S-plus-group-order", signature[:32] + s_plus_order.to_bytes(32, "little")),  # malleability: not canonical
        ("short", signature[:63]),
        ("long", signature + b"\x00"),
        ("zeros", bytes(64)),
    ]


@pytest.mark.parametrize(("secret", "public", "message", "signature"), RFC8032_VECTORS, ids=["test1", "test2"])
def test_record_signature_check_agrees_with_openssl(secret: str, public: str, message: str, signature: str) -> None:
    # TrustedKey.verifies (libsodium) checks record signatures that cryptography (OpenSSL) made: both must accept
    # exactly the same ones.
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(secret))
    assert key.public_key().public_bytes_raw().hex() == public
    assert key.sign(bytes.fromhex(message)).hex() == signature
    trusted = TrustedKey(key_id(key.public_key()), key.public_key(), 0)
    for name, variant in _signature_variants(bytes.fromhex(signature)):
        for text in (bytes.fromhex(message), bytes.fromhex(message) + b"x"):
            expected = _openssl_verifies(key.public_key(), variant, text)
            assert trusted.verifies(variant, text) is expected, name
            assert expected is (name == "as-signed" and text == bytes.fromhex(message)), name
