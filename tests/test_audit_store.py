"""Audit store: chain append and verification on SQLite and PostgreSQL, concurrency, and tamper detection."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.exc import IntegrityError

from aegis_proxy.audit import store as store_module
from aegis_proxy.audit import verify as verify_module
from aegis_proxy.audit.errors import AuditError, VerificationError
from aegis_proxy.audit.keys import TrustedKey, key_id
from aegis_proxy.audit.merkle import MerkleFrontier
from aegis_proxy.audit.merkle import root as merkle_root
from aegis_proxy.audit.record import args_commitment, parse_body
from aegis_proxy.audit.store import (
    AppendEntry,
    AuditStore,
    EntryRefused,
    audit_arguments,
    audit_head,
    audit_records,
)
from aegis_proxy.audit.verify import verify_chain
from tests.pg import pg_schema_url

KEY_BYTES = bytes(range(32))
KEY = Ed25519PrivateKey.from_private_bytes(KEY_BYTES)
KEY_ID = key_id(KEY.public_key())
TRUSTED = {KEY_ID: TrustedKey(KEY_ID, KEY.public_key(), 0)}


def decision(effect: str = "deny", tool: str = "shell", n: int = 0) -> AppendEntry:
    return AppendEntry(
        type="decision", decision=effect, tool=tool, arguments={"command": f"echo {n}"}, agent_id="a1", session_id="s1"
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'audit.db'}"
    else:
        with pg_schema_url() as url:  # a fresh schema per test: no tables left over from other runs or tests
            yield url


@pytest.fixture
def store(db_url: str) -> Iterator[AuditStore]:
    audit_store = AuditStore(db_url, origin=f"test/{uuid.uuid4().hex}", signer_key=KEY, replica="r1")
    yield audit_store
    audit_store.close()


def tamper(store: AuditStore, seq: int, **values: object) -> None:
    with store.engine.begin() as conn:
        row = sa.and_(audit_records.c.origin == store.origin, audit_records.c.seq == seq)
        conn.execute(sa.update(audit_records).where(row).values(**values))


def body_of(store: AuditStore, seq: int) -> bytes:
    return {r.seq: r.record.body_bytes for r in store.iter_records()}[seq]


def expect_failure(store: AuditStore, seq: int, step: str) -> None:
    with pytest.raises(VerificationError) as caught:
        verify_chain(store, TRUSTED)
    assert caught.value.index == seq
    assert caught.value.message.startswith(step), caught.value.message


def test_round_trip(store: AuditStore) -> None:
    assert store.append([decision("allow", "read_file")]) == [0]
    assert store.append([decision("deny", "shell")]) == [1]
    records = list(store.iter_records())
    assert [r.seq for r in records] == [0, 1]
    bodies = [parse_body(r.record.body_bytes) for r in records]
    assert [(b.decision, b.tool, b.replica, b.key_id) for b in bodies] == [
        ("allow", "read_file", "r1", KEY_ID),
        ("deny", "shell", "r1", KEY_ID),
    ]
    assert bodies[1].prev == records[0].record.leaf_hash.hex()
    assert store.head() == (1, records[1].record.leaf_hash)
    with store.engine.connect() as conn:
        stored_args = conn.execute(sa.select(audit_arguments).where(audit_arguments.c.origin == store.origin)).all()
    assert [bytes(a.arguments) for a in stored_args] == [b'{"command":"echo 0"}'] * 2
    verify_chain(store, TRUSTED)


def test_batch_append_is_one_contiguous_run(store: AuditStore) -> None:
    assert store.append([decision(n=i) for i in range(10)]) == list(range(10))
    assert store.append([]) == []
    verify_chain(store, TRUSTED)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (AppendEntry(type="decision", decision="maybe", tool="shell", arguments={}), "decision"),  # not an effect
        (AppendEntry(type="decision", decision="deny", tool="shell", arguments={"n": float("inf")}), "arguments.n"),
        (AppendEntry(type="decision", decision="deny", tool="a\x00b", arguments={}), "tool"),
    ],
    ids=["schema", "arguments", "control-character"],
)
def test_a_refused_entry_is_named_and_its_batch_writes_nothing(
    store: AuditStore, bad: AppendEntry, reason: str
) -> None:
    store.append([decision()])
    with pytest.raises(EntryRefused, match=reason) as refused:
        store.append([decision(), decision(), bad, decision()])
    assert refused.value.index == 2
    assert store.head()[0] == 0
    assert store.append([decision(), decision(), decision()]) == [1, 2, 3]  # the others, without it
    verify_chain(store, TRUSTED)


def test_a_failed_batch_writes_nothing(store: AuditStore) -> None:
    store.append([decision()])
    with store.engine.begin() as conn:  # the chain's head row is gone: nothing can be appended
        conn.execute(sa.delete(audit_head))
    with pytest.raises(AuditError, match="audit append failed") as failed:
        store.append([decision(), decision()])
    assert not isinstance(failed.value, EntryRefused)  # the database's fault, not an entry's
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(audit_records)).scalar() == 1


def test_threads_form_one_chain(store: AuditStore) -> None:
    def writer(t: int) -> None:
        for i in range(50):
            store.append([decision(n=t * 100 + i)])

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.head()[0] == 199
    verify_chain(store, TRUSTED)


def _process_writer(url: str, origin: str, replica: str) -> None:
    worker = AuditStore(url, origin=origin, signer_key=Ed25519PrivateKey.from_private_bytes(KEY_BYTES), replica=replica)
    for i in range(30):
        worker.append([decision(n=i)])
    worker.close()


def test_processes_form_one_chain(store: AuditStore, db_url: str) -> None:
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_process_writer, args=(db_url, store.origin, f"p{i}")) for i in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    assert store.head()[0] == 59
    verify_chain(store, TRUSTED)
    assert {parse_body(r.record.body_bytes).replica for r in store.iter_records()} == {"p0", "p1"}


def test_edit_one_body_byte(store: AuditStore) -> None:
    store.append([decision(n=i) for i in range(5)])
    tamper(store, 2, body=body_of(store, 2).replace(b'"tool":"shell"', b'"tool":"shelL"'))
    expect_failure(store, 2, "step 2: seq 2 does not verify: leaf hash mismatch")


def test_edit_indexed_column_only(store: AuditStore) -> None:
    store.append([decision("deny", n=i) for i in range(5)])
    tamper(store, 3, decision="allow")
    expect_failure(store, 3, "step 4: seq 3: column(s) decision differ")


def test_delete_middle_record(store: AuditStore) -> None:
    store.append([decision(n=i) for i in range(5)])
    with store.engine.begin() as conn:
        conn.execute(sa.delete(audit_records).where(audit_records.c.origin == store.origin, audit_records.c.seq == 2))
    expect_failure(store, 3, "step 1: expected seq 2, found seq 3")


def test_swap_two_bodies(store: AuditStore) -> None:
    store.append([decision(n=i) for i in range(5)])
    rows = {r.seq: r.record for r in store.iter_records()}
    # Move each record's whole signed row content to the other's position (unique prev forces a two-step swap).
    tamper(store, 1, prev_hash=b"x" * 32)
    tamper(store, 3, body=rows[1].body_bytes, leaf_hash=rows[1].leaf_hash, signature=rows[1].signature)
    tamper(store, 1, body=rows[3].body_bytes, leaf_hash=rows[3].leaf_hash, signature=rows[3].signature)
    expect_failure(store, 1, "step 3: seq 1: prev is not the leaf hash of seq 0")


def test_database_refuses_duplicate_prev(store: AuditStore) -> None:
    store.append([decision(n=i) for i in range(3)])
    original = list(store.iter_records())[1]
    fork = {
        "origin": store.origin,
        "seq": 3,
        "body": original.record.body_bytes,
        "leaf_hash": original.record.leaf_hash,
        "prev_hash": original.prev_hash,  # a second child of seq 0
        "key_id": KEY_ID,
        "signature": original.record.signature,
        **dict(original.columns),
    }
    with pytest.raises(IntegrityError), store.engine.begin() as conn:
        conn.execute(sa.insert(audit_records).values(**fork))
    verify_chain(store, TRUSTED)


def test_empty_log_verifies(store: AuditStore) -> None:
    assert store.head()[0] == -1
    verify_chain(store, TRUSTED)


def test_head_row_rolled_back(store: AuditStore) -> None:
    store.append([decision(n=i) for i in range(3)])
    second = list(store.iter_records())[1].record.leaf_hash
    with store.engine.begin() as conn:
        conn.execute(sa.update(audit_head).where(audit_head.c.origin == store.origin).values(seq=1, leaf_hash=second))
    expect_failure(store, 2, "step 5: head row says seq 1, but the last record is seq 2")


def test_record_spliced_from_another_log(store: AuditStore, db_url: str) -> None:
    other = AuditStore(db_url, origin=f"{store.origin}-other", signer_key=KEY, replica="r1")
    other.append([decision()])
    [foreign] = list(other.iter_records())  # list(): drain the generator so its connection closes
    other.close()
    # Validly signed by a trusted key, right seq, right prev: only the origin inside the body gives it away.
    spliced = dataclasses.replace(foreign, origin=store.origin)
    with pytest.raises(VerificationError, match=r"step 4: seq 0: column\(s\) origin differ"):
        verify_chain([spliced], TRUSTED)


# --- Merkle frontier and checkpoints ----------------------------------------------------------------------------------

NEW_KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
NEW_KEY_ID = key_id(NEW_KEY.public_key())


def leaves_of(store: AuditStore) -> list[bytes]:
    return [r.record.leaf_hash for r in store.iter_records()]


def frontier_column(store: AuditStore) -> bytes:
    with store.engine.connect() as conn:
        query = sa.select(audit_head.c.frontier).where(audit_head.c.origin == store.origin)
        return bytes(conn.execute(query).scalar_one())


def checkpoint_sizes(store: AuditStore) -> list[int]:
    return [c.size for c in store.checkpoints()]


@pytest.mark.parametrize("batches", [[1], [1, 1, 1], [5, 3, 8], [16], [2, 13, 1, 17]])
def test_head_row_keeps_the_merkle_frontier(store: AuditStore, batches: list[int]) -> None:
    for size in batches:
        store.append([decision(n=i) for i in range(size)])
        frontier = MerkleFrontier()
        frontier.extend(leaves_of(store))
        assert frontier_column(store) == b"".join(frontier.state()[1])
    assert store.checkpoint().root_hash == merkle_root(leaves_of(store))


@pytest.mark.parametrize(
    ("every", "batches", "sizes"),
    [
        (5, [3, 3, 3, 3], [6, 12]),  # written by the append that reaches N since the last one
        (4, [4, 4, 1], [4, 8]),
        (1, [1, 2, 1], [1, 3, 4]),  # every transaction
        (100, [50, 49], []),
    ],
)
def test_append_writes_a_checkpoint_every_n_records(
    db_url: str, every: int, batches: list[int], sizes: list[int]
) -> None:
    store = AuditStore(db_url, origin="test/every", signer_key=KEY, replica="r1", checkpoint_every=every)
    try:
        for size in batches:
            store.append([decision(n=i) for i in range(size)])
        assert checkpoint_sizes(store) == sizes
        leaves = leaves_of(store)
        for stored in store.checkpoints():
            checkpoint = stored.verify(TRUSTED)  # signed by the store's key, columns equal to the note
            assert (checkpoint.origin, checkpoint.size) == (store.origin, stored.size)
            assert checkpoint.root == merkle_root(leaves[: stored.size])
        assert store.latest_checkpoint() == (store.checkpoints()[-1] if sizes else None)
    finally:
        store.close()


def test_checkpoint_if_due_waits_for_the_interval_and_growth(db_url: str) -> None:
    store = AuditStore(db_url, origin="test/due", signer_key=KEY, replica="r1", checkpoint_interval=0.3)
    try:
        assert store.checkpoint_if_due() is None  # empty log
        store.append([decision()])
        first = store.checkpoint_if_due()  # no checkpoint yet: due at once
        assert first is not None and first.size == 1
        store.append([decision()])
        assert store.checkpoint_if_due() is None  # grew, but the interval has not passed
        time.sleep(0.35)
        second = store.checkpoint_if_due()
        assert second is not None and second.size == 2
        time.sleep(0.35)
        assert store.checkpoint_if_due() is None  # interval passed, but nothing new to anchor
        assert checkpoint_sizes(store) == [1, 2]
    finally:
        store.close()


def test_forced_checkpoint_is_idempotent_and_refuses_an_empty_log(store: AuditStore) -> None:
    with pytest.raises(AuditError, match="is empty"):
        store.checkpoint()
    store.append([decision(n=i) for i in range(3)])
    first = store.checkpoint()
    assert store.checkpoint() == first
    assert checkpoint_sizes(store) == [3]
    assert first.verify(TRUSTED).root == merkle_root(leaves_of(store))


def test_failed_batch_writes_no_checkpoint(db_url: str) -> None:
    store = AuditStore(db_url, origin="test/fail", signer_key=KEY, replica="r1", checkpoint_every=1)
    try:
        store.append([decision()])
        frontier = frontier_column(store)
        bad = AppendEntry(type="decision", decision="maybe", tool="shell", arguments={})
        with pytest.raises(AuditError, match="audit entry refused"):
            store.append([decision(), decision(), bad])
        assert checkpoint_sizes(store) == [1]
        assert frontier_column(store) == frontier
        verify_chain(store, TRUSTED)
    finally:
        store.close()


@pytest.mark.parametrize(
    "frontier",
    [b"\x00" * 31, b"\x00" * 64, b""],  # not whole hashes; two hashes for size 1; none for size 1
    ids=["partial_hash", "too_many", "missing"],
)
def test_corrupt_frontier_fails_closed(store: AuditStore, frontier: bytes) -> None:
    store.append([decision()])
    with store.engine.begin() as conn:
        conn.execute(sa.update(audit_head).where(audit_head.c.origin == store.origin).values(frontier=frontier))
    with pytest.raises(AuditError, match="frontier"):
        store.append([decision()])
    with pytest.raises(AuditError, match="frontier"):
        store.checkpoint()
    assert store.head()[0] == 0


def test_checkpoint_row_must_match_its_note(store: AuditStore) -> None:
    store.append([decision(n=i) for i in range(3)])
    stored = store.checkpoint()
    with pytest.raises(VerificationError, match="differs from the signed note"):
        dataclasses.replace(stored, root_hash=bytes(32)).verify(TRUSTED)
    with pytest.raises(VerificationError, match="no signature by a trusted key"):
        stored.verify({NEW_KEY_ID: TrustedKey(NEW_KEY_ID, NEW_KEY.public_key(), 0)})
    with pytest.raises(VerificationError, match="no signature by a trusted key"):  # key not valid at seq 2
        stored.verify({KEY_ID: TrustedKey(KEY_ID, KEY.public_key(), 0, 1)})


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_in_memory_sqlite_is_refused(url: str) -> None:
    with pytest.raises(AuditError, match="in-memory"):
        AuditStore(url, origin="test/x", signer_key=KEY, replica="r1")


@pytest.mark.parametrize("origin", ["", "a b", "a+b", "x" * 257, "caf\u00e9", "tab\t"])
def test_origin_must_be_a_printable_note_name(db_url: str, origin: str) -> None:
    with pytest.raises(AuditError, match="origin"):
        AuditStore(db_url, origin=origin, signer_key=KEY, replica="r1")


# --- key rotation -----------------------------------------------------------------------------------------------------


def rotation_trust(rotation_seq: int) -> dict[str, TrustedKey]:
    return {
        KEY_ID: TrustedKey(KEY_ID, KEY.public_key(), 0, rotation_seq),
        NEW_KEY_ID: TrustedKey(NEW_KEY_ID, NEW_KEY.public_key(), rotation_seq + 1),
    }


def test_rotation_round_trip(store: AuditStore) -> None:
    store.append([decision(n=i) for i in range(3)])
    assert store.rotate(NEW_KEY) == 3
    assert store.key_id == NEW_KEY_ID
    store.append([decision(n=i) for i in range(2)])
    bodies = [parse_body(r.record.body_bytes) for r in store.iter_records()]
    assert [(b.type, b.key_id) for b in bodies] == [("decision", KEY_ID)] * 3 + [("key_rotation", KEY_ID)] + [
        ("decision", NEW_KEY_ID)
    ] * 2
    trusted = rotation_trust(3)
    verify_chain(store, trusted)
    verify_chain(store, trusted, workers=2)
    # The rotation transaction anchors the rotation record with a checkpoint signed by the old key.
    [rotation_checkpoint] = store.checkpoints()
    assert rotation_checkpoint.size == 4
    assert rotation_checkpoint.note.count("\n\u2014 ") == 1 and f"/{KEY_ID} " in rotation_checkpoint.note
    rotation_checkpoint.verify(trusted)
    later = store.checkpoint()
    assert f"/{NEW_KEY_ID} " in later.note
    later.verify(trusted)
    # A verifier that never learnt of the new key stops at the rotation record.
    with pytest.raises(VerificationError, match="step 2: seq 3 does not verify: rotation: new key") as caught:
        verify_chain(store, {KEY_ID: TrustedKey(KEY_ID, KEY.public_key(), 0)})
    assert caught.value.index == 3


def test_rotation_retires_the_key_in_every_process(store: AuditStore, db_url: str) -> None:
    other = AuditStore(db_url, origin=store.origin, signer_key=KEY, replica="r2")  # a replica with the same key
    try:
        other.append([decision()])
        store.rotate(NEW_KEY)
        for operation in (lambda: other.append([decision()]), other.checkpoint, lambda: other.rotate(NEW_KEY)):
            with pytest.raises(AuditError, match="retired"):
                operation()
        with pytest.raises(AuditError, match="retired"):
            AuditStore(db_url, origin=store.origin, signer_key=KEY, replica="r3")
        with pytest.raises(AuditError, match="current key or was retired"):
            store.rotate(KEY)  # back to a retired key
        with pytest.raises(AuditError, match="current key or was retired"):
            store.rotate(NEW_KEY)
        store.append([decision()])
        assert store.head()[0] == 2
        verify_chain(store, rotation_trust(1))
    finally:
        other.close()


def test_rotation_while_threads_append(store: AuditStore) -> None:
    start = threading.Barrier(5)

    def writer(t: int) -> None:
        start.wait()
        for i in range(40):
            store.append([decision(n=t * 100 + i)])

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    start.wait()
    time.sleep(0.05)
    rotation_seq = store.rotate(NEW_KEY)
    for thread in threads:
        thread.join()
    assert store.head()[0] == 160
    verify_chain(store, rotation_trust(rotation_seq))  # no record after the rotation carries the old key


# --- parallel verification ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mutation", "seq", "step"),
    [
        (None, None, ""),
        ("body", 13, "step 2: seq 13 does not verify: leaf hash mismatch"),
        ("column", 7, "step 4: seq 7: column(s) decision differ"),
        ("delete", 20, "step 1: expected seq 20, found seq 21"),
        ("signature", 29, "step 2: seq 29 does not verify: bad signature"),
        # At chunk boundaries (chunks of 4): the first record of a chunk, a chunk that starts late, a broken link
        # into a chunk, and a record missing from a chunk's end.
        ("body", 4, "step 2: seq 4 does not verify: leaf hash mismatch"),
        ("delete", 8, "step 1: expected seq 8, found seq 9"),
        ("prev", 12, "step 3: seq 12: prev is not the leaf hash of seq 11"),
        ("delete", 15, "step 1: expected seq 15, found seq 16"),
    ],
)
def test_parallel_verification_reports_what_sequential_does(
    store: AuditStore, monkeypatch: pytest.MonkeyPatch, mutation: str | None, seq: int | None, step: str
) -> None:
    monkeypatch.setattr(verify_module, "_CHUNK", 4)  # many chunks, the fault in the middle of one
    store.append([decision(n=i) for i in range(30)])
    if mutation == "body":
        tamper(store, seq, body=body_of(store, seq).replace(b'"tool":"shell"', b'"tool":"shelL"'))
    elif mutation == "column":
        tamper(store, seq, decision="allow")
    elif mutation == "delete":
        with store.engine.begin() as conn:
            conn.execute(
                sa.delete(audit_records).where(audit_records.c.origin == store.origin, audit_records.c.seq == seq)
            )
    elif mutation == "signature":
        tamper(store, seq, signature=bytes(64))
    elif mutation == "prev":
        tamper(store, seq, prev_hash=b"\x01" * 32)
    if mutation is None:
        verify_chain(store, TRUSTED, workers=2)
        return
    for workers in (1, 2):
        with pytest.raises(VerificationError) as caught:
            verify_chain(store, TRUSTED, workers=workers)
        assert caught.value.message.startswith(step), caught.value.message
        assert caught.value.index == (seq + 1 if mutation == "delete" else seq)  # a gap is reported where found


def _column_variants(value: object, other: object) -> list[object]:
    """What a tamperer (or a sqlite3 shell) can leave in one column: other types, near values, another row's value."""
    variants: list[object] = [None, 0, -1, 2**70, 1.5, True, "", b"", "x", b"x", other]
    if isinstance(value, bytes):
        variants += [value[:-1], value + b"\0", bytes([value[0] ^ 1]) + value[1:], value.hex(), bytearray(value)]
        variants.append(memoryview(value))  # the same bytes in another wrapper: the reference accepts it
    if isinstance(value, str):
        variants += [value.encode(), value.upper(), value + " ", value[:-1], value + "\udc80"]
    if isinstance(value, int) and not isinstance(value, bool):
        variants += [value + 1, value - 1, float(value), str(value)]
    return variants


