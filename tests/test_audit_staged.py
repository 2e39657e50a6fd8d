"""Staged decisions (audit/FORMAT.md section 9): a decision made durable as one short row on the event loop, then
chained by the writer thread into the record it would have been, exactly once, even across a crash; and a staged row
that cannot become a record stops the log instead of being skipped."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from aegis_proxy.audit.errors import AuditError
from aegis_proxy.audit.record import FindingSummary
from aegis_proxy.audit.store import (
    AppendEntry,
    AppendWouldWait,
    AuditStore,
    EntryRefused,
    audit_staged,
    staged_entry_json,
)
from aegis_proxy.audit.verify import verify_chain
from aegis_proxy.audit.writer import AuditWriter, Durable
from aegis_proxy.config import load_config
from aegis_proxy.gate import Gate
from aegis_proxy.models import CallContext, ToolCall
from tests.pg import pg_schema_url
from tests.test_audit_writer import KEY, TRUSTED, entry, eventually


def open_store(path: Path, sync: str = "normal", origin: str = "test/staged") -> AuditStore:
    return AuditStore(f"sqlite:///{path}", origin=origin, signer_key=KEY, replica="r1", sync=sync)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[AuditStore]:
    opened = open_store(tmp_path / "audit.db")
    yield opened
    opened.close()


def bodies(store: AuditStore) -> list[dict[str, Any]]:
    return [json.loads(stored.record.body_bytes) for stored in store.iter_records()]


def raw(store: AuditStore) -> sqlite3.Connection:
    assert store._sqlite is not None
    return sqlite3.connect(store._sqlite.path, isolation_level=None)


RICH = AppendEntry(
    type="decision",
    decision="deny",
    tool="send_email",
    arguments={"to": "ü@example.com", "n": [1, 2.5, {"deep": None}]},
    request_id="req-1",
    session_id="conv-1",
    agent_id="key-1",
    rules=("no-exfil", "high-severity"),
    policy_digest="ab" * 32,
    findings=(FindingSummary(category="network.exfil", severity="high", path="args.to"),),
    scores={"risk": 900_000, "probe_injection": 12},
    latency_us=321,
)


def test_a_staged_decision_becomes_the_record_it_would_have_been(store: AuditStore, tmp_path: Path) -> None:
    """Every field of the entry, the time it was staged at and the nonce its arguments were committed with."""
    staged_id = store.stage(RICH)
    count, oldest = store.staged()
    assert (count, isinstance(oldest, str)) == (1, True)
    assert store.append_staged() == (1, [])
    assert store.staged() == (0, None)
    [body] = bodies(store)
    assert body["time"] == oldest  # the decision's time, not the chaining's
    other = open_store(tmp_path / "direct.db")
    other.append([RICH])
    [direct] = bodies(other)
    other.close()
    changed = {"time", "args_commit"}
    assert {k: v for k, v in body.items() if k not in changed} == {k: v for k, v in direct.items() if k not in changed}
    with raw(store) as connection:
        nonce, arguments = connection.execute("SELECT nonce, arguments FROM audit_arguments").fetchone()
    assert body["args_commit"] == hashlib.sha256(nonce + arguments).hexdigest()
    assert json.loads(arguments) == RICH.arguments
    verify_chain(store, TRUSTED)
    assert staged_id == 1


def test_staged_decisions_are_chained_in_staging_order_before_the_batch(store: AuditStore) -> None:
    store.append([entry(0)])
    for n in (1, 2, 3):
        store.stage(entry(n))
    assert store.append_staged([entry(4)]) == (3, [4])
    assert [body["seq"] for body in bodies(store)] == [0, 1, 2, 3, 4]
    with raw(store) as connection:
        paths = [
            json.loads(a)["path"] for (a,) in connection.execute("SELECT arguments FROM audit_arguments ORDER BY seq")
        ]
    assert paths == ["f0", "f1", "f2", "f3", "f4"]
    assert store.append_staged() == (0, [])  # nothing left: chained exactly once
    verify_chain(store, TRUSTED)


def test_staging_is_one_insert_and_keeps_the_head_the_last_append_left(store: AuditStore) -> None:
    """A staged row is one INSERT committed by itself (no BEGIN, PRAGMA or COMMIT on the event loop); it changes
    nothing of the chain, so chaining it reads no head row when no other connection committed meanwhile, and does
    when one did."""
    store.append([entry(0)])
    assert store._sqlite is not None
    statements: list[str] = []
    store._sqlite._connect().set_trace_callback(statements.append)
    store.stage(entry(1))
    # (The busy timeout is switched off first: the append before it waited. Switched once per change of way.)
    assert [s.split(" (", 1)[0] for s in statements] == ["PRAGMA busy_timeout = 0", "INSERT INTO audit_staged"]
    assert statements[1].count("), (") == 0  # one row
    statements.clear()
    assert store.append_staged() == (1, [])
    assert not [s for s in statements if s.startswith("SELECT audit_head")]
    store.stage(entry(2))
    with raw(store) as other:  # another connection commits: the head must be read again
        other.execute("CREATE TABLE unrelated (x INTEGER)")
    statements.clear()
    assert store.append_staged() == (1, [])
    assert [s for s in statements if s.startswith("SELECT audit_head")]
    assert [body["seq"] for body in bodies(store)] == [0, 1, 2]
    verify_chain(store, TRUSTED)


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"tool": "run\nshell"}, "tool"),  # a control character: the record schema refuses it
        ({"tool": "x" * 300}, "tool"),
        ({"arguments": {"n": float("nan")}}, "arguments"),
        ({"arguments": {"n": 2**60}}, "arguments"),
        ({"tool": "bad\ud800"}, "tool"),  # a lone surrogate: no record body can hold it
        ({"arguments": None}, "args_commit"),  # a decision record commits to its arguments
        ({"rules": ("ok", "")}, "rules"),
    ],
)
def test_an_entry_that_can_never_be_a_record_is_refused_before_anything_is_staged(
    store: AuditStore, changes: dict[str, Any], why: str
) -> None:
    with pytest.raises(EntryRefused, match=why) as refused:
        store.stage(entry(0, **changes))
    assert refused.value.index == 0
    assert store.staged() == (0, None)


def test_only_decisions_are_staged(store: AuditStore) -> None:
    with pytest.raises(AuditError, match="only decisions are staged"):
        store.stage(AppendEntry(type="approval", decision="allow", tool="t", arguments={}, approver="ops", ref_seq=0))


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("entry", b"not json"),
        ("entry", json.dumps({"type": "decision"}).encode()),  # fields missing
        ("arguments", b'{"a": 1, "a": 2}'),  # a duplicate key
        ("nonce", b"short"),
    ],
)
def test_a_staged_row_changed_outside_aegis_stops_the_log_until_it_is_resolved(
    store: AuditStore, column: str, value: bytes
) -> None:
    """Skipping it would lose a decision that was already acted on; chaining something else would forge one."""
    store.append([entry(0)])
    store.stage(entry(1))
    with raw(store) as connection:
        connection.execute(f"UPDATE audit_staged SET {column} = ?", (value,))
    with pytest.raises(AuditError, match=r"staged decision 1 of 'test/staged' cannot become a record") as stopped:
        store.append_staged([entry(2)])
    assert "FORMAT.md section 9" in (stopped.value.hint or "")
    assert store.head()[0] == 0 and store.staged()[0] == 1  # nothing of the transaction was written
    with raw(store) as connection:  # the operator's resolution, once understood
        connection.execute("DELETE FROM audit_staged")
    assert store.append_staged([entry(2)]) == (0, [1])
    verify_chain(store, TRUSTED)


def test_the_writer_chains_a_staged_decision_right_after(store: AuditStore) -> None:
    with AuditWriter(store) as writer:
        staged = writer.stage_now(entry(0))
        assert staged is not None and store.staged()[0] == 1
        writer.request_chain()
        eventually(lambda: store.staged()[0] == 0)
        assert [body["seq"] for body in bodies(store)] == [0]
        assert writer.chain_failure is None
    verify_chain(store, TRUSTED)


def test_decisions_staged_together_wait_chain_delay_and_are_chained_in_one_transaction(store: AuditStore) -> None:
    transactions: list[int] = []
    append_staged = store.append_staged

    def counted(entries: Sequence[AppendEntry] = ()) -> tuple[int, list[int]]:
        chained, seqs = append_staged(entries)
        if chained:
            transactions.append(chained)
        return chained, seqs

    store.append_staged = counted  # type: ignore[method-assign]
    with AuditWriter(store, chain_delay=0.3) as writer:

        async def decide() -> list[Durable]:
            return [await writer.commit_async(entry(n)) for n in range(3)]

        started = time.monotonic()
        durables = asyncio.run(decide())
        assert [d.seq for d in durables] == [None] * 3 and all(d.staged for d in durables)
        assert store.staged()[0] == 3
        eventually(lambda: store.staged()[0] == 0)
        assert time.monotonic() - started >= 0.25
        assert transactions == [3]
    verify_chain(store, TRUSTED)


def test_a_batch_the_writer_commits_anyway_takes_the_staged_decisions_with_it(store: AuditStore) -> None:
    with AuditWriter(store, chain_delay=1.0) as writer:
        assert writer.stage_now(entry(0)) is not None
        assert writer.append_sync(entry(1)) == 1  # the staged one went first, in the same transaction
        assert store.staged() == (0, None)
    verify_chain(store, TRUSTED)


@pytest.mark.parametrize("delay", [-0.1, 1.5])
def test_the_chain_delay_is_bounded(store: AuditStore, delay: float) -> None:
    with pytest.raises(AuditError, match="chain_delay"):
        AuditWriter(store, chain_delay=delay)


def test_closing_the_writer_chains_what_is_staged(store: AuditStore) -> None:
    writer = AuditWriter(store, chain_delay=1.0)
    for n in range(3):
        assert writer.stage_now(entry(n)) is not None  # the chain is never requested
    staged_by_the_thread = writer.submit_decision(entry(3))
    assert staged_by_the_thread.result(10).staged is not None
    writer.close()
    assert store.staged() == (0, None) and store.head()[0] == 3


def test_decisions_a_stopped_process_left_staged_are_chained_by_the_next_writer(tmp_path: Path) -> None:
    """A crash between staging (durable) and chaining: the rows wait in the database for the next writer, which
    chains them before it appends anything new."""
    crashed = open_store(tmp_path / "audit.db")
    crashed.append([entry(0)])
    crashed.stage(entry(1))
    crashed.stage(entry(2))
    crashed.close()  # no writer ever chained them
    restarted = open_store(tmp_path / "audit.db")
    with AuditWriter(restarted) as writer:
        assert restarted.staged() == (0, None)
        assert writer.append_sync(entry(3)) == 3
    assert [json.loads(b)["path"] for b in _arguments(restarted)] == ["f0", "f1", "f2", "f3"]
    verify_chain(restarted, TRUSTED)
    restarted.close()


def _arguments(store: AuditStore) -> list[bytes]:
    with raw(store) as connection:
        return [a for (a,) in connection.execute("SELECT arguments FROM audit_arguments ORDER BY seq")]


def test_while_chaining_fails_nothing_is_staged_and_every_append_fails_closed(store: AuditStore) -> None:
    store.stage(entry(0))
    with raw(store) as connection:
        connection.execute("UPDATE audit_staged SET entry = x'00'")
    with AuditWriter(store) as writer:  # its start tries to chain the left-over row, and cannot
        assert writer.chain_failure is not None
        assert writer.stage_now(entry(1)) is None  # not staged on top of a log that cannot chain
        with pytest.raises(AuditError, match="staged decision 1"):
            writer.append_sync(entry(1))

        async def decide() -> Durable:
            return await writer.commit_async(entry(2), alone=True)

        with pytest.raises(AuditError, match="staged decision 1"):
            asyncio.run(decide())
        with pytest.raises(AuditError, match="staged decision 1"):  # the thread does not stage either
            writer.submit_decision(entry(2)).result(10)
        with raw(store) as connection:
            connection.execute("DELETE FROM audit_staged")
        assert writer.append_sync(entry(3)) == 0  # resolved: the log goes on, and staging with it
        assert writer.chain_failure is None
        assert writer.stage_now(entry(4)) is not None
    assert store.staged() == (0, None)
    verify_chain(store, TRUSTED)


def test_decisions_staged_together_are_one_insert(store: AuditStore) -> None:
    """stage_rows (the writer thread's): the rows `staging_row` made, in one INSERT committed by itself (one fsync
    with `full`), ids in order; `staging_row` refuses an entry that could never become a record, writing nothing."""
    with pytest.raises(EntryRefused, match="tool") as refused:
        store.staging_row(entry(1, tool="bad\ntool"))
    assert refused.value.index == 0 and store.staged() == (0, None)
    assert store._sqlite is not None
    rows = [store.staging_row(entry(n)) for n in range(3)]
    statements: list[str] = []
    store._sqlite._connect().set_trace_callback(statements.append)
    ids = store.stage_rows(rows)
    [insert] = [s for s in statements if not s.startswith("PRAGMA")]
    assert insert.startswith("INSERT INTO audit_staged (") and insert.count("), (") == 2  # three rows, one statement
    with raw(store) as connection:
        paths = {i: json.loads(a)["path"] for i, a in connection.execute("SELECT id, arguments FROM audit_staged")}
    assert paths == {ids[n]: f"f{n}" for n in range(3)}  # each id names its own decision's row
    assert store.stage_rows([]) == []
    assert store.append_staged() == (3, [])
    assert [body["seq"] for body in bodies(store)] == [0, 1, 2]
    verify_chain(store, TRUSTED)


def test_the_writer_thread_stages_decisions_queued_together_in_one_statement(store: AuditStore) -> None:
    """submit_decision (a decision on the loop while other flows are in progress, with `full`): its row is made on the
    caller's thread, the thread stages the rows it finds queued together in one statement, each future resolves once
    its row is durable, and the rows are chained `chain_delay` later, as the loop's are."""
    batches: list[int] = []
    stage_rows = store.stage_rows

    def counted(rows: Sequence[Any]) -> list[int]:
        batches.append(len(rows))
        return stage_rows(rows)

    store.stage_rows = counted  # type: ignore[method-assign]
    with AuditWriter(store, linger=0.3, chain_delay=0.3) as writer:  # linger: the three make one batch
        durables = [future.result(10) for future in [writer.submit_decision(entry(n)) for n in range(3)]]
        assert batches == [3]
        assert [d.seq for d in durables] == [None] * 3 and all(d.staged for d in durables)
        assert store.staged()[0] == 3  # durable, not yet chained
        eventually(lambda: store.staged()[0] == 0)
    assert [json.loads(b)["path"] for b in _arguments(store)] == ["f0", "f1", "f2"]
    verify_chain(store, TRUSTED)


