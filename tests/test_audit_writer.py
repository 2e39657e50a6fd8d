"""Audit writer: group commit, durability before the future resolves, fail-fast and fail-closed paths, checkpoints."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aegis_proxy.audit import writer as writer_module
from aegis_proxy.audit.errors import AuditError
from aegis_proxy.audit.keys import TrustedKey, key_id
from aegis_proxy.audit.record import FindingSummary
from aegis_proxy.audit.store import AppendEntry, AuditStore, audit_arguments, audit_head, audit_records
from aegis_proxy.audit.verify import verify_chain
from aegis_proxy.audit.writer import AuditWriter
from tests.pg import PG_URL

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
KEY_ID = key_id(KEY.public_key())
TRUSTED = {KEY_ID: TrustedKey(KEY_ID, KEY.public_key(), 0)}


class CountingStore(AuditStore):
    """A real store that also counts its batches and checkpoint ticks (to observe group commit and the cadence)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.batches: list[int] = []
        self.threads: list[str] = []  # the thread of each append that wrote (append_now: the caller's)
        self.ticks = 0
        self.tick_error: Exception | None = None

    def append(self, entries: Sequence[AppendEntry], *, wait: bool = True) -> list[int]:
        seqs = super().append(entries, wait=wait)
        self.batches.append(len(entries))
        self.threads.append(threading.current_thread().name)
        return seqs

    def append_staged(self, entries: Sequence[AppendEntry] = ()) -> tuple[int, list[int]]:
        chained, seqs = super().append_staged(entries)
        if entries:  # the writer's chaining of staged decisions alone is not a batch
            self.batches.append(len(entries))
            self.threads.append(threading.current_thread().name)
        return chained, seqs

    def checkpoint_if_due(self) -> None:
        self.ticks += 1
        if self.tick_error is not None:
            raise self.tick_error


def entry(n: int = 0, **changes: object) -> AppendEntry:
    values: dict[str, object] = {
        "type": "decision",
        "decision": "allow",
        "tool": "read_file",
        "arguments": {"path": f"f{n}"},
        "session_id": "s1",
    }
    values.update(changes)
    return AppendEntry(**values)  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'audit.db'}"
    try:
        sa.create_engine(PG_URL).connect().close()
    except sa.exc.OperationalError as error:
        pytest.fail(f"PostgreSQL at {PG_URL} is unreachable (these tests must run on it): {error}")
    return PG_URL


def _cleanup(store: AuditStore) -> None:
    with store.engine.begin() as conn:
        for table in (audit_records, audit_head, audit_arguments):
            conn.execute(sa.delete(table).where(table.c.origin == store.origin))


@pytest.fixture
def store(db_url: str) -> Iterator[CountingStore]:
    audit_store = CountingStore(db_url, origin=f"test/{uuid.uuid4().hex}", signer_key=KEY, replica="r1")
    yield audit_store
    _cleanup(audit_store)
    audit_store.close()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[CountingStore]:
    audit_store = CountingStore(
        f"sqlite:///{tmp_path / 'audit.db'}", origin="test/writer", signer_key=KEY, replica="r1"
    )
    yield audit_store
    audit_store.close()


def test_seqs_are_contiguous_and_the_chain_verifies(store: CountingStore) -> None:
    with AuditWriter(store) as writer:
        seqs = [writer.append_sync(entry(n)) for n in range(5)]
    assert seqs == [0, 1, 2, 3, 4]
    verify_chain(store, TRUSTED)


def test_async_appends_are_durable_when_awaited_and_share_commits(store: CountingStore) -> None:
    """append_async on an event loop: each awaited seq is already in the database; concurrent flows group-commit."""

    async def flow(writer: AuditWriter, n: int) -> int:
        seq = await writer.append_async(entry(n))
        assert store.head()[0] >= seq  # committed before the await returned
        return seq

    async def main(writer: AuditWriter) -> list[int]:
        return list(await asyncio.gather(*(flow(writer, n) for n in range(40))))

    with AuditWriter(store) as writer:
        seqs = asyncio.run(main(writer))
    assert sorted(seqs) == list(range(40))
    assert sum(store.batches) == 40 and len(store.batches) < 40
    verify_chain(store, TRUSTED)


