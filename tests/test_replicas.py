"""Fault test of the scale-out topology: three `aegis run` processes on their own ports share one PostgreSQL audit log
(one origin, one signing key, as deploy/ runs them). Clients drive mixed traffic through all three: allowed, denied and
held calls. A call held inside a stream on one replica is approved with `aegis approvals approve ID --db URL` from
another terminal while the stream waits, and its identical retry through another replica is held again (an approval is
used once); held calls during the load are resolved by an operator process. One replica is killed with SIGKILL
mid-load and restarted.

Afterwards `aegis audit verify` passes over one contiguous chain written by all three replicas, and every decision a
client received has its record: each call carries a unique nonce in its arguments, so the client's answer is matched
to exactly one decision record (and a held call's answer to the approval record that resolved its ask).

The database is a fresh PostgreSQL schema, dropped at the end; the origin is unique per run as well.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from aegis_proxy.approvals import ApprovalStore
from aegis_proxy.audit.store import audit_arguments, audit_records
from bench.load import AEGIS, Answer, Cluster, Spec, allowed, chat, denied, echo_llm, held
from tests.operator import answer_first_pending
from tests.pg import pg_schema_url

LOAD_SECONDS = 12.0  # at least; and at least AFTER_RESTART seconds after the killed replica is back
KILL_AFTER = 3.0
AFTER_RESTART = 3.0
CLIENTS_PER_REPLICA = 2
MIX = ("allow", "deny", "allow", "held", "allow", "deny")  # what each client sends, in turn


@dataclass(frozen=True)
class Sent:
    nonce: str
    kind: str  # allow | deny | held: what the policy makes of the call
    replica: int
    answer: Answer
    at: float  # monotonic, when the answer came back


def _spec(kind: str, nonce: str) -> Spec:
    return {"allow": allowed, "deny": denied, "held": held}[kind](nonce)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*AEGIS, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def _approve_with_the_cli(db: str, cwd: Path, by: str, out: list[subprocess.CompletedProcess[str]]) -> threading.Thread:
    """A human in another terminal: approves the pending approval with the real CLI; its result goes to `out`."""
    return answer_first_pending(
        db,
        True,
        timeout=30,
        resolve=lambda approval: out.append(_cli("approvals", "approve", approval.id, "--db", db, "--by", by, cwd=cwd)),
    )


class Operator:
    """Resolves every pending approval it sees, from its own connection (another process than the replicas): the
    first with the real CLI, then approve and deny in turn."""

    def __init__(self, db: str, cwd: Path) -> None:
        self.db, self.cwd = db, cwd
        self.resolved: dict[str, bool] = {}
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="operator", daemon=True)

    def __enter__(self) -> Operator:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        store = ApprovalStore(self.db)
        try:
            while not self._stop.wait(0.1):
                for pending in store.list():
                    if pending.id in self.resolved:
                        continue
                    approve = len(self.resolved) % 2 == 0
                    if not self.resolved:
                        done = _cli(
                            "approvals", "approve", pending.id, "--db", self.db, "--by", "ops-cli", cwd=self.cwd
                        )
                        if done.returncode != 0:
                            self.failures.append(done.stderr)
                    else:
                        try:
                            store.resolve(pending.id, approve, "ops")
                        except Exception as error:  # e.g. its replica was killed and the sweeper timed it out
                            self.failures.append(f"{pending.id}: {error}")
                    self.resolved[pending.id] = approve
        finally:
            store.close()


def _drive(cluster: Cluster, sent: list[Sent], lock: threading.Lock, stop: threading.Event) -> list[threading.Thread]:
    def client(index: int, replica: int) -> None:
        url = cluster.replicas[replica].url
        with httpx.Client(timeout=60) as session:
            n = 0
            while not stop.is_set():
                kind = MIX[n % len(MIX)]
                n += 1
                nonce = f"c{index}n{n}"
                answer = chat(session, url, _spec(kind, nonce))
                with lock:
                    sent.append(Sent(nonce, kind, replica, answer, time.monotonic()))
                if answer.effect == "error":
                    time.sleep(0.1)  # the replica is down: try again shortly, with a new call

    threads = [
        threading.Thread(target=client, args=(replica * CLIENTS_PER_REPLICA + k, replica), daemon=True)
        for replica in range(len(cluster.replicas))
        for k in range(CLIENTS_PER_REPLICA)
    ]
    for thread in threads:
        thread.start()
    return threads


def _records(db: str, origin: str) -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]]]:
    """Every record body of the log in seq order, and the stored (redacted) arguments by seq."""
    engine = sa.create_engine(db)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(audit_records.c.body).where(audit_records.c.origin == origin).order_by(audit_records.c.seq)
            ).all()
            args = conn.execute(
                sa.select(audit_arguments.c.seq, audit_arguments.c.arguments).where(audit_arguments.c.origin == origin)
            ).all()
    finally:
        engine.dispose()
    return [json.loads(bytes(row.body)) for row in rows], {row.seq: json.loads(bytes(row.arguments)) for row in args}


def _nonce_of(arguments: dict[str, Any]) -> str | None:
    if "note" in arguments:
        return str(arguments["note"])
    content = arguments.get("content")
    if isinstance(content, str) and "# " in content:
        return content.rsplit("# ", 1)[1].strip()
    return None


def test_three_replicas_one_chain_through_a_sigkill(tmp_path: Path) -> None:
    origin = f"test/replicas-{uuid.uuid4().hex[:12]}"
    with pg_schema_url() as db, echo_llm() as llm:
        cluster = Cluster(tmp_path, replicas=3, db=db, origin=origin, upstream=llm.url, approval_timeout=30)
        with cluster:
            replicas = cluster.replicas
            # 1. Held inside a stream on replica 0 until approved from another terminal's CLI (approvals live in the
            #    shared database); the identical call through replica 2 is held again (an approval is used once), and
            #    refused.
            streamed = held("streamed")
            with httpx.Client(timeout=60) as session:
                cli: list[subprocess.CompletedProcess[str]] = []
                human = _approve_with_the_cli(db, tmp_path, "ops-2", cli)
                first = chat(session, replicas[0].url, streamed, stream=True)
                human.join(60)
                assert first.effect == "allow", first
                assert len(cli) == 1 and cli[0].returncode == 0, cli
                assert "approved" in cli[0].stdout and "by ops-2" in cli[0].stdout
                human = answer_first_pending(db, False, by="ops", timeout=30)
                again = chat(session, replicas[2].url, streamed, stream=True)
                human.join(60)
                assert again.effect == "deny" and "a human (ops) denied this call" in again.text, again

            # 2. Mixed load through all three; replica 1 is killed mid-load and restarted.
            sent: list[Sent] = []
            lock = threading.Lock()
            began = time.monotonic()
            with Operator(db, tmp_path) as operator:
                stop = threading.Event()
                threads = _drive(cluster, sent, lock, stop)
                time.sleep(KILL_AFTER)
                killed_at = time.monotonic()
                replicas[1].kill()
                cluster.restart(1)
                back_at = time.monotonic()
                time.sleep(
                    max(0.0, began + LOAD_SECONDS - time.monotonic(), back_at + AFTER_RESTART - time.monotonic())
                )
                stop.set()
                for thread in threads:
                    thread.join(120)
            assert not any(thread.is_alive() for thread in threads)
            pages = [httpx.get(f"{replica.admin_url}/metrics", timeout=10).text for replica in replicas]
            codes = cluster.stop()
        assert codes == [0, 0, 0], [replica.tail() for replica in replicas]
        verified = cluster.verify()
        assert verified.returncode == 0, verified.stdout + verified.stderr
        bodies, arguments = _records(db, origin)

    # What the clients saw: errors only from the killed replica while it was down; the rest are decisions.
    errors = [s for s in sent if s.answer.effect == "error"]
    assert all(s.replica == 1 and killed_at - 1 <= s.at <= back_at + 2 for s in errors), errors[:5]
    decided = [s for s in sent if s.answer.effect != "error"]
    by_replica = Counter(s.replica for s in decided)
    assert all(by_replica[i] >= 5 for i in range(3)), by_replica
    assert any(s.replica == 1 and s.at > back_at for s in decided), "the restarted replica served no decision"
    assert {s.kind for s in decided} == {"allow", "deny", "held"}
    assert not operator.failures or all("timeout" in f or "expired" in f for f in operator.failures), operator.failures

    # Every replica reports the same policy and the same (shared) approval queue on /metrics.
    digests = [set(re.findall(r'^aegis_policy_info\{digest="([0-9a-f]+)"\} 1$', page, re.MULTILINE)) for page in pages]
    assert len(digests[0]) == 1 and digests[0] == digests[1] == digests[2]
    pending = {re.search(r"^aegis_approvals_pending (\S+)$", page, re.MULTILINE).group(1) for page in pages}  # type: ignore[union-attr]
    assert len(pending) == 1
    assert all('aegis_decisions_total{effect="ask",cause="policy"}' in page for page in pages)

    # One chain, written by all three replicas (and the restarted one under the same name).
    assert [b["seq"] for b in bodies] == list(range(len(bodies)))
    assert {b["replica"] for b in bodies} >= {"replica-0", "replica-1", "replica-2"}

    # Every decision a client received has exactly one record saying the same.
    decisions: dict[str, list[dict[str, Any]]] = {}
    for body in bodies:
        if body["type"] == "decision" and body["seq"] in arguments:
            nonce = _nonce_of(arguments[body["seq"]])
            if nonce is not None:
                decisions.setdefault(nonce, []).append(body)
    resolutions = {
        b["ref_seq"]: b for b in bodies if b["type"] in ("approval", "timeout") and b.get("ref_seq") is not None
    }
    for s in decided:
        records = decisions.get(s.nonce, [])
        assert len(records) == 1, (s, records)
        record = records[0]
        if s.kind == "held":
            assert record["decision"] == "ask", (s, record)
            resolution = resolutions.get(record["seq"])
            assert resolution is not None and resolution["type"] == "approval", (s, resolution)
            assert resolution["decision"] == s.answer.effect, (s, resolution)
        else:
            assert record["decision"] == s.kind == s.answer.effect, (s, record)
    # And the streamed holds: the first approved by the CLI and recorded by replica 0, which held the stream; the
    # identical call a fresh ask on replica 2, refused.
    streamed_asks = [b for b in decisions.get("streamed", []) if b["decision"] == "ask"]
    assert len(streamed_asks) == 2
    approved = resolutions.get(streamed_asks[0]["seq"])
    assert approved is not None and (approved["decision"], approved["approver"]) == ("allow", "ops-2")
    assert approved["replica"] == "replica-0"
    refused = resolutions.get(streamed_asks[1]["seq"])
    assert refused is not None and (refused["decision"], refused["replica"]) == ("deny", "replica-2")