def test_a_decision_that_can_never_be_a_record_is_refused_before_it_is_queued(store: AuditStore) -> None:
    with AuditWriter(store) as writer:
        with pytest.raises(EntryRefused, match="tool"):
            writer.submit_decision(entry(1, tool="bad\ntool"))
        assert writer.submit_decision(entry(2)).result(10).staged is not None
    assert [json.loads(b)["path"] for b in _arguments(store)] == ["f2"]
    verify_chain(store, TRUSTED)


def test_decisions_staged_by_the_thread_go_before_a_record_appended_in_the_same_batch(store: AuditStore) -> None:
    with AuditWriter(store, linger=0.3, chain_delay=1.0) as writer:
        staged = writer.submit_decision(entry(0))
        appended = writer.submit(entry(1))
        assert staged.result(10).staged is not None
        assert appended.result(10) == 1  # the staged decision was chained first, in the append's transaction
        assert store.staged() == (0, None)
    assert [json.loads(b)["path"] for b in _arguments(store)] == ["f0", "f1"]
    verify_chain(store, TRUSTED)


def test_two_stores_on_one_database_chain_each_staged_decision_once(tmp_path: Path) -> None:
    first, second = open_store(tmp_path / "audit.db"), open_store(tmp_path / "audit.db")
    try:
        first.stage(entry(0))
        second.stage(entry(1))
        assert second.append_staged() == (2, [])
        first.stage(entry(2))
        assert first.append_staged([entry(3)]) == (1, [3])
        assert second.append_staged() == (0, [])
        assert [json.loads(b)["path"] for b in _arguments(first)] == ["f0", "f1", "f2", "f3"]
        verify_chain(first, TRUSTED)
    finally:
        first.close()
        second.close()


