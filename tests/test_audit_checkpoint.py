"""C2SP tlog-checkpoint signed notes: round trip, strict parsing, signature checks, fork detection."""

from __future__ import annotations

import base64
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from aegis_proxy.audit.checkpoint import (
    Checkpoint,
    NoteSignature,
    add_signature,
    assert_consistent,
    key_id,
    parse_checkpoint,
    sign_checkpoint,
    verify_checkpoint,
    verify_checkpoint_keys,
)
from aegis_proxy.audit.errors import AuditError, VerificationError
from aegis_proxy.audit.keys import TrustedKey
from aegis_proxy.audit.keys import key_id as record_key_id
from aegis_proxy.audit.merkle import consistency_proof, leaf_hash, root

ORIGIN = "example.com/aegis/audit"
NAME = "example.com/aegis/audit"
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
TRUSTED = {NAME: KEY.public_key()}
LEAVES = [leaf_hash(i.to_bytes(4, "big")) for i in range(20)]
CP = Checkpoint(ORIGIN, 20, root(LEAVES))
NOTE = sign_checkpoint(CP, NAME, KEY)
ROOT_B64 = base64.b64encode(CP.root).decode()
BODY = f"{ORIGIN}\n20\n{ROOT_B64}\n"
SIG_LINE = NOTE[len(BODY) + 1 :]
# 32 bytes use 43 base64 digits; the last digit's 2 low bits are padding and must be zero in canonical base64.
_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
NONCANONICAL_ROOT = ROOT_B64[:-2] + _B64[_B64.index(ROOT_B64[-2]) | 1] + "="
URLSAFE_ROOT = base64.urlsafe_b64encode(b"\xff" * 32).decode()  # "_" and "-" are not standard base64


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def test_note_layout_and_round_trip() -> None:
    assert NOTE.startswith(BODY + "\n— " + NAME + " ")
    assert NOTE.endswith("\n") and NOTE.count("\n") == 5
    checkpoint, signatures = parse_checkpoint(NOTE)
    assert checkpoint == CP
    assert len(signatures) == 1 and signatures[0].name == NAME
    assert signatures[0].key_id == key_id(NAME, KEY.public_key())
    assert len(signatures[0].signature) == 64
    assert verify_checkpoint(NOTE, TRUSTED) == CP


def test_key_id_is_the_signed_note_ed25519_key_id() -> None:
    expected = hashlib.sha256(NAME.encode() + b"\n\x01" + raw_public(KEY)).digest()[:4]
    assert key_id(NAME, KEY.public_key()) == expected


def test_signature_is_ed25519_over_the_body() -> None:
    blob = base64.b64decode(SIG_LINE.split(" ")[-1])
    KEY.public_key().verify(blob[4:], BODY.encode())  # raises if not


def test_empty_tree_checkpoint() -> None:
    empty = Checkpoint(ORIGIN, 0, hashlib.sha256(b"").digest())
    assert verify_checkpoint(sign_checkpoint(empty, NAME, KEY), TRUSTED) == empty