def test_async_append_fails_like_sync(sqlite_store: CountingStore) -> None:
    writer = AuditWriter(sqlite_store)
    writer.close()
    with pytest.raises(AuditError, match="closed"):
        asyncio.run(writer.append_async(entry()))


def test_concurrent_submitters_share_commits(store: CountingStore) -> None:
    threads, per_thread = 8, 40
    results: list[int] = []
    lock = threading.Lock()

    def worker(t: int) -> None:
        for i in range(per_thread):
            seq = writer.append_sync(entry(t * 1000 + i))
            with lock:
                results.append(seq)

    with AuditWriter(store) as writer:
        pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
    total = threads * per_thread
    assert sorted(results) == list(range(total))
    assert sum(store.batches) == total
    assert len(store.batches) < total  # some commits carried more than one record
    verify_chain(store, TRUSTED)


def test_batches_never_exceed_max_batch(store: CountingStore) -> None:
    with AuditWriter(store, max_batch=7, linger=0.05) as writer:
        futures = [writer.submit(entry(n)) for n in range(50)]
        assert [f.result(30) for f in futures] == list(range(50))
    assert max(store.batches) <= 7 and sum(store.batches) == 50


def test_close_flushes_everything_queued(store: CountingStore) -> None:
    writer = AuditWriter(store)
    futures = [writer.submit(entry(n)) for n in range(300)]
    writer.close()
    assert [f.result(0) for f in futures] == list(range(300))
    assert store.head()[0] == 299
    writer.close()  # idempotent


def test_submit_after_close_is_refused(store: CountingStore) -> None:
    writer = AuditWriter(store)
    writer.close()
    assert writer.closed
    with pytest.raises(AuditError, match="closed"):
        writer.submit(entry())


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"tool": "bad\ntool"}, "tool"),
        ({"session_id": "x" * 300}, "session_id"),
        ({"decision": "maybe"}, "decision"),
        ({"arguments": None}, "args_commit"),  # a decision record must commit to arguments
        ({"arguments": {"n": 2**60}}, "beyond 2\\^53"),
        ({"arguments": {"n": float("nan")}}, "not a finite number"),
        ({"arguments": {"s": "\ud800"}}, "lone surrogate"),
        ({"arguments": {"o": object()}}, "not JSON"),
        ({"type": "approval", "decision": "allow", "ref_seq": None}, "ref_seq"),
        ({"findings": (FindingSummary(category="x", severity="high", path="a"),), "rules": ("ok", "")}, "rules"),
    ],
)
def test_unwritable_entries_are_refused_with_the_reason(
    store: CountingStore, changes: dict[str, object], problem: str
) -> None:
    with AuditWriter(store) as writer, pytest.raises(AuditError, match=problem):
        writer.append_sync(entry(**changes))
    assert store.head()[0] == -1  # nothing written


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"type": "approval", "decision": "allow", "ref_seq": 0, "approver": "alice", "arguments": None},
        {"type": "timeout", "decision": None, "ref_seq": 0, "arguments": None},
        {"type": "policy_reload", "decision": None, "tool": None, "arguments": None, "policy_digest": "ab" * 32},
        {"arguments": {"f": 1.5, "nested": [{"k": [None, True, "ü"]}]}},
    ],
)
def test_writable_entries_are_written(store: CountingStore, changes: dict[str, object]) -> None:
    with AuditWriter(store) as writer:
        assert writer.append_sync(entry()) == 0
        assert writer.append_sync(entry(**changes)) == 1
    verify_chain(store, TRUSTED)


@pytest.mark.parametrize("bad_at", [0, 2, 5])
def test_a_bad_entry_does_not_poison_the_batch(store: CountingStore, bad_at: int) -> None:
    """Queued together (one batch, linger), the bad entry fails alone, wherever it is; the others are written in
    order with no gap in the chain."""
    with AuditWriter(store, linger=0.2) as writer:
        entries = [entry(n) for n in range(5)]
        entries.insert(bad_at, entry(tool="\x1b[31mred"))
        futures = [writer.submit(queued) for queued in entries]
        bad = futures.pop(bad_at)
        with pytest.raises(AuditError, match="tool"):
            bad.result(30)
        assert [f.result(30) for f in futures] == list(range(5))
    assert store.batches[-1] == 5  # the five good ones in one commit, after the refusal
    verify_chain(store, TRUSTED)