def test_staged_rows_belong_to_their_origin(tmp_path: Path) -> None:
    one, two = open_store(tmp_path / "audit.db"), open_store(tmp_path / "audit.db", origin="test/other")
    try:
        one.stage(entry(0))
        assert two.append_staged() == (0, []) and two.staged() == (0, None)
        assert one.staged()[0] == 1
    finally:
        one.close()
        two.close()


def test_postgresql_appends_as_before_and_chains_what_sqlite_staged() -> None:
    """PostgreSQL has no staging (its appends go through the writer thread); its writer still chains staged rows, so
    none is stranded whichever way the database is opened."""
    with pg_schema_url() as url:
        store = AuditStore(url, origin="test/pg", signer_key=KEY, replica="r1")
        try:
            with pytest.raises(AppendWouldWait):
                store.stage(entry(0))
            with store.engine.begin() as connection:  # as a staging process would have left it
                connection.execute(
                    audit_staged.insert().values(
                        origin="test/pg",
                        time="2026-11-30T01:00:00.000000Z",
                        nonce=bytes(32),
                        arguments=b'{"path":"f0"}',
                        entry=staged_entry_json(entry(0)),
                    )
                )
            with AuditWriter(store) as writer:
                assert store.staged() == (0, None)
                assert writer.append_sync(entry(1)) == 1
                assert writer.submit_decision(entry(2)).result(10) == Durable(seq=2)  # appended, not staged
            assert bodies(store)[0]["time"] == "2026-11-30T01:00:00.000000Z"
            verify_chain(store, TRUSTED)
        finally:
            store.close()


