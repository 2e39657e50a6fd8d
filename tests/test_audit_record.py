"""Audit record format: canonical bodies, strict parsing, leaf hashes and domain-separated signatures."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from collections.abc import Callable

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from aegis_proxy.audit.errors import AuditError, VerificationError
from aegis_proxy.audit.keys import TrustedKey, key_id
from aegis_proxy.audit.record import (
    RECORD_DOMAIN,
    ZERO_HASH,
    FindingSummary,
    RecordBody,
    RecordSigner,
    RotationInfo,
    SignedRecord,
    args_commitment,
    canonical_arguments,
    canonical_body,
    canonical_json,
    format_time,
    leaf_hash,
    parse_body,
    score_ppm,
    sign_record,
    signing_message,
    verify_record,
)

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
KEY_ID = key_id(KEY.public_key())
TRUSTED = {KEY_ID: TrustedKey(KEY_ID, KEY.public_key(), 0)}
TIME = "2026-11-29T10:26:51.000123Z"


def make_body(**changes: object) -> RecordBody:
    fields: dict[str, object] = {
        "origin": "aegis.example/audit/prod",
        "seq": 7,
        "prev": "ab" * 32,
        "type": "decision",
        "time": TIME,
        "replica": "replica-1",
        "request_id": "req-1",
        "session_id": "sess-1",
        "agent_id": "agent-é",
        "tool": "bash",
        "args_commit": args_commitment(b"n" * 32, {"command": "rm -rf build/"}),
        "decision": "deny",
        "rules": ("deny-destructive",),
        "policy_digest": "cd" * 32,
        "findings": (FindingSummary(category="shell.destructive", severity="high", path="$.command"),),
        "scores": {"shell": 870_000},
        "latency_us": 412,
        "key_id": KEY_ID,
    }
    fields.update(changes)
    return RecordBody(**fields)  # type: ignore[arg-type]


BODY = make_body()
BODY_BYTES = canonical_body(BODY)
SIGNED = sign_record(BODY, KEY)


# RFC 8785 examples (section 3.2.2/3.2.3 and appendix B), each checked against the rfc8785 package.
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1e30, b"1e+30"),
        (4.50, b"4.5"),
        (2e-3, b"0.002"),
        (0.000000000000000000000000001, b"1e-27"),
        (333333333.33333329, b"333333333.3333333"),
        (0.000001, b"0.000001"),
        (1e-7, b"1e-7"),
        (-0.0, b"0"),
        (5e-324, b"5e-324"),
        (1.7976931348623157e308, b"1.7976931348623157e+308"),
        (9007199254740992.0, b"9007199254740992"),
        (1e21, b"1e+21"),
        (295147905179352830000.0, b"295147905179352830000"),
        (0.1 + 0.2, b"0.30000000000000004"),
    ],
    ids=lambda v: repr(v),
)
def test_rfc8785_number_vectors(value: float, expected: bytes) -> None:
    assert rfc8785.dumps(value) == expected


def test_rfc8785_structure_vector() -> None:
    value = {
        "numbers": [333333333.33333329, 1e30, 4.50, 2e-3, 0.000000000000000000000000001],
        "string": "\u20ac$\u000f\u000aA'\u0042\u0022\u005c\\\"/",
        "literals": [None, True, False],
    }
    expected = (
        b'{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        b'"string":"\xe2\x82\xac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )
    assert rfc8785.dumps(value) == expected


def test_rfc8785_key_order_is_utf16() -> None:
    value = {"\u20ac": 1, "\r": 2, "\ufb33": 3, "1": 4, "\U0001f600": 5, "\u0080": 6, "\u00f6": 7}
    ordered = list(json.loads(rfc8785.dumps(value)))
    assert ordered == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 2**53, -(2**53), "\ud800"], ids=repr)
def test_rfc8785_refuses_what_has_no_canonical_form(value: object) -> None:
    with pytest.raises(rfc8785.CanonicalizationError):
        rfc8785.dumps(value)


def test_canonical_body_round_trips() -> None:
    assert parse_body(BODY_BYTES) == BODY
    assert rfc8785.dumps(json.loads(BODY_BYTES)) == BODY_BYTES
    assert b'"agent_id":"agent-\xc3\xa9"' in BODY_BYTES  # UTF-8, not \u escapes
    assert set(json.loads(BODY_BYTES)) == set(RecordBody.model_fields)  # nulls are written, never omitted


def _mutate(old: bytes, new: bytes) -> bytes:
    assert BODY_BYTES.count(old) == 1, old
    return BODY_BYTES.replace(old, new)


def _reserialised(**dumps_args: object) -> bytes:
    return json.dumps(json.loads(BODY_BYTES), **dumps_args).encode()  # type: ignore[arg-type]


CANONICAL_ATTACKS = [
    ("duplicate-key", _mutate(b'{"agent_id":', b'{"agent_id":"x","agent_id":'), "duplicate key"),
    ("duplicate-key-same-value", _mutate(b'"seq":7', b'"seq":7,"seq":7'), "duplicate key"),
    ("whitespace", _reserialised(sort_keys=True), "not canonical"),
    (
        "unsorted",
        json.dumps(dict(reversed(json.loads(BODY_BYTES).items())), separators=(",", ":"), ensure_ascii=False).encode(),
        "differ",
    ),
    ("ascii-escaped", _reserialised(sort_keys=True, separators=(",", ":")), "differ"),
    ("float-1.0", _mutate(b'"seq":7', b'"seq":7.0'), "non-integer"),
    ("exponent", _mutate(b'"seq":7', b'"seq":7e0'), "non-integer"),
    ("float-latency", _mutate(b'"latency_us":412', b'"latency_us":412.0'), "non-integer"),
    ("int-above-2^53", _mutate(b'"latency_us":412', b'"latency_us":9007199254740992'), "2^53"),
    ("int-below-minus-2^53", _mutate(b'"latency_us":412', b'"latency_us":-9007199254740992'), "2^53"),
    ("huge-int", _mutate(b'"latency_us":412', b'"latency_us":' + b"9" * 400), "2^53"),
    ("nan", _mutate(b'"latency_us":412', b'"latency_us":NaN'), "NaN"),
    ("infinity", _mutate(b'"latency_us":412', b'"latency_us":-Infinity'), "Infinity"),
    ("negative-zero", _mutate(b'"latency_us":412', b'"latency_us":-0'), "differ"),
    ("leading-zero", _mutate(b'"seq":7', b'"seq":07'), "not canonical"),
    ("non-utf8", _mutate(b"replica-1", b"replica-\xff"), "utf-8"),
    ("overlong-utf8", _mutate(b"replica-1", b"replica-\xc0\xaf"), "utf-8"),
    ("lone-surrogate", _mutate(b"replica-1", b"replica-\\ud800"), "not canonical"),
    ("escaped-letter", _mutate(b"replica-1", b"replica-\\u0031"), "differ"),
    ("escaped-slash", _mutate(b"$.command", b"$.command\\/x"), "differ"),
    ("bom", b"\xef\xbb\xbf" + BODY_BYTES, "not canonical"),
    ("trailing-newline", BODY_BYTES + b"\n", "differ"),
    ("trailing-garbage", BODY_BYTES + b"{}", "not canonical"),
    ("extra-field", _mutate(b'"v":1}', b'"v":1,"w":1}'), "unexpected ['w']"),
    ("missing-field", _mutate(b'"approver":null,', b""), "missing ['approver']"),
    ("missing-nested", _mutate(b'"path":"$.command",', b""), "findings.0.path"),
    ("extra-nested", _mutate(b'"severity":"high"}', b'"severity":"high","x":1}'), "findings.0.x"),
    ("string-int", _mutate(b'"seq":7', b'"seq":"7"'), "seq"),
    ("bool-int", _mutate(b'"latency_us":412', b'"latency_us":true'), "latency_us"),
    ("negative-seq", _mutate(b'"seq":7', b'"seq":-7'), "seq"),
    ("uppercase-hex", _mutate(b'"prev":"abab', b'"prev":"ABab'), "prev"),
    ("unknown-type", _mutate(b'"type":"decision"', b'"type":"decisions"'), "type"),
    ("unknown-version", _mutate(b'"v":1', b'"v":2'), "v"),
    ("scores-float", _mutate(b'"shell":870000', b'"shell":0.87'), "non-integer"),
    ("scores-over-ppm", _mutate(b'"shell":870000', b'"shell":1000001'), "scores"),
    ("array-body", b"[" + BODY_BYTES + b"]", "not a JSON object"),
    ("empty", b"", "not canonical"),
    ("deep-nesting", b"[" * 100_000 + b"]" * 100_000, "not canonical"),
    ("oversized", b" " * (2 << 20), "exceeds"),
]


@pytest.mark.parametrize(
    ("data", "reason"), [(d, r) for _, d, r in CANONICAL_ATTACKS], ids=[i for i, *_ in CANONICAL_ATTACKS]
)
def test_parse_body_rejects_non_canonical(data: bytes, reason: str) -> None:
    assert data != BODY_BYTES
    with pytest.raises(VerificationError) as caught:
        parse_body(data)
    assert reason.lower() in caught.value.message.lower()


def test_integer_boundary_is_accepted() -> None:
    body = make_body(latency_us=2**53 - 1)
    assert parse_body(canonical_body(body)).latency_us == 2**53 - 1


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"seq": 0}, "prev = 64 zeros"),
        ({"time": "2026-02-30T00:00:00.000000Z"}, "RFC 3339"),
        ({"time": "2026-11-29T10:26:51Z"}, "pattern"),
        ({"time": "２026-11-29T10:26:51.000123Z"}, "pattern"),  # full-width digit
        ({"time": "2026-11-29T10:26:51.000123+01:00"}, "pattern"),
        ({"type": "approval", "approver": "alice"}, "ref_seq"),
        ({"type": "approval", "ref_seq": 7}, "earlier record"),
        ({"decision": None}, "decision records need"),
        ({"args_commit": None}, "decision records need"),
        ({"type": "key_rotation"}, "rotation is required"),
        ({"scores": {"shell": -1}}, "greater than or equal"),
        ({"replica": "a\nb"}, "pattern"),
        ({"seq": 2**53}, "less than or equal"),
        ({"unknown": 1}, "Extra inputs"),
    ],
    ids=lambda v: str(v)[:40],
)
def test_body_schema_refuses(changes: dict[str, object], reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        make_body(**changes)


def test_body_is_frozen() -> None:
    with pytest.raises(ValidationError):
        BODY.seq = 8  # type: ignore[misc]


def test_genesis_and_approval_records_are_valid() -> None:
    genesis = make_body(seq=0, prev=ZERO_HASH)
    approval = make_body(type="approval", ref_seq=6, approver="alice", decision="allow", args_commit=None)
    for body in (genesis, approval):
        assert parse_body(canonical_body(body)) == body


def test_args_commitment() -> None:
    nonce = bytes(32)
    expected = hashlib.sha256(nonce + b'{"a":1,"b":[true,"\xc3\xa9"]}').hexdigest()
    assert args_commitment(nonce, {"b": [True, "é"], "a": 1}) == expected
    assert args_commitment(nonce, {"a": 1, "b": [True, "é"]}) == expected  # key order does not matter
    assert args_commitment(b"\x01" * 32, {"a": 1, "b": [True, "é"]}) != expected
    with pytest.raises(AuditError, match="16 bytes"):
        args_commitment(b"short", {})
    with pytest.raises(AuditError, match="canonicalised"):
        args_commitment(nonce, {"x": float("nan")})
    with pytest.raises(AuditError, match="canonicalised"):
        args_commitment(nonce, {1: "x"})  # json.dumps would write "1"; JCS has no such key


@pytest.mark.parametrize(("score", "ppm"), [(0.0, 0), (0.87, 870_000), (1.0, 1_000_000), (1.5, 1_000_000), (-2, 0)])
def test_score_ppm(score: float, ppm: int) -> None:
    assert score_ppm(score) == ppm


def test_format_time() -> None:
    moment = dt.datetime(2026, 11, 29, 11, 26, 51, 123, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    assert format_time(moment) == TIME
    assert format_time(dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)) == "2026-01-02T03:04:05.000000Z"
    assert format_time(dt.datetime(999, 12, 31, 23, 0, tzinfo=dt.UTC)) == "0999-12-31T23:00:00.000000Z"
    with pytest.raises(AuditError):
        format_time(dt.datetime(2026, 11, 29))


def test_leaf_hash_and_signing_message() -> None:
    assert leaf_hash(BODY_BYTES) == hashlib.sha256(b"\x00" + BODY_BYTES).digest()
    assert signing_message(SIGNED.leaf_hash) == b"aegis-proxy/audit/v1 record\n" + SIGNED.leaf_hash
    assert SIGNED.leaf_hash == leaf_hash(BODY_BYTES)
    assert SIGNED.body_bytes == BODY_BYTES
    assert SIGNED.key_id == KEY_ID


def test_verify_good_record() -> None:
    assert verify_record(SIGNED, TRUSTED) == BODY


def test_sign_refuses_a_key_the_body_does_not_name() -> None:
    with pytest.raises(AuditError, match="signed with"):
        sign_record(BODY, OTHER_KEY)
    with pytest.raises(AuditError, match="signed with"):
        RecordSigner.of(OTHER_KEY).sign(BODY)


def test_record_signer_signs_as_sign_record() -> None:
    signer = RecordSigner.of(KEY)
    assert signer.key_id == KEY_ID
    assert signer.sign(BODY) == SIGNED  # Ed25519 is deterministic: the same bytes and signature
    assert verify_record(signer.sign(BODY), TRUSTED) == BODY


@settings(max_examples=50, deadline=None)
@given(
    seed=st.binary(min_size=32, max_size=32),
    tool=st.text(alphabet=st.characters(min_codepoint=0x20, blacklist_categories=("Cs", "Cc")), min_size=1),
)
def test_record_signatures_are_the_ones_openssl_makes(seed: bytes, tool: str) -> None:
    """Records are signed through libsodium; the signature must be byte for byte what the key itself (OpenSSL) gives."""
    key = Ed25519PrivateKey.from_private_bytes(seed)
    signer = RecordSigner.of(key)
    body = BODY.model_copy(update={"key_id": signer.key_id, "tool": tool[:256]})
    signed = signer.sign(body)
    assert signed.signature == key.sign(signing_message(signed.leaf_hash))
    assert "sodium_key" not in repr(signer)  # the secret stays out of logs and tracebacks


def _with(**changes: object) -> SignedRecord:
    return dataclasses.replace(SIGNED, **changes)


def _domain_signed(prefix: bytes) -> SignedRecord:
    return _with(signature=KEY.sign(prefix + SIGNED.leaf_hash))


OTHER_ID = key_id(OTHER_KEY.public_key())
BOTH = {**TRUSTED, OTHER_ID: TrustedKey(OTHER_ID, OTHER_KEY.public_key(), 0)}

SIGNATURE_ATTACKS = [
    ("unknown-key", _with(key_id="00" * 16), TRUSTED, "unknown key id"),
    ("empty-signature", _with(signature=b""), TRUSTED, "malformed signature: 0 bytes"),
    ("short-signature", _with(signature=SIGNED.signature[:63]), TRUSTED, "malformed signature: 63"),
    ("long-signature", _with(signature=SIGNED.signature + b"\x00"), TRUSTED, "malformed signature: 65"),
    ("zero-signature", _with(signature=bytes(64)), TRUSTED, "bad signature"),
    (
        "flipped-signature",
        _with(signature=bytes([SIGNED.signature[0] ^ 1]) + SIGNED.signature[1:]),
        TRUSTED,
        "bad signature",
    ),
    ("bare-leaf-domain", _domain_signed(b""), TRUSTED, "wrong domain"),
    ("other-domain", _domain_signed(b"aegis-proxy/audit/v1 checkpoint\n"), TRUSTED, "bad signature"),
    ("old-domain", _domain_signed(b"fwaudit/v1 record\n"), TRUSTED, "bad signature"),
    (
        "signed-by-other-key",
        _with(signature=OTHER_KEY.sign(signing_message(SIGNED.leaf_hash))),
        TRUSTED,
        "bad signature",
    ),
    ("claims-other-key", _with(key_id=OTHER_ID), BOTH, "key id mismatch"),
    ("stored-leaf-hash", _with(leaf_hash=bytes(32)), TRUSTED, "leaf hash mismatch"),
    ("leaf-without-prefix", _with(leaf_hash=hashlib.sha256(BODY_BYTES).digest()), TRUSTED, "leaf hash mismatch"),
    ("before-key-range", SIGNED, {KEY_ID: TrustedKey(KEY_ID, KEY.public_key(), 8)}, "not valid at seq 7 (valid 8..)"),
    ("after-key-range", SIGNED, {KEY_ID: TrustedKey(KEY_ID, KEY.public_key(), 0, 6)}, "not valid at seq 7"),
    ("body-reserialised", _with(body_bytes=_reserialised(sort_keys=True)), TRUSTED, "not canonical"),
]


@pytest.mark.parametrize(
    ("signed", "trusted", "reason"), [a[1:] for a in SIGNATURE_ATTACKS], ids=[a[0] for a in SIGNATURE_ATTACKS]
)
def test_verify_record_rejects(signed: SignedRecord, trusted: dict[str, TrustedKey], reason: str) -> None:
    with pytest.raises(VerificationError) as caught:
        verify_record(signed, trusted)
    assert reason in caught.value.message


def test_key_range_edges_accept() -> None:
    assert verify_record(SIGNED, {KEY_ID: TrustedKey(KEY_ID, KEY.public_key(), 7, 7)}) == BODY


def test_every_byte_flip_is_rejected() -> None:
    for position in range(len(BODY_BYTES)):
        mutated = bytearray(BODY_BYTES)
        mutated[position] ^= 0x01
        with pytest.raises(VerificationError):
            verify_record(_with(body_bytes=bytes(mutated)), TRUSTED)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(position=st.integers(min_value=0, max_value=len(BODY_BYTES) - 1), delta=st.integers(min_value=1, max_value=255))
def test_any_single_byte_mutation_is_rejected(position: int, delta: int) -> None:
    mutated = bytearray(BODY_BYTES)
    mutated[position] = (mutated[position] + delta) % 256
    with pytest.raises(VerificationError):
        verify_record(_with(body_bytes=bytes(mutated)), TRUSTED)
    # also when the attacker recomputes the stored leaf hash to match
    with pytest.raises(VerificationError):
        verify_record(_with(body_bytes=bytes(mutated), leaf_hash=leaf_hash(bytes(mutated))), TRUSTED)


@settings(max_examples=300)
@given(data=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)))
def test_parse_body_only_raises_verification_error(data: bytes) -> None:
    with pytest.raises(VerificationError):
        parse_body(data)


@settings(max_examples=200)
@given(
    value=st.recursive(
        st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=20,
    )
)
def test_arbitrary_json_values_are_never_bodies(value: object) -> None:
    with pytest.raises(VerificationError):
        parse_body(rfc8785.dumps(value))


def test_domain_prefix_constant() -> None:
    assert RECORD_DOMAIN == b"aegis-proxy/audit/v1 record\n"


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)


@settings(max_examples=500)
@given(value=JSON_VALUES)
def test_fast_canonical_path_matches_rfc8785(value: object) -> None:
    assert canonical_json(value) == rfc8785.dumps(value)


@pytest.mark.parametrize(
    "value",
    [
        {"\ufb33": 1, "\U0001f600": 2},  # UTF-16 order differs from code-point order
        {"a": '\x7f\x00\x1f\u2028"\\/'},
        {"a": 1.5},
        {"a": 2**53 - 1, "b": -(2**53) + 1},
    ],
    ids=["non-bmp-key-order", "escapes", "float", "int-bounds"],
)
def test_fast_canonical_path_edge_cases(value: object) -> None:
    assert canonical_json(value) == rfc8785.dumps(value)


# Tool arguments as the wire modules hand them over: any JSON, plus what a buggy caller might pass (keys that are
# not strings, tuples, floats), which the fast path must either write exactly as rfc8785 does or leave to it.
ARGUMENT_KEYS = st.text(max_size=8) | st.integers(-3, 3) | st.booleans() | st.none() | st.floats(allow_nan=False)
ARGUMENT_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**60), 2**60) | st.text() | st.floats(allow_nan=False),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
        | st.dictionaries(ARGUMENT_KEYS, inner, max_size=3)
    ),
    max_leaves=30,
)


def _outcome(dump: Callable[[object], bytes], value: object) -> bytes | str:
    try:
        return dump(value)
    except rfc8785.CanonicalizationError:
        return "refused"


@settings(max_examples=500)
@given(value=ARGUMENT_VALUES)
def test_canonical_json_is_rfc8785_for_any_arguments(value: object) -> None:
    assert _outcome(canonical_json, value) == _outcome(rfc8785.dumps, value)


@pytest.mark.parametrize(
    "value",
    [{"a": 2**53}, {"a": "\ud800"}, {"a": float("nan")}, {1: "x"}, {"a": {None: 1}}, {True: 1}, [{"b": 1, 2: 3}]],
    ids=["int", "surrogate", "nan", "int-key", "none-key-nested", "bool-key", "mixed-keys"],
)
def test_canonical_json_refuses_like_rfc8785(value: object) -> None:
    with pytest.raises(rfc8785.CanonicalizationError):
        rfc8785.dumps(value)
    with pytest.raises(rfc8785.CanonicalizationError):
        canonical_json(value)


@pytest.mark.parametrize("value", [{1: "x"}, {"a": float("inf")}, {"a": 2**53}], ids=["int-key", "inf", "big-int"])
def test_canonical_arguments_refuse_with_an_audit_error(value: object) -> None:
    with pytest.raises(AuditError, match="arguments cannot be canonicalised"):
        canonical_arguments(value)


@pytest.mark.parametrize("model", [RecordBody, FindingSummary, RotationInfo])
def test_fields_are_declared_in_canonical_order(model: type[BaseModel]) -> None:
    # canonical_body and parse_body rely on pydantic's serialiser writing the fields in RFC 8785 order.
    assert list(model.model_fields) == sorted(model.model_fields)


LABELS = st.text(st.characters(exclude_categories=("Cs", "Cc")), min_size=1, max_size=12)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    agent=st.none() | LABELS,
    tool=st.none() | LABELS,
    rules=st.lists(LABELS, max_size=3).map(tuple),
    scores=st.dictionaries(LABELS, st.integers(0, 1_000_000), max_size=4),
    path=st.text(st.characters(exclude_categories=("Cs", "Cc")), max_size=20),
)
def test_canonical_body_is_rfc8785_and_parses_back(
    agent: str | None, tool: str | None, rules: tuple[str, ...], scores: dict[str, int], path: str
) -> None:
    # Whichever way canonical_body takes (pydantic's serialiser, json.dumps, rfc8785: unsorted or non-ASCII score
    # names), the bytes are RFC 8785's, and parse_body's fast check accepts them and gives the same body back.
    findings = (FindingSummary(category="secret", severity="low", path=path),)
    body = make_body(agent_id=agent, tool=tool, rules=rules, scores=scores, findings=findings)
    data = canonical_body(body)
    assert data == rfc8785.dumps(body.model_dump(mode="json"))
    assert parse_body(data) == body


def test_unsorted_score_names_are_not_canonical() -> None:
    data = canonical_body(make_body(scores={"a": 1, "b": 2}))
    swapped = data.replace(b'"scores":{"a":1,"b":2}', b'"scores":{"b":2,"a":1}')
    assert swapped != data
    with pytest.raises(VerificationError, match="differ"):
        parse_body(swapped)