def test_a_failed_batch_fails_every_future(sqlite_store: CountingStore) -> None:
    writer = AuditWriter(sqlite_store)
    try:
        assert writer.append_sync(entry(0)) == 0
        with sqlite_store.engine.begin() as conn:  # the database loses the chain's head row: appends cannot proceed
            conn.execute(sa.delete(audit_head))
        futures: list[Future[int]] = [writer.submit(entry(n)) for n in range(1, 6)]
        for future in futures:
            with pytest.raises(AuditError, match="audit append failed"):
                future.result(30)
        with pytest.raises(AuditError):
            writer.append_sync(entry(9))
    finally:
        writer.close()


class HeldDatabase:
    """Another connection holds the SQLite database exclusively, so the writer's commit waits (a slow or stuck DB)."""

    def __init__(self, path: Path) -> None:
        self.connection = sqlite3.connect(path, isolation_level=None)
        self.connection.execute("BEGIN EXCLUSIVE")
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.connection.execute("ROLLBACK")
            self.connection.close()


def wait_running(future: Future[int]) -> None:
    deadline = time.monotonic() + 10
    while not future.running() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert future.running()


def test_full_queue_fails_fast(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    store = CountingStore(f"sqlite:///{path}", origin="test/slow", signer_key=KEY, replica="r1")
    writer = AuditWriter(store, max_queue=2, max_batch=1)
    held = HeldDatabase(path)
    try:
        first = writer.submit(entry(0))
        wait_running(first)  # the thread took it and waits for the database
        writer.submit(entry(1))
        writer.submit(entry(2))
        started = time.monotonic()
        with pytest.raises(AuditError, match="queue is full"):
            writer.submit(entry(3))
        assert time.monotonic() - started < 0.5  # the call is denied at once, not after a wait
    finally:
        held.release()
    assert first.result(30) == 0
    writer.close()
    assert store.head()[0] == 2  # entries 0, 1 and 2; 3 was refused
    verify_chain(store, TRUSTED)
    store.close()


def test_the_queue_bound_holds_under_concurrent_submitters(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    store = CountingStore(f"sqlite:///{path}", origin="test/bound", signer_key=KEY, replica="r1")
    writer = AuditWriter(store, max_queue=5, max_batch=1)
    held = HeldDatabase(path)
    accepted: list[Future[int]] = []
    refused: list[AuditError] = []

    def submit(n: int) -> None:
        try:
            accepted.append(writer.submit(entry(n)))
        except AuditError as error:
            refused.append(error)

    try:
        first = writer.submit(entry(0))
        wait_running(first)  # taken by the thread, no longer queued
        threads = [threading.Thread(target=submit, args=(n,)) for n in range(1, 21)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert (len(accepted), len(refused)) == (5, 15)
        assert all("queue is full" in error.message for error in refused)
    finally:
        held.release()
    assert sorted(future.result(30) for future in [first, *accepted]) == list(range(6))
    writer.close()
    verify_chain(store, TRUSTED)
    store.close()


@pytest.mark.parametrize("how", ["sync", "async"])
def test_a_late_commit_times_out_and_the_queued_entry_is_withdrawn(tmp_path: Path, how: str) -> None:
    path = tmp_path / "audit.db"
    store = CountingStore(f"sqlite:///{path}", origin="test/late", signer_key=KEY, replica="r1")
    writer = AuditWriter(store, max_batch=1)
    held = HeldDatabase(path)
    try:
        first = writer.submit(entry(0))
        wait_running(first)
        with pytest.raises(AuditError, match=r"not committed within 0\.2 s"):
            if how == "sync":
                writer.append_sync(entry(1), timeout=0.2)
            else:
                asyncio.run(writer.append_async(entry(1), timeout=0.2))
    finally:
        held.release()
    assert first.result(30) == 0
    writer.close()
    assert store.head()[0] == 0  # the timed-out entry was still queued: withdrawn, never written
    store.close()


def test_a_cancelled_async_append_withdraws_its_queued_entry(tmp_path: Path) -> None:
    """The awaiting flow goes away (its task is cancelled) while the entry still waits in the queue: never written."""
    path = tmp_path / "audit.db"
    store = CountingStore(f"sqlite:///{path}", origin="test/cancel", signer_key=KEY, replica="r1")
    writer = AuditWriter(store, max_batch=1)
    held = HeldDatabase(path)

    async def cancel_while_queued() -> bool:
        task = asyncio.ensure_future(writer.append_async(entry(1), timeout=30))
        await asyncio.sleep(0.1)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return True
        return False

    try:
        first = writer.submit(entry(0))
        wait_running(first)
        assert asyncio.run(cancel_while_queued())
    finally:
        held.release()
    assert first.result(30) == 0
    assert writer.append_sync(entry(2)) == 1  # the writer carries on; seq 1 went to this entry, not the withdrawn one
    writer.close()
    verify_chain(store, TRUSTED)
    store.close()


def test_sqlite_wal_is_checkpointed_off_the_commit_path(tmp_path: Path) -> None:
    """Records reach the database file through background PASSIVE checkpoints, long before SQLite's own checkpoint
    (1,000 log pages) would copy them inside some append's commit."""
    path = tmp_path / "audit.db"
    store = CountingStore(f"sqlite:///{path}", origin="test/wal", signer_key=KEY, replica="r1")
    writer = AuditWriter(store)
    assert writer.wal is not None
    writer.wal.every = 8
    for n in range(40):  # about 450 log pages: below SQLite's own threshold
        writer.append_sync(entry(n))
    deadline = time.monotonic() + 30
    while writer.wal.runs < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    writer.close()
    assert writer.wal.runs >= 5 and not writer.wal._thread.is_alive()
    copy = tmp_path / "main-file-only.db"  # the database file without its log: only what was checkpointed
    copy.write_bytes(path.read_bytes())
    with sqlite3.connect(copy) as connection:
        (checkpointed,) = connection.execute("SELECT count(*) FROM audit_records").fetchone()
    assert checkpointed >= 32
    verify_chain(store, TRUSTED)
    store.close()


class WalSyncSpy:
    """os.fdatasync / os.fsync as the WAL thread calls them: what each synced (from /proc) and when."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_first: int = 0) -> None:
        self.calls: list[tuple[str, str, float]] = []  # (function, path, monotonic time)
        self.fail_first = fail_first
        for name in ("fdatasync", "fsync"):
            monkeypatch.setattr(writer_module.os, name, self._spy(name, getattr(writer_module.os, name)))

    def _spy(self, name: str, real: Callable[[int], None]) -> Callable[[int], None]:
        def spied(descriptor: int) -> None:
            if self.fail_first:
                self.fail_first -= 1
                raise OSError(5, "Input/output error")
            real(descriptor)
            self.calls.append((name, os.readlink(f"/proc/self/fd/{descriptor}"), time.monotonic()))

        return spied

    def synced(self, path: Path) -> list[float]:
        return [at for name, synced, at in self.calls if name == "fdatasync" and synced == str(path)]


def normal_store(path: Path) -> CountingStore:
    return CountingStore(f"sqlite:///{path}", origin="test/wal-sync", signer_key=KEY, replica="r1", sync="normal")


def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until `condition` holds; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not within the timeout"
        time.sleep(0.005)


@pytest.mark.parametrize("how", ["append_sync", "stage_now"])
def test_normal_sync_makes_commits_durable_within_the_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """`sync = "normal"`: a commit makes no fsync of its own; the WAL thread fdatasyncs the log file within
    sync_interval of it (and its directory, once), and not again while nothing more is committed."""
    spy = WalSyncSpy(monkeypatch)
    store = normal_store(tmp_path / "audit.db")
    wal = tmp_path / "audit.db-wal"
    with AuditWriter(store, sync_interval=0.05) as writer:
        assert writer.wal is not None and writer.wal.wal_path == str(wal)
        writer.append_sync(entry(0))  # the WAL exists, and its first sync is behind us
        eventually(lambda: len(spy.synced(wal)) == 1)
        written = time.monotonic()
        if how == "append_sync":
            writer.append_sync(entry(1))
        else:
            assert writer.stage_now(entry(1)) is not None  # the loop's staged decision
        eventually(lambda: len(spy.synced(wal)) == 2)
        assert spy.synced(wal)[1] - written < 0.05 + 2.0  # due 0.05 s after the commit; slack for a loaded CI box
        time.sleep(0.3)  # six intervals with nothing committed
        assert len(spy.synced(wal)) == 2 and writer.wal.syncs == 2
    directories = [path for name, path, _ in spy.calls if name == "fsync"]
    assert directories == [str(tmp_path)]  # the WAL file's directory entry, once for that file
    store.close()


def test_closing_syncs_what_was_committed_since_the_last_sync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = WalSyncSpy(monkeypatch)
    store = normal_store(tmp_path / "audit.db")
    writer = AuditWriter(store, sync_interval=60.0)
    writer.append_sync(entry(0))
    assert spy.synced(tmp_path / "audit.db-wal") == []  # not due for a minute
    writer.close()
    assert len(spy.synced(tmp_path / "audit.db-wal")) == 1
    store.close()


def test_a_failed_wal_sync_is_logged_and_tried_again_an_interval_later(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Failures are retried every sync_interval, not in a loop; meanwhile the oldest unsynced commit keeps its age
    (what /metrics shows), and appends go on."""
    spy = WalSyncSpy(monkeypatch, fail_first=3)
    store = normal_store(tmp_path / "audit.db")
    with AuditWriter(store, sync_interval=0.1) as writer:
        assert writer.wal is not None
        writer.append_sync(entry(0))
        committed = time.monotonic()
        time.sleep(0.25)  # the first sync is due after 0.1 s and fails; the next 0.1 s after that failure
        assert spy.fail_first >= 1  # at most two attempts in 0.25 s: not a loop
        assert writer.wal.unsynced_seconds() >= 0.2  # still counted from the commit, not from the last attempt
        assert writer.append_sync(entry(1)) == 1
        eventually(lambda: len(spy.synced(tmp_path / "audit.db-wal")) == 1)
        assert spy.synced(tmp_path / "audit.db-wal")[0] - committed >= 0.3  # the fourth attempt
        assert writer.wal.unsynced_seconds() == 0
    assert caplog.text.count("syncing the WAL failed") == 3
    store.close()


def test_full_sync_leaves_the_wal_to_each_commit(sqlite_store: CountingStore, monkeypatch: pytest.MonkeyPatch) -> None:
    spy = WalSyncSpy(monkeypatch)
    with AuditWriter(sqlite_store, sync_interval=0.01) as writer:
        assert writer.wal is not None and writer.wal.wal_path is None
        writer.append_sync(entry(0))
        time.sleep(0.1)
    assert spy.calls == []  # SQLite synced each commit itself


def test_postgresql_has_no_wal_checkpointer(store: CountingStore) -> None:
    with AuditWriter(store) as writer:
        assert (writer.wal is None) == store.engine.url.get_backend_name().startswith("postgresql")


def test_checkpoint_cadence_and_its_failures(sqlite_store: CountingStore) -> None:
    sqlite_store.tick_error = RuntimeError("checkpoint storage unavailable")
    with AuditWriter(sqlite_store, checkpoint_interval=0.05) as writer:
        time.sleep(0.4)
        assert writer.append_sync(entry()) == 0  # a failing checkpoint does not stop appends
    assert 3 <= sqlite_store.ticks <= 12


def test_stores_without_checkpoints_are_fine(tmp_path: Path) -> None:
    store = AuditStore(f"sqlite:///{tmp_path / 'a.db'}", origin="test/plain", signer_key=KEY, replica="r1")
    with AuditWriter(store, checkpoint_interval=0.02) as writer:
        time.sleep(0.1)
        assert writer.append_sync(entry()) == 0
    store.close()


@pytest.mark.parametrize(
    "settings",
    [
        {"max_batch": 0},
        {"max_queue": 0},
        {"linger": -1.0},
        {"checkpoint_interval": 0.0},
        {"sync_interval": 0.0},
        {"sync_interval": 61.0},
    ],
)
def test_bad_settings_are_refused(sqlite_store: CountingStore, settings: dict[str, float]) -> None:
    with pytest.raises(AuditError, match="out of range"):
        AuditWriter(sqlite_store, **settings)  # type: ignore[arg-type]