@pytest.mark.parametrize(
    ("sync", "alone", "where"),
    [("normal", False, "stage"), ("full", True, "stage"), ("full", False, "stage_rows")],
)
def test_the_gate_stages_each_decision_on_the_loop_or_through_the_writer_thread(
    tmp_path: Path, sync: str, alone: bool, where: str
) -> None:
    """On the loop where it used to append there (`normal`; `full` when alone); through the writer thread otherwise
    (`full` with other flows in progress: the thread stages, it does not append a chained record)."""
    gate = Gate.from_config(load_config(None, {"data_dir": str(tmp_path), "audit.sync": sync}))
    gate.start()
    try:
        store = gate.writer.store
        threads: dict[str, str] = {}
        for name in ("stage", "stage_rows"):
            original = getattr(store, name)

            def spy(*args: Any, _name: str = name, _original: Any = original) -> Any:
                threads[_name] = threading.current_thread().name
                return _original(*args)

            setattr(store, name, spy)
        call = ToolCall(id="c1", tool="run_shell", arguments={"cmd": "ls -la"}, raw_size=20)

        async def decide() -> Any:
            return await gate.decide_async(call, CallContext(session_id="s"), request_id="r1", alone=alone)

        outcome = asyncio.run(decide())
        assert outcome.effect == "allow"
        assert outcome.audit_staged is not None and outcome.audit_seq is None
        assert list(threads) == [where]
        assert threads[where] == ("MainThread" if where == "stage" else "aegis-audit-writer")
        gate.writer.close()
        decisions = [body for body in bodies(store) if body["type"] == "decision"]
        assert [(body["tool"], body["decision"], body["request_id"]) for body in decisions] == [
            ("run_shell", "allow", "r1")
        ]
        assert store.staged() == (0, None)
    finally:
        gate.close()