def test_quick_row_check_never_passes_what_the_reference_refuses(store: AuditStore) -> None:
    """verify_rows checks a row with _passes_plainly and only falls back to _check_row when it says no: for every
    single-column mutation of every row, the quick check passes a row only if the reference does, with the same leaf
    hash, and it does pass untouched ordinary rows (otherwise verification would silently lose its speed)."""
    store.append([decision(n=i) for i in range(3)])
    store.rotate(NEW_KEY)
    store.append([decision(effect="allow", n=i) for i in range(2)])
    trusted = rotation_trust(3)
    with store.engine.connect() as conn:
        rows = [verify_module._without_memoryviews(r) for r in conn.execute(store_module.verify_query(store.origin))]
    origin, checked, quick = store.origin, 0, 0
    for seq, row in enumerate(rows):
        prev_leaf = rows[seq - 1][3] if seq else None
        reference = verify_module._check_row(row, seq, prev_leaf, origin, trusted)
        untouched = verify_module._passes_plainly(row, seq, prev_leaf, origin, trusted)
        assert untouched == (None if seq == 3 else reference)  # seq 3 is the rotation: always the reference's
        cases = [(row, seq + 1, prev_leaf, origin), (row, seq, rows[seq - 2][3] if seq > 1 else b"\0" * 32, origin)]
        cases.append((row, seq, prev_leaf, origin + "x"))
        for column, value in enumerate(row):
            for variant in _column_variants(value, rows[(seq + 1) % len(rows)][column]):
                mutated = (*row[:column], variant, *row[column + 1 :])
                cases += [(mutated, seq, prev_leaf, origin), (mutated, seq, prev_leaf, None)]
        for values, expected_seq, prev, chain_origin in cases:
            try:
                expected: bytes | None = verify_module._check_row(values, expected_seq, prev, chain_origin, trusted)
            except VerificationError:
                expected = None
            got = verify_module._passes_plainly(values, expected_seq, prev, chain_origin, trusted)
            assert got is None or got == expected, (seq, values, expected_seq, chain_origin)
            checked += 1
            quick += got is not None
    assert checked > 900 and quick > 0


