"""Group commit in front of the audit store: many callers, one thread, one transaction per batch.

Callers `submit(entry)` and get a future of the record's seq (`append_sync` waits for it in a thread, `append_async` on
an event loop); the writer thread drains the queue into batches of up to `max_batch` entries and appends each batch in
one transaction, so N concurrent calls cost about one commit (one fsync) instead of N. An idle writer commits a lone
entry at once (`linger` 0: no batch window). A caller applies its effect only after its future resolved: the record is
durable by then. One exception to the hand-off: on an event loop, with an idle writer on SQLite, `append_async` appends
on the loop itself (`append_now`), which costs less than the round trip: always when the commit makes no fsync (`sync =
"normal"`), and with `full` when the caller is alone on the loop (no other flow waits while it waits for the fsync).
A decision that needs no seq at once (`commit_async`, the Gate's) is staged there instead: one short durable row, which
the thread chains into its record right after, in the transaction of its next append (audit/FORMAT.md section 9). When
it goes through the thread (`full` with other flows in progress), the thread stages it too (`submit_decision`), with
the others queued at the same time in one statement, rather than appending a chained record before the call may go on.

Fail closed, fast: a full queue or a closed writer raises AuditError at `submit` (the call is denied at once). An entry
that can never become a record (the schema refuses a field, its arguments have no canonical form) fails alone: the store
names it (EntryRefused, nothing written) and the batch goes again without it, so a bad entry never poisons a batch of
good ones. It is not checked before it is queued: that check built every body twice, on the event loop. A batch the
store cannot write for any other reason fails every future in it. The thread also gives the store its checkpoint cadence
(`checkpoint_if_due`, when the store has it). On SQLite a second thread keeps the write-ahead log short
(`WalCheckpointer`), so that no append pays for copying it, and with `sync = "normal"` makes what was committed survive
power loss within `sync_interval` (a commit there makes no fsync of its own).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

from sqlalchemy import Engine

from aegis_proxy.audit.errors import AuditError
from aegis_proxy.audit.store import AppendEntry, AppendWouldWait, AuditStore, EntryRefused

log = logging.getLogger("aegis_proxy.audit")

_T = TypeVar("_T")
_STOP = object()  # queue sentinel: flush what came before it, then end
_CHAIN = object()  # queue sentinel: decisions were staged; chain them
WAL_CHECKPOINT_RECORDS = 64  # records between background WAL checkpoints (SQLite's own comes at 1,000 log pages)
# Seconds a staged decision waits before the thread chains it (with every decision staged meanwhile, in one
# transaction): chaining each one at once woke the thread for each call and made it take the GIL (and on `full` sync
# an fsync) while the loop served the next request. Stays well inside the checkpoint window (seconds, 1,000 records).
CHAIN_DELAY = 0.05
# With `sync = "normal"` on SQLite a commit reaches the OS, not the disk: the WAL is fsync'd this many seconds after
# the first commit since its last sync at the latest (audit.sync_interval), so that a power loss loses at most that much
# (PostgreSQL's `synchronous_commit = off` bounds its loss the same way: three times wal_writer_delay, 0.6 s).
SYNC_INTERVAL = 0.2


def _not_committed(timeout: float) -> AuditError:
    return AuditError(
        f"the audit record was not committed within {timeout:g} s", hint="the call is denied; check the audit database"
    )


def _closed() -> AuditError:
    return AuditError("the audit writer is closed", hint="the call is denied; the proxy is shutting down")


def _wake(loop: asyncio.AbstractEventLoop, waiter: asyncio.Future[Any], done: Future[Any]) -> None:
    """Runs where `done` completes (the writer thread, or a canceller): settle `waiter` on its loop."""
    if not loop.is_closed():
        loop.call_soon_threadsafe(_settle, waiter, done)


def _settle(waiter: asyncio.Future[Any], done: Future[Any]) -> None:
    if waiter.done():  # timed out or cancelled meanwhile
        return
    if done.cancelled():
        waiter.cancel()
    elif (error := done.exception()) is not None:
        waiter.set_exception(error)
    else:
        waiter.set_result(done.result())


def _expire(waiter: asyncio.Future[int]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class WalCheckpointer:
    """Copies an SQLite audit database's write-ahead log into the database file, and with `sync = "normal"` syncs the
    log, from a thread of its own.

    SQLite checkpoints the log itself inside the commit that takes it past 1,000 pages: about every 90 single-record
    appends (each touches the record, its indexes, the arguments and the head row). That commit copies the log into
    the database file and syncs both, several milliseconds on the request path of one call in a hundred: the p99.
    Here a PASSIVE checkpoint runs after every `every` committed records, on its own connection, with the GIL free
    while SQLite works, so that SQLite's own finds little left to copy. PASSIVE neither waits for nor blocks readers
    and writers. It does not keep the log file short under steady traffic: SQLite restarts the log from its beginning
    only when a writer starts right after a checkpoint that copied everything, and with a commit every few
    milliseconds the file still reached its 1,000 pages (measured: 4.1-4.3 MB in the proxy at 400 requests/s; a
    TRUNCATE checkpoint would keep it short, at the price of every commit's fsync then growing the file). What a commit
    makes durable is unchanged (the log is synced as `audit.sync` says before the commit returns). A failure is
    logged, and SQLite's own checkpoint remains.

    `sync_interval` (given with `sync = "normal"`, whose commits make no fsync): `sync_interval` seconds after the first
    commit since the last sync, the thread fdatasyncs the WAL file (and its directory, once per WAL file, so that the
    file itself survives), with the GIL free. SQLite replays a synced WAL's committed transactions after a power loss:
    a record is then durable within `sync_interval` of its commit. An idle log is not synced again. A failed sync is
    logged and tried again `sync_interval` later.
    """

    def __init__(
        self, engine: Engine, every: int = WAL_CHECKPOINT_RECORDS, *, sync_interval: float | None = None
    ) -> None:
        self.engine = engine
        self.every = every
        self.sync_interval = sync_interval
        database = engine.url.database
        self.wal_path = f"{database}-wal" if sync_interval is not None and database else None
        self.runs = 0  # checkpoints done (tests, diagnostics)
        self.syncs = 0  # WAL syncs done (tests, diagnostics)
        self._pending = 0
        self._checkpoint_due = False
        self._dirty_since: float | None = None  # the oldest commit not yet synced (monotonic), with a sync_interval
        self._failed_at: float | None = None  # the last sync that failed: the next waits sync_interval from it
        self._synced_directory: int | None = None  # the WAL file (inode) whose directory entry has been synced
        self._wake = threading.Event()  # set after setting what it is for: _checkpoint_due, _dirty_since, _stopping
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="aegis-audit-wal", daemon=True)
        self._thread.start()

    def committed(self, records: int) -> None:
        """Called after each commit that appended `records` records (the writer thread's, or the loop's append)."""
        self._pending += records
        if self._pending >= self.every:
            self._pending = 0
            self._checkpoint_due = True
            self._wake.set()
        self.wrote()

    def wrote(self) -> None:
        """Called after any other commit to the log (a staged decision): the WAL is to be synced, where it is synced
        here. Cheap on the event loop: only the first commit since the last sync wakes the thread."""
        if self.wal_path is not None and self._dirty_since is None:
            self._dirty_since = time.monotonic()
            self._wake.set()

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop the thread; what was committed and not yet synced is synced first."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)

    def unsynced_seconds(self) -> float:
        """How long the oldest commit not yet synced has waited (0: everything committed is on disk, or the commits
        sync themselves). Well above `sync_interval`, the syncs fail (/metrics: aegis_audit_unsynced_seconds)."""
        since = self._dirty_since
        return 0.0 if since is None else max(0.0, time.monotonic() - since)

    def _until_sync(self) -> float | None:
        since, interval = self._dirty_since, self.sync_interval
        if since is None or interval is None:
            return None
        due = since + interval if self._failed_at is None else max(since, self._failed_at) + interval
        return max(0.0, due - time.monotonic())

    def _run(self) -> None:
        while True:
            self._wake.wait(self._until_sync())
            self._wake.clear()  # the flags were set before the event: none is lost by clearing it here
            if self._stopping:
                if self._dirty_since is not None:
                    self._sync_wal()
                return
            if self._until_sync() == 0:
                self._sync_wal()
            if self._checkpoint_due:
                self._checkpoint_due = False
                self._checkpoint()

    def _sync_wal(self) -> None:
        """fdatasync the WAL file; the first time for this file, its directory too. A failure is logged and retried."""
        assert self.wal_path is not None
        since, self._dirty_since = self._dirty_since, None  # a commit from now on marks it again: this sync may miss it
        try:
            try:
                descriptor = os.open(self.wal_path, os.O_RDONLY)
            except FileNotFoundError:
                return  # no WAL: SQLite checkpointed it into the database (and synced that) and removed it
            try:
                os.fdatasync(descriptor)
                inode = os.fstat(descriptor).st_ino
            finally:
                os.close(descriptor)
            if inode != self._synced_directory:
                directory = os.open(os.path.dirname(os.path.abspath(self.wal_path)), os.O_RDONLY)
                try:
                    os.fsync(directory)
                finally:
                    os.close(directory)
                self._synced_directory = inode
            self._failed_at = None
            self.syncs += 1
        except OSError:
            log.warning("audit writer: syncing the WAL failed; trying again in %s s", self.sync_interval, exc_info=True)
            self._failed_at = time.monotonic()
            later = self._dirty_since  # a commit since the sync began
            self._dirty_since = since if later is None or since is None else min(since, later)

    def _checkpoint(self) -> None:
        try:
            # A DBAPI connection with the store's settings and no transaction (a PRAGMA inside BEGIN IMMEDIATE
            # would take the write lock that appends need).
            connection = self.engine.raw_connection()
            try:
                cursor = connection.cursor()
                cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
                cursor.fetchall()
                cursor.close()
            finally:
                connection.close()
            self.runs += 1
        except Exception:  # SQLite's own checkpoint still runs; the next commit retries this one
            log.warning("audit writer: background WAL checkpoint failed", exc_info=True)


@dataclasses.dataclass(frozen=True, slots=True)
class Durable:
    """Where an entry is durable: its record's `seq`, or the id of its `staged` row (the writer thread chains it into
    a record milliseconds later, with the time it was staged with; its seq is assigned then)."""

    seq: int | None = None
    staged: int | None = None


@dataclasses.dataclass(slots=True)
class _Pending:
    """A queued entry and the future of its outcome: its seq (`submit`), or where it is durable (`submit_decision`:
    a Durable; with the row the thread may stage instead of appending it, when the store stages)."""

    entry: AppendEntry
    future: Future[Any]
    decision: bool = False
    row: dict[str, Any] | None = None


class AuditWriter:
    """One background thread appending batches to `store`. Thread-safe; share one per process."""

    def __init__(
        self,
        store: AuditStore,
        *,
        max_batch: int = 256,
        max_queue: int = 10_000,
        linger: float = 0.0,
        checkpoint_interval: float = 1.0,
        chain_delay: float = CHAIN_DELAY,
        sync_interval: float = SYNC_INTERVAL,
    ) -> None:
        if (
            max_batch < 1
            or max_queue < 1
            or linger < 0
            or checkpoint_interval <= 0
            or not 0 <= chain_delay <= 1
            or not 0 < sync_interval <= 60
        ):
            raise AuditError(
                "audit writer settings out of range",
                hint="max_batch and max_queue >= 1, linger >= 0, checkpoint_interval > 0, chain_delay 0..1 s, "
                "sync_interval over 0 and up to 60 s",
            )
        self.store = store
        self.max_batch = max_batch
        self.linger = linger
        self.chain_delay = chain_delay
        self.checkpoint_interval = checkpoint_interval
        # SimpleQueue (C): a put wakes the thread without queue.Queue's Python-level Condition (measured in the proxy:
        # 0.1 ms less CPU and 0.15 ms less latency per request). Bounded in submit, where every put happens under
        # _close_lock: the size checked there can only shrink before the put.
        self.max_queue = max_queue
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._closed = False
        self._close_lock = threading.Lock()  # submit vs close: nothing is enqueued after the stop sentinel
        self._next_checkpoint = time.monotonic() + checkpoint_interval
        engine = getattr(store, "engine", None)
        unsynced = getattr(store, "sync", "full") == "normal"  # its commits make no fsync: the WAL is synced here
        self.wal: WalCheckpointer | None = (
            WalCheckpointer(engine, sync_interval=sync_interval if unsynced else None)
            if isinstance(engine, Engine) and engine.dialect.name == "sqlite"
            else None
        )
        # Held by the thread while it commits a batch; a caller appending on its own thread (append_async) takes it
        # only when it is free, so the two never wait for each other.
        self._committing = threading.Lock()
        self.quick = bool(getattr(store, "quick_appends", False))  # see append_async
        self.direct = bool(getattr(store, "appends_without_waiting", False))  # append_now is possible at all
        # Staged decisions wait to be chained (set after a stage commits, cleared by the thread before it reads them),
        # since this monotonic time: chained `chain_delay` later, or earlier with a batch the thread commits anyway.
        self._staged_waiting = False
        self._staged_since = 0.0
        # The last chaining failed (a staged row that cannot become a record, the database): nothing is staged until
        # a chaining succeeds, so that calls take the thread's path, which tries again and fails closed meanwhile.
        self.chain_failure: AuditError | None = None
        if hasattr(store, "append_staged"):
            self._chain_left_over()
        self._thread = threading.Thread(target=self._run, name="aegis-audit-writer", daemon=True)
        self._thread.start()

    def _chain_left_over(self) -> None:
        """Chain what a process that stopped before its writer chained left staged, before any new record."""
        try:
            chained, _ = self.store.append_staged()
        except AuditError as error:
            self._still_staged()
            self.chain_failure = error
            log.error("audit writer: staged decisions left by an earlier run cannot be chained: %s", error.message)
            return
        if chained:
            log.warning("audit writer: chained %d decisions an earlier run had staged", chained)

    @property
    def closed(self) -> bool:
        return self._closed

    def submit(self, entry: AppendEntry) -> Future[int]:
        """Queue one entry; the future resolves to its seq once committed, or fails with AuditError."""
        future: Future[int] = Future()
        self._enqueue(_Pending(entry, future))
        return future

    def submit_decision(self, entry: AppendEntry) -> Future[Durable]:
        """Queue a decision whose seq nobody needs at once; the future resolves to where it is durable once it is.
        Where the store stages (SQLite), its row is made here (`store.staging_row`: time, nonce, canonical arguments,
        the record schema's check; EntryRefused at once for an entry that could never be a record), and the thread
        stages the rows it finds queued together in one statement, chaining them `chain_delay` later as it chains the
        loop's; otherwise (PostgreSQL, or while chaining fails) the entry is appended. Fails with AuditError.

        The row is made on the caller's thread so that the writer's own work is the insert alone: on an event loop
        busy with other flows, each time the thread needs the GIL back it may wait for the loop."""
        row = self.store.staging_row(entry) if self.direct else None
        future: Future[Durable] = Future()
        self._enqueue(_Pending(entry, future, decision=True, row=row))
        return future

    def _enqueue(self, pending: _Pending) -> None:
        with self._close_lock:
            if self._closed:
                raise _closed()
            if not self._thread.is_alive():
                raise AuditError("the audit writer thread is not running", hint="the call is denied; restart aegis")
            if self._queue.qsize() >= self.max_queue:
                raise AuditError(
                    "the audit queue is full", hint="the call is denied; the audit database is too slow or down"
                )
            self._queue.put(pending)

    def append_sync(self, entry: AppendEntry, timeout: float = 5.0) -> int:
        """Submit and wait until the record is durable; its seq. Raises AuditError (also on timeout)."""
        future = self.submit(entry)
        try:
            return future.result(timeout)
        except FutureTimeout:
            # Withdraw it if the thread has not taken it yet; a record already in a commit may still land (the call
            # is denied either way: the log then holds a record of a call that did not run, never the reverse).
            future.cancel()
            raise _not_committed(timeout) from None

    async def append_async(self, entry: AppendEntry, timeout: float = 5.0, *, alone: bool = False) -> int:
        """`append_sync` for an event loop: the loop serves other work until the record is durable, and the writer
        thread wakes it directly (no worker thread waits in between). Raises AuditError (also on timeout).

        The hand-off is one loop future settled by one call_soon_threadsafe, and one timer: measured, 25-30 us less of
        the loop's CPU per record than asyncio.wrap_future under asyncio.timeout (two futures chained both ways).

        When the writer is idle, the record is appended right here instead (`append_now`), which costs the loop the
        append but saves the round trip through the thread (two thread wake-ups, the futures): always when that append
        is quick (SQLite, `audit.sync = "normal"`: no fsync; measured with bench/proxy.py, 0.35 ms less latency and 0.3
        ms less CPU per call, and the same throughput with 8 clients at once), and with `full` when the caller says it
        is `alone`: no other flow is in progress on this loop, so nobody waits while the loop waits for the fsync
        (measured: 0.5 ms less latency and 0.6 ms less CPU per call for one agent). With other flows in progress the
        fsync stays in the thread, where the loop serves them meanwhile and concurrent records share one commit."""
        if self.quick or (alone and self.direct):
            seq = self.append_now(entry)
            if seq is not None:
                return seq
        return await self._through_thread(self.submit(entry), timeout)

    async def commit_async(self, entry: AppendEntry, timeout: float = 5.0, *, alone: bool = False) -> Durable:
        """`append_async` for a decision that does not need its seq at once: where `append_async` would append on the
        loop, the decision is staged there instead (`stage_now`: one short row, durable as `audit.sync` says), and the
        writer thread chains it into its signed record `chain_delay` later, with the others staged meanwhile (woken
        once the loop has finished the current step, so that the answer goes out first). Measured on this path, a
        staged row costs the loop a quarter of a chained append: no head row, signature, Merkle step or index updates
        (docs/proxy.md, Latency)."""
        if self.quick or (alone and self.direct):
            first = not self._staged_waiting  # the thread sleeps until it is told when the first one is due
            staged = self.stage_now(entry)
            if staged is not None:
                if first:
                    asyncio.get_running_loop().call_soon(self.request_chain)
                return Durable(staged=staged)
        return await self._through_thread(self.submit_decision(entry), timeout)

    async def _through_thread(self, future: Future[_T], timeout: float) -> _T:
        """The result of a queued entry's `future`, awaited on the loop without blocking it; its entry withdrawn if
        the wait ends before the thread has taken it."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[_T] = loop.create_future()
        future.add_done_callback(functools.partial(_wake, loop, waiter))
        timer = loop.call_later(timeout, _expire, waiter)
        try:
            return await waiter
        except TimeoutError:
            future.cancel()  # as in append_sync: withdrawn if not yet taken; the call is denied either way
            raise _not_committed(timeout) from None
        except asyncio.CancelledError:  # the flow went away: withdraw the entry if the thread has not taken it
            future.cancel()
            raise
        finally:
            timer.cancel()

    def append_now(self, entry: AppendEntry) -> int | None:
        """Append on the calling thread if that cannot wait for a lock: the store can append without waiting
        (SQLite), the writer commits nothing and has nothing queued (queued records keep their turn and their group
        commit), no other thread of this process writes, and no other process holds the database lock. Its seq once
        durable (with `audit.sync = "full"`, after the commit's fsync, on this thread); None, with nothing written,
        when any of these does not hold (then `submit`). Raises AuditError as `append_sync` does.

        The same record as through the thread: the store builds, signs and commits it in one transaction and refuses an
        entry that can never be a record (EntryRefused, an AuditError: the call is denied)."""
        seqs = self._on_this_thread(lambda: self.store.append([entry], wait=False))
        if seqs is None:
            return None
        if len(seqs) != 1:
            raise AuditError(f"store returned {len(seqs)} seqs for 1 record", hint="a store bug")
        if self.wal is not None:
            self.wal.committed(1)
        return seqs[0]

    def stage_now(self, entry: AppendEntry) -> int | None:
        """Stage a decision on the calling thread (`store.stage`) under the conditions of `append_now`, and while
        chaining works; its staged id once durable, or None, with nothing written, when it cannot be staged here.
        Raises AuditError as `append_now` does (EntryRefused for an entry that could never become a record). The
        caller asks the thread to chain it (`request_chain`)."""
        if self.chain_failure is not None and not self._closed:  # (closed: _on_this_thread raises, as append_now)
            return None

        def stage() -> int:
            staged = self.store.stage(entry)
            self._newly_staged()  # under _committing: the thread's next commit sees it
            if self.wal is not None:
                self.wal.wrote()
            return staged

        return self._on_this_thread(stage)

    def _on_this_thread(self, write: Callable[[], _T]) -> _T | None:
        """`write` (a store call that does not wait: AppendWouldWait) on the calling thread when that cannot wait
        for a lock: the store can write without waiting (SQLite), the writer commits nothing and has nothing queued
        (queued records keep their turn and their group commit) and its thread is alive; None, with nothing written,
        when any of these does not hold or the store found the database busy."""
        if self._closed:
            raise _closed()
        if not self.direct or not self._committing.acquire(blocking=False):
            return None
        try:
            if self._queue.qsize() or not self._thread.is_alive():
                return None  # queued records first; a dead thread is reported by submit
            try:
                return write()
            except AppendWouldWait:
                return None
        finally:
            self._committing.release()

    def request_chain(self) -> None:
        """Wake the thread to chain staged decisions (a no-op once closed: closing chains what is staged)."""
        with self._close_lock:
            if not self._closed:
                self._queue.put(_CHAIN)

    def close(self, timeout: float | None = 10.0) -> None:
        """Flush what is queued and chain what is staged, then stop the thread. Idempotent."""
        with self._close_lock:
            if not self._closed:
                self._closed = True
                self._queue.put(_STOP)  # after everything queued: flushed first
        self._thread.join(timeout)
        if self._thread.is_alive() or self._queue.qsize():
            log.error("audit writer: not stopped after %s s; %d entries not written", timeout, self._queue.qsize())
        if self.wal is not None and not self._thread.is_alive():
            self.wal.close(timeout)

    def __enter__(self) -> AuditWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the thread ---------------------------------------------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while not stopping:
            try:
                first = self._queue.get(timeout=min(self._until_checkpoint(), self._until_chain()))
            except queue.Empty:
                if self._until_chain() == 0:  # staged decisions are due (or a chaining that failed, again)
                    with self._committing:
                        self._commit([])
                self._checkpoint()
                continue
            batch: list[_Pending] = []
            stopping = self._take(first, batch)
            deadline = time.monotonic() + self.linger
            while not stopping and len(batch) < self.max_batch:
                try:
                    remaining = deadline - time.monotonic()
                    item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                stopping = self._take(item, batch)
            if batch or (self._staged_waiting and (stopping or self._until_chain() == 0)):
                with self._committing:
                    self._commit(batch, stopping=stopping)
            self._checkpoint()

    @staticmethod
    def _take(item: Any, batch: list[_Pending]) -> bool:
        if item is _STOP:
            return True
        if item is not _CHAIN:  # a wake-up only: the loop staged a first decision, whose chaining the thread times
            batch.append(item)
        return False

    def _commit(self, batch: list[_Pending], *, stopping: bool = False) -> None:
        """Commit the batch: the decisions that may be staged, staged in one statement where the store stages
        (`_stage`); the rest appended, staged decisions chained first in the same transaction. Staged decisions are
        chained with any append, when they are due, and when the writer stops."""
        live = [pending for pending in batch if pending.future.set_running_or_notify_cancel()]
        if self.chain_failure is None and any(pending.row is not None for pending in live):
            self._stage([pending for pending in live if pending.row is not None])
            live = [pending for pending in live if pending.row is None]
        chain = self._staged_waiting and (bool(live) or stopping or self._until_chain() == 0)
        if chain:
            self._staged_waiting = False  # cleared before the rows are read: a decision staged meanwhile sets it again
        while live or chain:
            try:
                entries = [pending.entry for pending in live]
                chained, seqs = self.store.append_staged(entries) if chain else (0, self.store.append(entries))
                if len(seqs) != len(live):
                    raise AuditError(f"store returned {len(seqs)} seqs for {len(live)} records", hint="a store bug")
            except EntryRefused as refused:
                if not 0 <= refused.index < len(live):
                    if chain:
                        self._still_staged()
                    self._fail(live, refused)
                    return
                # That entry can never be written (nothing of the batch was): it alone fails, the rest go again.
                refused_one = live.pop(refused.index)
                refused_one.future.set_exception(AuditError(refused.message, hint=refused.hint))
                continue
            except Exception as error:  # AuditError, or a store bug: either way nothing of the batch is known durable
                if chain:
                    self._still_staged()
                    self.chain_failure = error if isinstance(error, AuditError) else AuditError(repr(error))
                    log.error("audit writer: staged decisions not chained: %s", self.chain_failure.message)
                if live:
                    self._fail(live, error)
                return
            if chain:
                self.chain_failure = None
            for pending, seq in zip(live, seqs, strict=True):
                pending.future.set_result(Durable(seq=seq) if pending.decision else seq)
            if self.wal is not None:
                self.wal.committed(chained + len(live))
            return

    def _stage(self, staging: list[_Pending]) -> None:
        """Stage decisions from the thread, all in one statement (one fsync with `full`, shared by every flow that
        waits for one): each future resolves to its staged row once durable, and the rows are chained `chain_delay`
        later with the loop's. Under concurrency this is what the flows wait for, instead of a chained append of the
        whole batch (reading the head row, building and signing each record, the Merkle steps and the indexes)."""
        try:
            ids = self.store.stage_rows([pending.row for pending in staging if pending.row is not None])
            if len(ids) != len(staging):
                raise AuditError(f"store staged {len(ids)} rows for {len(staging)} decisions", hint="a store bug")
        except Exception as error:  # the database, or a store bug: nothing of it is known durable
            self._fail(staging, error)
            return
        for pending, staged in zip(staging, ids, strict=True):
            pending.future.set_result(Durable(staged=staged))
        self._newly_staged()
        if self.wal is not None:
            self.wal.committed(len(staging))

    @staticmethod
    def _fail(live: list[_Pending], error: Exception) -> None:
        failure = error if isinstance(error, AuditError) else AuditError(f"audit append failed: {error!r}")
        log.error("audit batch of %d failed: %s", len(live), failure.message)
        for pending in live:  # one exception object per waiter: raising it appends to its traceback
            own = AuditError(failure.message, hint=failure.hint or "the call is denied")
            own.__cause__ = failure
            pending.future.set_exception(own)

    def _newly_staged(self) -> None:
        """Decisions were staged: they are due `chain_delay` after the oldest still waiting."""
        if not self._staged_waiting:
            self._staged_since, self._staged_waiting = time.monotonic(), True

    def _still_staged(self) -> None:
        """A chaining did not happen: the staged decisions are tried again a chain_delay (or a batch) later."""
        self._staged_since, self._staged_waiting = time.monotonic(), True

    def _until_chain(self) -> float:
        """Seconds until staged decisions are due to be chained (0: now; infinity: none waits)."""
        if not self._staged_waiting:
            return float("inf")
        return max(0.0, self._staged_since + self.chain_delay - time.monotonic())

    def _until_checkpoint(self) -> float:
        return max(0.0, self._next_checkpoint - time.monotonic())

    def _checkpoint(self) -> None:
        if time.monotonic() < self._next_checkpoint:
            return
        self._next_checkpoint = time.monotonic() + self.checkpoint_interval
        due = getattr(self.store, "checkpoint_if_due", None)
        if due is None:
            return
        try:
            due()
        except Exception:  # a checkpoint failure must not stop appends; the next tick retries
            log.exception("audit checkpoint failed")
