"""Appends on the caller's thread (AuditWriter.append_now, used by append_async): only when nothing has to wait,
the same durable record and the same chain as through the writer thread, and never a stalled event loop."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aegis_proxy.audit.errors import AuditError
from aegis_proxy.audit.store import AppendEntry, AppendWouldWait
from aegis_proxy.audit.verify import verify_chain
from aegis_proxy.audit.writer import AuditWriter
from tests.pg import pg_schema_url
from tests.test_audit_writer import KEY as SIGNER
from tests.test_audit_writer import TRUSTED, CountingStore, HeldDatabase, entry, wait_running


def open_store(path: Path, sync: str) -> CountingStore:
    return CountingStore(f"sqlite:///{path}", origin="test/now", signer_key=SIGNER, replica="r1", sync=sync)


@pytest.fixture
def quick(tmp_path: Path) -> Iterator[tuple[CountingStore, AuditWriter]]:
    store = open_store(tmp_path / "audit.db", "normal")
    writer = AuditWriter(store)
    yield store, writer
    writer.close()
    store.close()


@pytest.mark.parametrize(("sync", "quick"), [("normal", True), ("full", False)])
def test_sqlite_appends_need_not_wait_and_only_normal_ones_are_quick(tmp_path: Path, sync: str, quick: bool) -> None:
    # full: the commit fsyncs (up to milliseconds on a busy disk), too long for an event loop that serves other flows
    store = open_store(tmp_path / "audit.db", sync)
    with AuditWriter(store) as writer:
        assert store.quick_appends is quick and writer.quick is quick
        assert store.appends_without_waiting and writer.direct
        assert writer.append_now(entry()) == 0
        assert store.append([entry()], wait=False) == [1]
    store.close()


@pytest.mark.parametrize("alone", [True, False])
def test_with_full_sync_the_loop_appends_only_when_alone(tmp_path: Path, alone: bool) -> None:
    """audit.sync = full: a caller alone on its loop makes the record durable itself, fsync included (the commit runs
    with synchronous=FULL on this connection); otherwise the record goes through the writer thread."""
    store = open_store(tmp_path / "audit.db", "full")
    with AuditWriter(store) as writer:

        async def main() -> list[int]:
            return [await writer.append_async(entry(n), alone=alone) for n in range(3)]

        assert asyncio.run(main()) == [0, 1, 2]
        expected = "MainThread" if alone else "aegis-audit-writer"
        assert store.threads == [expected] * 3
        assert store._sqlite is not None
        assert store._sqlite._connect().execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    verify_chain(store, TRUSTED)
    store.close()


def test_an_idle_writer_lets_the_loop_append_durably(quick: tuple[CountingStore, AuditWriter]) -> None:
    store, writer = quick

    async def flow(n: int) -> int:
        seq = await writer.append_async(entry(n))
        assert store.head()[0] == seq  # durable when awaited
        return seq

    async def main() -> list[int]:
        return [await flow(n) for n in range(5)]

    assert asyncio.run(main()) == [0, 1, 2, 3, 4]
    assert store.threads == ["MainThread"] * 5  # no hand-off to the writer thread
    verify_chain(store, TRUSTED)


def test_a_database_locked_by_another_process_is_not_waited_for(tmp_path: Path) -> None:
    """Another connection holds the write lock: append_now gives up at once (the loop must not stall for the 60 s
    busy timeout), and append_async falls back to the writer thread, which waits and commits once it is released."""
    path = tmp_path / "audit.db"
    store = open_store(path, "normal")
    writer = AuditWriter(store)
    held = HeldDatabase(path)
    try:
        started = time.perf_counter()
        assert writer.append_now(entry(0)) is None
        assert time.perf_counter() - started < 0.5

        async def fallback() -> int:
            task = asyncio.ensure_future(writer.append_async(entry(1), timeout=30))
            await asyncio.sleep(0.2)
            assert not task.done()  # waiting on the writer thread; the loop is free
            asyncio.get_running_loop().call_later(0.1, held.release)
            return await task

        assert asyncio.run(fallback()) == 0
    finally:
        held.release()
    assert store.threads == ["aegis-audit-writer"]
    assert append_when_idle(writer, entry(2)) == 1  # the lock is free again: appended here
    writer.close()
    verify_chain(store, TRUSTED)
    store.close()


def append_when_idle(writer: AuditWriter, record: AppendEntry) -> int:
    """append_now once the writer thread has finished its commit (it wakes the waiters before it lets go)."""
    deadline = time.monotonic() + 10
    while (seq := writer.append_now(record)) is None:
        assert time.monotonic() < deadline, "the writer never became idle"
        time.sleep(0.001)
    return seq


def test_queued_and_committing_records_keep_their_turn(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    store = open_store(path, "normal")
    writer = AuditWriter(store, max_batch=1)
    held = HeldDatabase(path)
    try:
        committing = writer.submit(entry(0))
        wait_running(committing)  # the thread is in a commit (waiting for the database)
        assert writer.append_now(entry(1)) is None
        queued = writer.submit(entry(2))
    finally:
        held.release()
    assert committing.result(30) == 0 and queued.result(30) == 1
    assert append_when_idle(writer, entry(3)) == 2
    writer.close()
    verify_chain(store, TRUSTED)
    store.close()


def test_another_thread_writing_is_not_waited_for(quick: tuple[CountingStore, AuditWriter]) -> None:
    store, writer = quick
    with store._write_lock:  # e.g. a checkpoint or a key rotation of this process in progress
        assert writer.append_now(entry()) is None
    assert writer.append_now(entry()) == 0


@pytest.mark.parametrize(
    ("arguments", "problem"),
    [({"x": float("nan")}, "canonicalised"), ({1: "x"}, "canonicalised"), ({"x": 2**60}, "canonicalised")],
    ids=["nan", "int-key", "big-int"],
)
def test_a_refused_record_denies_and_writes_nothing(
    quick: tuple[CountingStore, AuditWriter], arguments: object, problem: str
) -> None:
    store, writer = quick
    with pytest.raises(AuditError, match=problem):
        asyncio.run(writer.append_async(entry(arguments=arguments)))
    assert store.head()[0] == -1
    assert asyncio.run(writer.append_async(entry())) == 0


def test_a_closed_writer_refuses(quick: tuple[CountingStore, AuditWriter]) -> None:
    store, writer = quick
    writer.close()
    with pytest.raises(AuditError, match="closed"):
        writer.append_now(entry())
    with pytest.raises(AuditError, match="closed"):
        asyncio.run(writer.append_async(entry()))
    assert store.head()[0] == -1


def test_loop_and_thread_appends_form_one_chain(quick: tuple[CountingStore, AuditWriter]) -> None:
    """Worker threads append through the writer while the loop appends on itself: one gap-free, verifiable chain."""
    store, writer = quick
    seqs: list[int] = []
    lock = threading.Lock()

    def thread_appends(base: int) -> None:
        for n in range(30):
            seq = writer.append_sync(entry(base + n))
            with lock:
                seqs.append(seq)

    async def loop_appends() -> list[int]:
        return [await writer.append_async(entry(1000 + n)) for n in range(60)]

    threads = [threading.Thread(target=thread_appends, args=(100 * i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    seqs.extend(asyncio.run(loop_appends()))
    for thread in threads:
        thread.join()
    assert sorted(seqs) == list(range(150))
    assert "MainThread" in store.threads and "aegis-audit-writer" in store.threads
    verify_chain(store, TRUSTED)


@pytest.mark.parametrize("backend", ["postgresql", "sqlite-with-options"])
def test_stores_whose_appends_may_wait_always_go_through_the_thread(tmp_path: Path, backend: str) -> None:
    """PostgreSQL (and a SQLite URL with options, which keeps the SQLAlchemy path) has no append that refuses to
    wait for a lock: the loop never appends itself there, alone or not."""
    with contextlib.ExitStack() as stack:
        url = (
            stack.enter_context(pg_schema_url())
            if backend == "postgresql"
            else f"sqlite:///{tmp_path / 'audit.db'}?timeout=30"
        )
        store = CountingStore(url, origin="test/wait", signer_key=SIGNER, replica="r1", sync="full")
        stack.callback(store.close)
        writer = stack.enter_context(AuditWriter(store))
        assert not store.appends_without_waiting and not writer.direct and not writer.quick
        assert writer.append_now(entry()) is None
        with pytest.raises(AppendWouldWait):
            store.append([entry()], wait=False)

        async def main() -> int:
            return await writer.append_async(entry(), alone=True)

        assert asyncio.run(main()) == 0
        assert store.threads == ["aegis-audit-writer"]