@pytest.mark.parametrize(
    "arguments",
    [{}, {"command": "ls -la"}, {"path": "caf\u00e9/\u2603", "n": [1, 2, {"deep": None}], "flag": True}],
    ids=["empty", "flat", "nested_unicode"],
)
def test_stored_arguments_open_the_commitment(store: AuditStore, arguments: dict[str, object]) -> None:
    store.append([AppendEntry(type="decision", decision="allow", tool="t", arguments=arguments)])
    [record] = list(store.iter_records())
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(audit_arguments).where(audit_arguments.c.origin == store.origin)).one()
    assert json.loads(bytes(row.arguments)) == arguments
    assert args_commitment(bytes(row.nonce), arguments) == parse_body(record.record.body_bytes).args_commit


@pytest.mark.parametrize("sync", ["full", "normal"])
def test_sync_mode_reaches_the_database(db_url: str, sync: str) -> None:
    opened = AuditStore(db_url, origin="sync.test/x", signer_key=Ed25519PrivateKey.generate(), replica="r", sync=sync)
    try:
        opened.append([decision()])
        with opened.engine.connect() as conn:
            if db_url.startswith("sqlite"):
                setting = conn.exec_driver_sql("PRAGMA synchronous").scalar()
                assert setting == {"full": 2, "normal": 1}[sync]
            else:
                setting = conn.exec_driver_sql("SHOW synchronous_commit").scalar()
                assert setting == {"full": "on", "normal": "off"}[sync]
    finally:
        opened.close()


@pytest.mark.parametrize("sync", ["off", "FULL", ""])
def test_unknown_sync_mode_is_refused(tmp_path: Path, sync: str) -> None:
    with pytest.raises(AuditError, match="sync mode") as info:
        AuditStore(
            f"sqlite:///{tmp_path / 'a.db'}",
            origin="o",
            signer_key=Ed25519PrivateKey.generate(),
            replica="r",
            sync=sync,
        )
    assert "power loss" in info.value.hint