MALFORMED = [
    ("no-blank-line", BODY + SIG_LINE),
    ("no-signatures", BODY + "\n"),
    ("no-final-newline", NOTE[:-1]),
    ("trailing-data", NOTE + "garbage\n"),
    ("trailing-data-no-newline", NOTE + "garbage"),
    ("trailing-blank-line", NOTE + "\n"),
    ("extra-body-line", f"{ORIGIN}\n20\n{ROOT_B64}\nextension\n\n" + SIG_LINE),
    ("missing-root-line", f"{ORIGIN}\n20\n\n" + SIG_LINE),
    ("empty-origin", f"\n20\n{ROOT_B64}\n\n" + SIG_LINE),
    ("origin-leading-space", f" {ORIGIN}\n20\n{ROOT_B64}\n\n" + SIG_LINE),
    ("size-leading-zero", f"{ORIGIN}\n020\n{ROOT_B64}\n\n" + SIG_LINE),
    ("size-01", f"{ORIGIN}\n01\n{ROOT_B64}\n\n" + SIG_LINE),
    ("size-plus", f"{ORIGIN}\n+20\n{ROOT_B64}\n\n" + SIG_LINE),
    ("size-negative", f"{ORIGIN}\n-1\n{ROOT_B64}\n\n" + SIG_LINE),
    ("size-space", f"{ORIGIN}\n 20\n{ROOT_B64}\n\n" + SIG_LINE),
    ("size-unicode-digit", f"{ORIGIN}\n２０\n{ROOT_B64}\n\n" + SIG_LINE),
    ("size-2^63", f"{ORIGIN}\n{2**63}\n{ROOT_B64}\n\n" + SIG_LINE),
    ("size-huge", f"{ORIGIN}\n{'9' * 5000}\n{ROOT_B64}\n\n" + SIG_LINE),
    ("size-empty", f"{ORIGIN}\n\n{ROOT_B64}\n\n" + SIG_LINE),
    ("root-bad-base64", f"{ORIGIN}\n20\n{ROOT_B64[:-2]}!=\n\n" + SIG_LINE),
    ("root-unpadded", f"{ORIGIN}\n20\n{ROOT_B64.rstrip('=')}\n\n" + SIG_LINE),
    ("root-urlsafe", f"{ORIGIN}\n20\n{URLSAFE_ROOT}\n\n" + SIG_LINE),
    ("root-31-bytes", f"{ORIGIN}\n20\n{base64.b64encode(CP.root[:31]).decode()}\n\n" + SIG_LINE),
    ("root-33-bytes", f"{ORIGIN}\n20\n{base64.b64encode(CP.root + b'x').decode()}\n\n" + SIG_LINE),
    (
        "root-noncanonical-padding-bits",
        f"{ORIGIN}\n20\n{NONCANONICAL_ROOT}\n\n" + SIG_LINE,
    ),
    ("crlf", NOTE.replace("\n", "\r\n")),
    ("cr-in-origin", f"{ORIGIN}\r\n20\n{ROOT_B64}\n\n" + SIG_LINE),
    ("nul", NOTE.replace(ORIGIN, ORIGIN + "\x00", 1)),
    ("sig-hyphen-not-em-dash", BODY + "\n" + SIG_LINE.replace("—", "-", 1)),
    ("sig-no-space-after-dash", BODY + "\n" + SIG_LINE.replace("— ", "—", 1)),
    ("sig-double-space", BODY + "\n" + SIG_LINE.replace(" ", "  ", 2)),
    ("sig-no-name", BODY + "\n— " + SIG_LINE.split(" ")[-1]),
    ("sig-name-with-plus", BODY + "\n" + SIG_LINE.replace(NAME, NAME + "+x", 1)),
    ("sig-bad-base64", BODY + "\n" + SIG_LINE[:-3] + "!\n"),
    ("sig-only-key-id", f"{BODY}\n— {NAME} {base64.b64encode(b'abcd').decode()}\n"),
    ("not-a-string", b"bytes"),
    ("too-large", NOTE + ("— a " + "A" * 60 + "\n") * 2000),
]


@pytest.mark.parametrize("text", [t for _, t in MALFORMED], ids=[i for i, _ in MALFORMED])
def test_malformed_notes_are_rejected(text: str) -> None:
    with pytest.raises(VerificationError):
        parse_checkpoint(text)
    with pytest.raises(VerificationError):
        verify_checkpoint(text, TRUSTED)


def test_size_limit_is_exactly_2_63_minus_1() -> None:
    cp = Checkpoint(ORIGIN, 2**63 - 1, CP.root)
    assert parse_checkpoint(sign_checkpoint(cp, NAME, KEY))[0].size == 2**63 - 1


@pytest.mark.parametrize(
    "trusted",
    [
        {NAME: OTHER_KEY.public_key()},  # wrong key: key id mismatches, so the signature is not ours
        {"other.example/log": KEY.public_key()},  # right key under another name: key id binds the name
        {},
    ],
    ids=["wrong-key", "wrong-name", "no-trusted-keys"],
)
def test_untrusted_signatures_are_rejected(trusted: dict) -> None:
    with pytest.raises(VerificationError, match="no signature by a trusted key") as err:
        verify_checkpoint(NOTE, trusted)
    assert err.value.index == 20


def test_key_id_mismatch_is_not_accepted() -> None:
    """A valid signature by the trusted key, but the key id bytes were altered: no trusted signature."""
    blob = bytearray(base64.b64decode(SIG_LINE.split(" ")[-1]))
    blob[0] ^= 1
    note = f"{BODY}\n— {NAME} {base64.b64encode(bytes(blob)).decode()}\n"
    assert parse_checkpoint(note)[1][0].key_id != key_id(NAME, KEY.public_key())
    with pytest.raises(VerificationError):
        verify_checkpoint(note, TRUSTED)


def test_signature_over_a_different_body_is_rejected() -> None:
    other = sign_checkpoint(Checkpoint(ORIGIN, 21, CP.root), NAME, KEY)
    other_sig_line = other.split("\n\n", 1)[1]
    with pytest.raises(VerificationError, match="does not match"):
        verify_checkpoint(BODY + "\n" + other_sig_line, TRUSTED)


