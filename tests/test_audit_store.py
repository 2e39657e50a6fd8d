"""Audit store: chain append and verification on SQLite and PostgreSQL, concurrency, and tamper detection."""

from __future__ import annotations

import dataclasses
import multiprocessing
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.exc import IntegrityError

from aegis_proxy.audit.errors import AuditError, VerificationError
from aegis_proxy.audit.keys import TrustedKey, key_id
from aegis_proxy.audit.record import parse_body
from aegis_proxy.audit.store import (
    AppendEntry,
    AuditStore,
    audit_arguments,
    audit_head,
    audit_records,
    verify_chain,
)

PG_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
KEY_BYTES = bytes(range(32))
KEY = Ed25519PrivateKey.from_private_bytes(KEY_BYTES)
KEY_ID = key_id(KEY.public_key())
TRUSTED = {KEY_ID: TrustedKey(KEY_ID, KEY.public_key(), 0)}


def decision(effect: str = "deny", tool: str = "shell", n: int = 0) -> AppendEntry:
    return AppendEntry(
        type="decision", decision=effect, tool=tool, arguments={"command": f"echo {n}"}, agent_id="a1", session_id="s1"
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'audit.db'}"
    try:
        sa.create_engine(PG_URL).connect().close()
    except sa.exc.OperationalError as error:
        pytest.fail(f"PostgreSQL at {PG_URL} is unreachable (these tests must run on it): {error}")
    return PG_URL


@pytest.fixture
def store(db_url: str) -> Iterator[AuditStore]:
    audit_store = AuditStore(db_url, origin=f"test/{uuid.uuid4().hex}", signer_key=KEY, replica="r1")
    yield audit_store
    with audit_store.engine.begin() as conn:  # unique origin per test; remove its rows from the shared PG database
        for table in (audit_records, audit_head, audit_arguments):
            conn.execute(sa.delete(table).where(table.c.origin == audit_store.origin))
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


def test_failed_batch_writes_nothing(store: AuditStore) -> None:
    store.append([decision()])
    bad = AppendEntry(type="decision", decision="maybe", tool="shell", arguments={})  # not an effect
    with pytest.raises(AuditError, match="audit append failed"):
        store.append([decision(), bad])
    assert store.head()[0] == 0
    verify_chain(store, TRUSTED)


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
    with other.engine.begin() as conn:
        for table in (audit_records, audit_head, audit_arguments):
            conn.execute(sa.delete(table).where(table.c.origin == other.origin))
    other.close()
    # Validly signed by a trusted key, right seq, right prev: only the origin inside the body gives it away.
    spliced = dataclasses.replace(foreign, origin=store.origin)
    with pytest.raises(VerificationError, match=r"step 4: seq 0: column\(s\) origin differ"):
        verify_chain([spliced], TRUSTED)
