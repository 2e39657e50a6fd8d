"""Audit store under crashes and contention (issue 4, verifier tests 13 and 14), on SQLite and PostgreSQL.

13: a writer killed with SIGKILL in the middle of its appends leaves a log that verifies, whose head row matches its
    last record, and whose checkpoints never go beyond the committed records.
14: N processes x M threads appending to one log produce one contiguous, verified chain with consistent checkpoints.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aegis_proxy.audit.keys import TrustedKey, key_id
from aegis_proxy.audit.merkle import MerkleFrontier
from aegis_proxy.audit.merkle import root as merkle_root
from aegis_proxy.audit.record import parse_body
from aegis_proxy.audit.store import AppendEntry, AuditStore, audit_head
from aegis_proxy.audit.verify import verify_chain
from tests.pg import pg_schema_url

ROOT = Path(__file__).resolve().parent.parent


def private_key(seed: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32)


def trust(*seeds: int) -> dict[str, TrustedKey]:
    keys = [private_key(seed).public_key() for seed in seeds]
    return {key_id(public): TrustedKey(key_id(public), public, 0) for public in keys}


def entry(n: int) -> AppendEntry:
    return AppendEntry(type="decision", decision="deny", tool="shell", arguments={"n": n}, agent_id="a", session_id="s")


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'audit.db'}"
    else:
        with pg_schema_url() as url:
            yield url


def check_log(store: AuditStore, trusted: dict[str, TrustedKey]) -> int:
    """Everything a verifier can check in one database: chain, head row, frontier, every checkpoint. Returns size."""
    verify_chain(store, trusted)  # steps 1-5: contiguous from 0, signatures, links, columns, head row = last record
    leaves = [r.record.leaf_hash for r in store.iter_records()]
    frontier = MerkleFrontier()
    frontier.extend(leaves)
    with store.engine.connect() as conn:
        query = sa.select(audit_head.c.frontier).where(audit_head.c.origin == store.origin)
        assert bytes(conn.execute(query).scalar_one()) == b"".join(frontier.state()[1])
    for stored in store.checkpoints():
        assert stored.size <= len(leaves), f"checkpoint of size {stored.size} beyond the {len(leaves)} records"
        assert stored.verify(trusted).root == merkle_root(leaves[: stored.size])
    return len(leaves)


# --- 13: kill -9 during appends ---------------------------------------------------------------------------------------

WRITER = textwrap.dedent(
    """
    import sys
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from aegis_proxy.audit.store import AppendEntry, AuditStore

    url, origin, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
    key = Ed25519PrivateKey.from_private_bytes(bytes([1]) * 32)
    store = AuditStore(url, origin=origin, signer_key=key, replica="victim", checkpoint_every=7)
    n = 0
    while True:
        seqs = store.append([AppendEntry(type="decision", decision="deny", tool="t", arguments={"n": n + i})
                             for i in range(batch)])
        n += batch
        print(seqs[-1], flush=True)  # committed: the append returned
    """
)


def run_and_kill(url: str, origin: str, batch: int, after_lines: int) -> int:
    """Start a writer, SIGKILL it once it reported `after_lines` commits; return the last seq it ever reported."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", WRITER, url, origin, str(batch)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert child.stdout is not None
    last = -1
    try:
        for _ in range(after_lines):
            line = child.stdout.readline()
            if not line:
                raise AssertionError(f"writer died before the kill: {child.stderr.read() if child.stderr else ''}")
            last = int(line)
        child.send_signal(signal.SIGKILL)  # mid-append: it never stops between batches on its own
        child.wait(timeout=30)
        for line in child.stdout:  # commits it reported between our last read and the kill
            last = int(line)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
        if child.stderr is not None:
            child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    return last


@pytest.mark.parametrize("batch", [1, 16])
def test_kill_9_during_appends_leaves_no_gap_and_no_checkpoint_beyond_commits(db_url: str, batch: int) -> None:
    origin = f"test/kill/{uuid.uuid4().hex[:8]}"
    trusted = trust(1)
    reported = -1
    for round_ in range(3):
        reported = run_and_kill(db_url, origin, batch, after_lines=5 + 7 * round_)
        store = AuditStore(db_url, origin=origin, signer_key=private_key(1), replica="checker", checkpoint_every=7)
        try:
            size = check_log(store, trusted)
            # Everything the writer saw committed is there; at most the batch in flight at the kill was committed
            # without being reported.
            assert reported + 1 <= size <= reported + 1 + batch
            assert store.append([entry(-1)]) == [size]  # the log goes on where the victim stopped
            check_log(store, trusted)
        finally:
            store.close()
    assert reported > 0


# --- 14: N processes x M threads -------------------------------------------------------------------------------------

PROCESSES, THREADS, APPENDS = 3, 4, 12  # each append is a batch of 1..3 records


def _worker_process(url: str, origin: str, seed: int, start: threading.Barrier) -> None:
    store = AuditStore(
        url,
        origin=origin,
        signer_key=private_key(seed),
        replica=f"p{seed}",
        checkpoint_every=10,
        checkpoint_interval=0.05,
    )
    errors: list[BaseException] = []

    def writer(thread: int) -> None:
        try:
            for i in range(APPENDS):
                store.append([entry(seed * 10_000 + thread * 100 + i)] * (1 + i % 3))
                if i % 4 == 0:
                    store.checkpoint_if_due()
        except BaseException as error:  # reported through the exit code below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(THREADS)]
    start.wait(timeout=60)  # every process ready: maximum contention from the first append
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store.close()
    if errors:
        raise SystemExit(f"{errors[0]!r}")


def test_processes_times_threads_form_one_verified_chain(db_url: str) -> None:
    origin = f"test/many/{uuid.uuid4().hex[:8]}"
    seeds = list(range(2, 2 + PROCESSES))  # one key per process, as replicas have
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(PROCESSES)
    workers = [context.Process(target=_worker_process, args=(db_url, origin, seed, start)) for seed in seeds]
    began = time.monotonic()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=180)
    assert [worker.exitcode for worker in workers] == [0] * PROCESSES
    expected = PROCESSES * THREADS * sum(1 + i % 3 for i in range(APPENDS))
    store = AuditStore(db_url, origin=origin, signer_key=private_key(2), replica="checker")
    try:
        assert check_log(store, trust(*seeds)) == expected
        bodies = [parse_body(r.record.body_bytes) for r in store.iter_records()]
        assert {b.replica for b in bodies} == {f"p{seed}" for seed in seeds}
        assert [b.seq for b in bodies] == list(range(expected))
        sizes = [c.size for c in store.checkpoints()]
        assert sizes == sorted(set(sizes)) and sizes, "checkpoints are written, each size once"
    finally:
        store.close()
    assert time.monotonic() - began < 120