@pytest.mark.parametrize("byte", [4, 20, 67], ids=["sig-start", "sig-middle", "sig-end"])
def test_bit_flipped_signature_is_rejected(byte: int) -> None:
    blob = bytearray(base64.b64decode(SIG_LINE.split(" ")[-1]))
    blob[byte] ^= 0x80
    with pytest.raises(VerificationError):
        verify_checkpoint(f"{BODY}\n— {NAME} {base64.b64encode(bytes(blob)).decode()}\n", TRUSTED)


def test_truncated_signature_with_trusted_key_id_is_rejected() -> None:
    blob = base64.b64decode(SIG_LINE.split(" ")[-1])[:40]
    with pytest.raises(VerificationError, match="not 64 bytes"):
        verify_checkpoint(f"{BODY}\n— {NAME} {base64.b64encode(blob).decode()}\n", TRUSTED)


def test_unknown_signatures_are_ignored_and_cosigning_works() -> None:
    cosigned = add_signature(NOTE, "witness.example/w1", OTHER_KEY)
    _, signatures = parse_checkpoint(cosigned)
    assert [s.name for s in signatures] == [NAME, "witness.example/w1"]
    assert verify_checkpoint(cosigned, TRUSTED) == CP
    assert verify_checkpoint(cosigned, {"witness.example/w1": OTHER_KEY.public_key()}) == CP
    # an unknown signer listed first does not hide the trusted one
    first_unknown = BODY + "\n" + cosigned.split("\n\n", 1)[1].split("\n")[1] + "\n" + SIG_LINE
    assert verify_checkpoint(first_unknown, TRUSTED) == CP


def test_key_rotation_both_keys_sign() -> None:
    rotated = add_signature(NOTE, "example.com/aegis/audit-2027", OTHER_KEY)
    assert verify_checkpoint(rotated, {"example.com/aegis/audit-2027": OTHER_KEY.public_key()}) == CP
    assert verify_checkpoint(rotated, TRUSTED) == CP


def test_a_bad_trusted_signature_is_not_excused_by_a_good_one() -> None:
    forged = BODY + "\n" + sign_checkpoint(Checkpoint(ORIGIN, 1, CP.root), NAME, KEY).split("\n\n", 1)[1]
    note = add_signature(forged, "witness.example/w1", OTHER_KEY)
    with pytest.raises(VerificationError, match="does not match"):
        verify_checkpoint(note, {NAME: KEY.public_key(), "witness.example/w1": OTHER_KEY.public_key()})


@pytest.mark.parametrize(
    ("origin", "size", "root_"),
    [
        ("", 1, CP.root),
        ("a\nb", 1, CP.root),
        (ORIGIN, -1, CP.root),
        (ORIGIN, 2**63, CP.root),
        (ORIGIN, True, CP.root),
        (ORIGIN, 1, b"short"),
    ],
    ids=["empty-origin", "newline-origin", "negative", "too-big", "bool", "short-root"],
)
def test_checkpoint_construction_validates(origin: str, size: int, root_: bytes) -> None:
    with pytest.raises(AuditError):
        Checkpoint(origin, size, root_)


@pytest.mark.parametrize("name", ["", "has space", "a+b", "tab\tname"], ids=["empty", "space", "plus", "tab"])
def test_bad_key_names_cannot_sign(name: str) -> None:
    with pytest.raises(AuditError):
        sign_checkpoint(CP, name, KEY)


def test_non_ed25519_trusted_key_is_a_configuration_error() -> None:
    with pytest.raises(AuditError):
        verify_checkpoint(NOTE, {NAME: raw_public(KEY)})  # type: ignore[dict-item]


# --- fork detection -------------------------------------------------------------------------------------------------


def test_assert_consistent_accepts_an_extension() -> None:
    older = Checkpoint(ORIGIN, 7, root(LEAVES[:7]))
    assert_consistent(older, CP, consistency_proof(7, LEAVES))
    assert_consistent(CP, CP, [])


def test_same_size_different_roots_is_a_fork() -> None:
    forked = Checkpoint(ORIGIN, 20, root([*LEAVES[:19], leaf_hash(b"rewritten")]))
    a = verify_checkpoint(NOTE, TRUSTED)
    b = verify_checkpoint(sign_checkpoint(forked, NAME, KEY), TRUSTED)  # both validly signed
    with pytest.raises(VerificationError, match="fork") as err:
        assert_consistent(a, b, [])
    assert err.value.index == 20


