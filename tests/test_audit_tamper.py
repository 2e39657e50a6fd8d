"""The issue's verifier list, items 1-12: each tampering is applied with raw SQL to a real signed log on SQLite and on
PostgreSQL, then `aegis audit verify` (commands.verify_log: chain, head, stored and trusted checkpoints) must fail at
the right step and seq (or checkpoint size).

Covered elsewhere, not repeated here: the RFC 8785 reference vectors and every canonical-form rejection of a body in
isolation (tests/test_audit_record.py: test_rfc8785_*, test_parse_body_rejects_non_canonical); Merkle proof mutations
on the proofs themselves (tests/test_audit_merkle.py: test_inclusion_mutations_rejected,
test_consistency_mutations_rejected, test_interior_node_presented_as_leaf_is_rejected) and on exported inclusion
proofs (tests/test_audit_export.py); items 13-14 (kill -9, N processes x M threads) in tests/test_audit_store.py;
item 15 in tests/test_audit_export.py.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.exc import IntegrityError

from aegis_proxy.audit import commands
from aegis_proxy.audit import verify as verify_module
from aegis_proxy.audit.checkpoint import Checkpoint, sign_checkpoint
from aegis_proxy.audit.commands import VERIFY_STEPS, verify_log
from aegis_proxy.audit.keys import key_id
from aegis_proxy.audit.merkle import leaf_hash, node_hash, root
from aegis_proxy.audit.record import canonical_body, signing_message
from aegis_proxy.audit.store import (
    AppendEntry,
    AuditStore,
    audit_arguments,
    audit_checkpoints,
    audit_records,
    checkpoint_key_name,
)
from tests.audit_support import KEY, Log, db_url_fixture, log_fixture, trust_toml  # noqa: F401 - fixtures

OTHER_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(100, 132)))


@dataclasses.dataclass(frozen=True)
class Expect:
    step: int
    seq: int | None
    text: str
    size: int | None = None


def _resign(log: Log, seq: int, data: bytes) -> None:
    """An insider with the key writes `data` as seq's body: leaf hash and signature match it, so only the body's
    own form can give it away."""
    leaf = leaf_hash(data)
    log.update(seq, body=data, leaf_hash=leaf, signature=KEY.sign(signing_message(leaf)))


def _rewrite_from(log: Log, seq: int, tool: str) -> None:
    """An insider with the key replaces record `seq` and re-signs and re-chains every record after it (a fork)."""
    prev = log.body(seq).prev
    for n in range(seq, log.size):
        body = log.body(n)
        changes: dict[str, object] = {"prev": prev}
        if n == seq:
            changes["tool"] = tool
        rewritten = body.model_copy(update=changes)
        signed = log.write_record(rewritten)
        prev = signed.leaf_hash.hex()
    log.reset_head()


# --------------------------------------------------------------------------------------------------------------------
# the tamperings: each returns the trusted checkpoint notes the verifier is given


def edit_body_byte(log: Log) -> list[str]:
    log.update(3, body=log.signed(3).body_bytes.replace(b'"tool":"http_get"', b'"tool":"http_gex"'))
    return []


def edit_body_and_leaf_hash(log: Log) -> list[str]:
    data = log.signed(3).body_bytes.replace(b'"decision":"deny"', b'"decision":"allow"')
    log.update(3, body=data, leaf_hash=leaf_hash(data))
    return []


def edit_indexed_column(log: Log) -> list[str]:
    log.update(3, decision="allow")
    return []


def delete_middle(log: Log) -> list[str]:
    log.delete(4)
    return []


def delete_and_rechain_without_key(log: Log) -> list[str]:
    log.delete(2)
    prev = log.signed(1).leaf_hash
    for old in range(3, 8):
        record = log.signed(old)
        body = log.body(old).model_copy(update={"seq": old - 1, "prev": prev.hex()})
        data = canonical_body(body)
        prev = leaf_hash(data)
        # The old signature is all the tamperer has: the body and leaf hash change under it.
        log.execute(
            sa.update(audit_records)
            .where(log.where(old))
            .values(seq=old - 1, body=data, leaf_hash=prev, prev_hash=bytes.fromhex(body.prev))
        )
        assert record.signature == log.signed(old - 1).signature
    log.reset_head()
    return []


def swap_two_records(log: Log) -> list[str]:
    rows = log.rows()
    columns = [c.name for c in audit_records.columns if c.name not in ("origin", "seq")]
    log.update(2, prev_hash=b"\xff" * 32)  # the unique prev constraint forces a detour
    log.update(5, **{name: getattr(rows[2], name) for name in columns})
    log.update(2, **{name: getattr(rows[5], name) for name in columns})
    return []


def truncate_tail_against_export(log: Log) -> list[str]:
    anchor = log.note(8)
    log.delete(5, 6, 7)
    log.delete_checkpoints_from(6)
    log.reset_head()
    return [anchor]


def truncate_tail_with_stored_checkpoint(log: Log) -> list[str]:
    log.store_checkpoint(8)
    log.delete(5, 6, 7)
    log.reset_head()
    return []


def _snapshot(log: Log) -> list[dict[str, object]]:
    return [dict(row._mapping) for _, row in sorted(log.rows().items())]


def _restore(log: Log, snapshot: list[dict[str, object]]) -> None:
    log.execute(sa.delete(audit_records).where(audit_records.c.origin == log.origin))
    log.execute(sa.delete(audit_checkpoints).where(audit_checkpoints.c.origin == log.origin))
    log.execute(sa.delete(audit_arguments).where(audit_arguments.c.origin == log.origin, audit_arguments.c.seq >= 5))
    for row in snapshot:
        log.execute(sa.insert(audit_records).values(**row))
    log.reset_head()


def restore_older_backup(log: Log) -> list[str]:
    backup = [row for row in _snapshot(log) if row["seq"] < 5]  # the backup was made at size 5
    anchor = log.note(8)  # later, the size-8 checkpoint went off-box
    _restore(log, backup)
    return [anchor]


def restore_backup_and_keep_appending(log: Log) -> list[str]:
    backup = [row for row in _snapshot(log) if row["seq"] < 5]
    anchor = log.note(8)
    _restore(log, backup)
    log.append(4)  # the proxy runs on from the backup: 9 records, but seq 5..7 are not the anchored ones
    return [anchor]


def fork_same_size(log: Log) -> list[str]:
    anchor = log.note(8)
    log.delete_checkpoints_from(0)
    _rewrite_from(log, 6, "rewritten")
    return [anchor]


def fork_two_trusted_checkpoints(log: Log) -> list[str]:
    first = log.note(8)
    log.delete_checkpoints_from(0)
    _rewrite_from(log, 6, "rewritten")
    return [first, log.note(8)]


def fork_below_trusted_size(log: Log) -> list[str]:
    anchor = log.note(5)
    log.delete_checkpoints_from(0)
    _rewrite_from(log, 3, "rewritten")
    return [anchor]


def fork_against_stored_checkpoint(log: Log) -> list[str]:
    log.store_checkpoint(6)
    _rewrite_from(log, 2, "rewritten")
    return []


def splice_from_other_position(log: Log) -> list[str]:
    source = log.signed(1)
    log.update(4, body=source.body_bytes, leaf_hash=source.leaf_hash, signature=source.signature)
    return []


def splice_from_other_log(log: Log) -> list[str]:
    other = AuditStore(log.url, origin=f"{log.origin}-other", signer_key=KEY, replica="r1")
    try:
        other.append([_entry(log, 0)])
        [foreign] = list(other.iter_records())
    finally:
        other.close()
    record = foreign.record
    log.update(0, body=record.body_bytes, leaf_hash=record.leaf_hash, signature=record.signature)
    return []


def _entry(log: Log, seq: int) -> AppendEntry:
    body = log.body(seq)
    return AppendEntry(
        type="decision",
        decision=body.decision,
        tool=body.tool,
        arguments={"n": seq},
        agent_id=body.agent_id,
        session_id=body.session_id,
    )


def untrusted_key(log: Log) -> list[str]:
    log.trusted_path.write_text(trust_toml((OTHER_KEY, 0, None)))
    return []


def key_outside_its_range(log: Log) -> list[str]:
    log.trusted_path.write_text(trust_toml((KEY, 0, 4)))
    return []


def record_signed_by_an_insiders_own_key(log: Log) -> list[str]:
    body = log.body(6).model_copy(update={"key_id": key_id(OTHER_KEY.public_key()), "tool": "exfiltrate"})
    log.write_record(body, OTHER_KEY)
    return []


def wrong_domain_prefix(log: Log) -> list[str]:
    log.update(3, signature=KEY.sign(log.signed(3).leaf_hash))  # the bare leaf hash, no record domain
    return []


def malformed_signature(log: Log) -> list[str]:
    log.update(3, signature=log.signed(3).signature[:63])
    return []


def _canonical_attack(change: Callable[[bytes], bytes]) -> Callable[[Log], list[str]]:
    def tamper(log: Log) -> list[str]:
        original = log.signed(3).body_bytes
        changed = change(original)
        assert changed != original
        _resign(log, 3, changed)
        return []

    return tamper


def _reserialise(data: bytes) -> bytes:
    return json.dumps(json.loads(data), indent=1).encode()


def stored_checkpoint_root_column(log: Log) -> list[str]:
    log.store_checkpoint(8)
    flipped = bytes([root(log.leaves())[0] ^ 1]) + root(log.leaves())[1:]
    log.execute(
        sa.update(audit_checkpoints)
        .where(audit_checkpoints.c.origin == log.origin, audit_checkpoints.c.size == 8)
        .values(root_hash=flipped)
    )
    return []


def _signed_note(log: Log, size: int, tree_root: bytes, key: Ed25519PrivateKey = KEY) -> str:
    name = checkpoint_key_name(log.origin, key_id(key.public_key()))
    return sign_checkpoint(Checkpoint(log.origin, size, tree_root), name, key)


def stored_checkpoint_resigned_root(log: Log) -> list[str]:
    good = root(log.leaves())
    log.store_checkpoint(8, _signed_note(log, 8, bytes([good[0] ^ 0x80]) + good[1:]))
    return []


def stored_checkpoint_size_plus_one(log: Log) -> list[str]:
    log.store_checkpoint(8)
    note = _signed_note(log, 9, root(log.leaves()))
    log.execute(
        sa.insert(audit_checkpoints).values(
            origin=log.origin, size=9, root_hash=root(log.leaves()), note=note, time="2026-11-29T10:00:00.000000Z"
        )
    )
    return []


def stored_checkpoint_forged_signature(log: Log) -> list[str]:
    log.store_checkpoint(8, _signed_note(log, 8, root(log.leaves()), OTHER_KEY))
    return []


def trusted_checkpoint_root_bit_flip(log: Log) -> list[str]:
    good = root(log.leaves())
    return [_signed_note(log, 8, good[:31] + bytes([good[31] ^ 1]))]


def trusted_checkpoint_size_minus_one(log: Log) -> list[str]:
    return [_signed_note(log, 5, root(log.leaves()[:4]))]


def interior_node_as_leaf(log: Log) -> list[str]:
    leaves = log.leaves()
    return [_signed_note(log, 1, node_hash(leaves[0], leaves[1]))]


def trusted_checkpoint_of_another_log(log: Log) -> list[str]:
    return [sign_checkpoint(Checkpoint("proxy.example/other", 8, root(log.leaves())), "other", KEY)]


def trusted_checkpoint_bad_signature(log: Log) -> list[str]:
    note = log.note(8)
    head, _, signature = note.rpartition(" ")
    flipped = ("B" if signature[10] == "A" else "A").join([signature[:10], signature[11:]])
    return [f"{head} {flipped}"]


def trusted_checkpoint_untrusted_signer(log: Log) -> list[str]:
    return [_signed_note(log, 8, root(log.leaves()), OTHER_KEY)]


TAMPERINGS: list[tuple[str, Callable[[Log], list[str]], Expect]] = [
    ("1-edit-one-body-byte", edit_body_byte, Expect(2, 3, "leaf hash mismatch")),
    ("1-edit-body-and-its-leaf-hash", edit_body_and_leaf_hash, Expect(2, 3, "bad signature")),
    ("2-indexed-column-deny-to-allow", edit_indexed_column, Expect(4, 3, "column(s) decision differ")),
    ("3-delete-a-middle-record", delete_middle, Expect(1, 5, "expected seq 4, found seq 5")),
    ("4-delete-and-rechain-without-key", delete_and_rechain_without_key, Expect(2, 2, "bad signature")),
    ("5-swap-two-records", swap_two_records, Expect(3, 2, "prev is not the leaf hash of seq 1")),
    ("6-truncate-tail-vs-exported-checkpoint", truncate_tail_against_export, Expect(8, 5, "records 5..7", 8)),
    ("6-truncate-tail-vs-stored-checkpoint", truncate_tail_with_stored_checkpoint, Expect(6, 5, "records 5..7", 8)),
    ("7-restore-older-backup", restore_older_backup, Expect(8, 5, "older backup was restored", 8)),
    ("7-restore-backup-then-append", restore_backup_and_keep_appending, Expect(8, None, "not an extension", 8)),
    ("8-fork-same-size-as-trusted", fork_same_size, Expect(8, None, "fork", 8)),
    ("8-fork-two-trusted-checkpoints", fork_two_trusted_checkpoints, Expect(8, None, "two trusted checkpoints", 8)),
    ("8-fork-below-trusted-size", fork_below_trusted_size, Expect(8, None, "not an extension", 5)),
    ("8-fork-vs-stored-checkpoint", fork_against_stored_checkpoint, Expect(6, None, "fork or rewrite", 6)),
    ("9-splice-from-another-position", splice_from_other_position, Expect(3, 4, "prev is not the leaf hash")),
    ("9-splice-from-another-log", splice_from_other_log, Expect(4, 0, "column(s) origin")),
    ("10-unknown-key", untrusted_key, Expect(2, 0, "unknown key id")),
    ("10-key-outside-its-range", key_outside_its_range, Expect(2, 5, "not valid at seq 5")),
    ("10-insiders-own-key", record_signed_by_an_insiders_own_key, Expect(2, 6, "unknown key id")),
    ("10-wrong-domain-prefix", wrong_domain_prefix, Expect(2, 3, "wrong domain")),
    ("10-malformed-signature", malformed_signature, Expect(2, 3, "malformed signature")),
    (
        "11-duplicate-key",
        _canonical_attack(lambda b: b.replace(b'{"agent_id":"a2",', b'{"agent_id":"a2","agent_id":"a2",')),
        Expect(2, 3, "body not canonical"),
    ),
    ("11-re-serialised-body", _canonical_attack(_reserialise), Expect(2, 3, "body not canonical")),
    ("11-one-point-zero", _canonical_attack(lambda b: b.replace(b'"v":1', b'"v":1.0')), Expect(2, 3, "non-integer")),
    (
        "11-integer-above-2^53",
        _canonical_attack(lambda b: b.replace(b'"latency_us":0', b'"latency_us":9007199254740993')),
        Expect(2, 3, "outside"),
    ),
    ("11-nan", _canonical_attack(lambda b: b.replace(b'"latency_us":0', b'"latency_us":NaN')), Expect(2, 3, "NaN")),
    ("12-stored-root-column-bit-flip", stored_checkpoint_root_column, Expect(6, None, "differs from its signed", 8)),
    ("12-stored-note-re-signed-root", stored_checkpoint_resigned_root, Expect(6, None, "fork or rewrite", 8)),
    ("12-stored-checkpoint-size-plus-one", stored_checkpoint_size_plus_one, Expect(6, 8, "only 8 records", 9)),
    (
        "12-stored-checkpoint-forged",
        stored_checkpoint_forged_signature,
        Expect(6, None, "no signature by a trusted", 8),
    ),
    ("12-trusted-root-bit-flip", trusted_checkpoint_root_bit_flip, Expect(8, None, "fork", 8)),
    ("12-trusted-size-minus-one", trusted_checkpoint_size_minus_one, Expect(8, None, "not an extension", 5)),
    ("12-interior-node-as-leaf", interior_node_as_leaf, Expect(8, None, "not an extension", 1)),
    ("12-trusted-checkpoint-of-another-log", trusted_checkpoint_of_another_log, Expect(7, None, "is of log")),
    ("12-trusted-checkpoint-bad-signature", trusted_checkpoint_bad_signature, Expect(7, None, "does not match")),
    ("12-trusted-checkpoint-untrusted-signer", trusted_checkpoint_untrusted_signer, Expect(7, None, "no signature")),
]


@pytest.mark.parametrize("parallel", [False, True], ids=["one-process", "worker-processes"])
@pytest.mark.parametrize(("tamper", "expect"), [(t, e) for _, t, e in TAMPERINGS], ids=[i for i, _, _ in TAMPERINGS])
def test_tampering_is_caught_at_the_right_step_and_seq(
    log: Log, tamper: Callable[[Log], list[str]], expect: Expect, parallel: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if parallel:  # worker processes from the first record on, chunks of 3: faults land inside and across chunks
        monkeypatch.setattr(commands, "_PARALLEL_FROM", 0)
        monkeypatch.setattr(verify_module, "_CHUNK", 3)
    trusted = tamper(log)
    report = verify_log(log.url, log.origin, str(log.trusted_path), trusted)
    failure = report.failure
    assert failure is not None, f"not caught: {report}"
    assert (failure.step, failure.seq, failure.size) == (expect.step, expect.seq, expect.size), failure
    assert expect.text in failure.message, failure.message
    assert report.unanchored is None  # a failed log never reports records as merely unanchored


def test_the_untampered_log_verifies_against_every_kind_of_anchor(log: Log) -> None:
    log.store_checkpoint(4)
    log.store_checkpoint(8)
    report = verify_log(log.url, log.origin, str(log.trusted_path), [log.note(3), log.note(8), log.note(0)])
    assert report.ok, report.failure
    assert (report.records, report.trusted_sizes, report.latest_checkpoint) == (8, (0, 3, 8), 8)
    assert report.unanchored is None
    assert report.steps == VERIFY_STEPS and len(VERIFY_STEPS) == 8


def test_truncation_without_any_anchor_is_reported_unanchored_not_ok(log: Log) -> None:
    # Item 6 without an exported checkpoint: nothing can prove the tail existed, so every record is unanchored.
    log.delete(5, 6, 7)
    log.delete_checkpoints_from(0)
    log.reset_head()
    report = verify_log(log.url, log.origin, str(log.trusted_path))
    assert report.ok and report.records == 5
    assert report.unanchored == (0, 4)


def test_records_after_the_trusted_checkpoint_are_unanchored(log: Log) -> None:
    report = verify_log(log.url, log.origin, str(log.trusted_path), [log.note(6)])
    assert report.ok and report.unanchored == (6, 7)


def test_concurrent_writers_with_the_same_prev_are_refused_by_the_database(log: Log) -> None:
    # Item 8, second form: a second writer building on seq 2 (a validly signed sibling of seq 3) cannot be stored.
    sibling = log.body(3).model_copy(update={"seq": 8, "tool": "sibling"})
    with pytest.raises(IntegrityError):
        log.write_record(sibling, insert=True)
    assert verify_log(log.url, log.origin, str(log.trusted_path)).ok