def test_inconsistent_newer_checkpoint_is_rejected() -> None:
    rewritten = [*LEAVES[:3], leaf_hash(b"rewritten"), *LEAVES[4:]]
    older = Checkpoint(ORIGIN, 7, root(LEAVES[:7]))
    newer = Checkpoint(ORIGIN, 20, root(rewritten))
    with pytest.raises(VerificationError):
        assert_consistent(older, newer, consistency_proof(7, rewritten))
    with pytest.raises(VerificationError):
        assert_consistent(older, newer, consistency_proof(7, LEAVES))


def test_truncation_and_origin_mismatch_are_rejected() -> None:
    older = Checkpoint(ORIGIN, 7, root(LEAVES[:7]))
    with pytest.raises(VerificationError, match="shrank"):
        assert_consistent(CP, older, [])
    with pytest.raises(VerificationError, match="different logs"):
        assert_consistent(Checkpoint("other.example/log", 7, older.root), CP, consistency_proof(7, LEAVES))


# --- Hypothesis -----------------------------------------------------------------------------------------------------

origins = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x2FFF, exclude_categories=("Cs",)), min_size=1
).filter(lambda o: o == o.strip() and "\x7f" not in o)


@settings(max_examples=200, deadline=None)
@given(origin=origins, size=st.integers(0, 2**63 - 1), root_=st.binary(min_size=32, max_size=32))
def test_random_checkpoints_round_trip(origin: str, size: int, root_: bytes) -> None:
    cp = Checkpoint(origin, size, root_)
    assert verify_checkpoint(sign_checkpoint(cp, NAME, KEY), TRUSTED) == cp


@settings(max_examples=500, deadline=None)
@given(text=st.text(max_size=300))
def test_garbage_notes_only_raise_verification_error(text: str) -> None:
    with pytest.raises(VerificationError):
        verify_checkpoint(text, TRUSTED)


@settings(max_examples=500, deadline=None)
@given(position=st.integers(0, len(NOTE) - 1), replacement=st.characters())
def test_any_single_character_change_is_rejected(position: int, replacement: str) -> None:
    mutated = NOTE[:position] + replacement + NOTE[position + 1 :]
    if mutated == NOTE:
        return
    with pytest.raises(VerificationError):
        verify_checkpoint(mutated, TRUSTED)


def test_signature_dataclass_is_frozen() -> None:
    sig = NoteSignature(NAME, b"abcd", b"x")
    with pytest.raises(AttributeError):
        sig.name = "other"  # type: ignore[misc]


# verify_checkpoint_keys: checkpoints against the audit trusted-keys file (keys.TrustedKey with seq ranges)


def _trusted(*entries: tuple[Ed25519PrivateKey, int, int | None]) -> dict[str, TrustedKey]:
    trusted = {}
    for key, first, last in entries:
        kid = record_key_id(key.public_key())
        trusted[kid] = TrustedKey(kid, key.public_key(), first, last)
    return trusted


@pytest.mark.parametrize(
    ("entries", "size", "accepted"),
    [
        pytest.param([(KEY, 0, None)], 20, True, id="open-ended"),
        pytest.param([(KEY, 0, 19)], 20, True, id="last-record-covered"),
        pytest.param([(KEY, 0, 18)], 20, False, id="retired-before-the-last-record"),
        pytest.param([(KEY, 20, None)], 20, False, id="starts-after-the-last-record"),
        pytest.param([(KEY, 0, None)], 0, True, id="empty-tree"),
        pytest.param([(OTHER_KEY, 0, None)], 20, False, id="another-key"),
        pytest.param([(OTHER_KEY, 0, None), (KEY, 10, None)], 20, True, id="one-of-several"),
    ],
)
def test_verify_checkpoint_keys_uses_key_ranges(
    entries: list[tuple[Ed25519PrivateKey, int, int | None]], size: int, accepted: bool
) -> None:
    note = sign_checkpoint(Checkpoint(ORIGIN, size, root(LEAVES[:size])), "any-name/k1", KEY)
    if accepted:
        assert verify_checkpoint_keys(note, _trusted(*entries)).size == size
    else:
        with pytest.raises(VerificationError, match=f"checkpoint at size {size} has no signature by a trusted key"):
            verify_checkpoint_keys(note, _trusted(*entries))


def test_verify_checkpoint_keys_rejects_a_bad_signature_by_a_trusted_key() -> None:
    forged = NOTE.replace(f"\n20\n{ROOT_B64}\n", f"\n19\n{ROOT_B64}\n")
    with pytest.raises(VerificationError, match="does not match the checkpoint at size 19"):
        verify_checkpoint_keys(forged, _trusted((KEY, 0, None)))
