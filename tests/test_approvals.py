"""Pending approvals on SQLite and PostgreSQL: states change once, by conditional UPDATE, even across processes."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import multiprocessing
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import rfc8785
import sqlalchemy as sa

from aegis_proxy.approvals import (
    HASH_DOMAIN,
    ID_LENGTH,
    Approval,
    ApprovalError,
    ApprovalStore,
    approvals,
    args_hash,
    normalise_id,
)
from tests.pg import PG_URL


class Clock:
    """Settable time, so expiry and the grace window are tested without sleeping."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


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
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tag() -> str:
    """Unique per test: sessions and arguments carry it, so tests sharing the PostgreSQL table never meet."""
    return uuid.uuid4().hex


@pytest.fixture
def store(db_url: str, clock: Clock, tag: str) -> Iterator[ApprovalStore]:
    approval_store = ApprovalStore(db_url, clock=clock, grace=60.0)
    yield approval_store
    with approval_store.engine.begin() as conn:
        conn.execute(sa.delete(approvals).where(approvals.c.tool.like(f"%{tag}%")))
    approval_store.close()


def pending(
    store: ApprovalStore,
    tag: str,
    *,
    n: int = 0,
    session: str | None = "s1",
    agent: str | None = "a1",
    timeout: float = 300.0,
    ask_seq: int | None = 7,
) -> Approval:
    tool = f"send_email_{tag}"
    return store.create(
        tool=tool,
        server=None,
        args_hash=args_hash(tool, None, {"to": "x@example.com", "n": n}),
        session_id=session,
        agent_id=agent,
        ask_seq=ask_seq,
        summary="send_email(to=x@example.com)",
        timeout=timeout,
    )


# -- the call's identity ---------------------------------------------------------------------------------------------


def test_args_hash_is_sha256_of_the_canonical_call() -> None:
    expected = hashlib.sha256(
        HASH_DOMAIN + rfc8785.dumps({"tool": "t", "server": "s", "arguments": {"a": 1, "b": [1, 2]}})
    ).hexdigest()
    assert args_hash("t", "s", {"b": [1, 2], "a": 1}) == expected  # key order does not matter


@pytest.mark.parametrize(
    ("tool", "server", "arguments"),
    [
        ("t2", "s", {"a": 1}),
        ("t", None, {"a": 1}),
        ("t", "s2", {"a": 1}),
        ("t", "s", {"a": 2}),
        ("t", "s", {"a": "1"}),
        ("t", "s", {"a": 1, "b": None}),
    ],
)
def test_args_hash_tells_calls_apart(tool: str, server: str | None, arguments: dict[str, object]) -> None:
    assert args_hash(tool, server, arguments) != args_hash("t", "s", {"a": 1})


@pytest.mark.parametrize("arguments", [{"n": 2**60}, {"n": float("inf")}, {"s": "\ud800"}])
def test_args_without_canonical_form_are_refused(arguments: dict[str, object]) -> None:
    with pytest.raises(ApprovalError, match="no canonical form"):
        args_hash("t", None, arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("typed", "expected"), [("abcdefgh23", "abcdefgh23"), (" ABCDEFGH23\n", "abcdefgh23"), ("AbCdEfGh23", "abcdefgh23")]
)
def test_ids_are_forgiving_about_case_and_space(typed: str, expected: str) -> None:
    assert normalise_id(typed) == expected


@pytest.mark.parametrize("typed", ["", "abc", "abcdefgh2301", "abcdefgh18", "abcdefgh2;", "abcdefgh2\u0430"])
def test_malformed_ids_are_refused(typed: str) -> None:
    with pytest.raises(ApprovalError, match="not an approval id"):
        normalise_id(typed)


# -- life cycle ------------------------------------------------------------------------------------------------------


def test_create_get_list(store: ApprovalStore, tag: str) -> None:
    first = pending(store, tag, n=1)
    second = pending(store, tag, n=2)
    assert len(first.id) == ID_LENGTH and first.id != second.id
    assert store.get(first.id.upper()) == first
    assert first.status == "pending" and first.expires_at == pytest.approx(first.created_at + 300.0)
    listed = [a.id for a in store.list() if tag in a.tool]
    assert set(listed) == {first.id, second.id}
    store.resolve(first.id, True, "alice")
    assert [a.id for a in store.list() if tag in a.tool] == [second.id]
    assert {a.id for a in store.list(include_all=True) if tag in a.tool} == {first.id, second.id}


@pytest.mark.parametrize(("approve", "status"), [(True, "approved"), (False, "denied")])
def test_resolve_once(store: ApprovalStore, tag: str, clock: Clock, approve: bool, status: str) -> None:
    approval = pending(store, tag)
    resolved = store.resolve(approval.id, approve, "alice")
    assert (resolved.status, resolved.resolver, resolved.resolved_at) == (status, "alice", clock.now)
    for again in (True, False):
        with pytest.raises(ApprovalError, match=f"it is {status} \\(by alice\\)"):
            store.resolve(approval.id, again, "bob")
    assert store.get(approval.id).resolver == "alice"


def test_resolve_after_expiry_is_refused(store: ApprovalStore, tag: str, clock: Clock) -> None:
    approval = pending(store, tag, timeout=10)
    clock.now += 11
    with pytest.raises(ApprovalError, match="expired"):
        store.resolve(approval.id, True, "alice")
    assert store.get(approval.id).status == "pending"  # the waiter or the sweeper records the timeout


@pytest.mark.parametrize(("name", "by"), [("unknown id", "alice"), ("empty approver", " "), ("control", "a\x1bb")])
def test_resolve_errors(store: ApprovalStore, tag: str, name: str, by: str) -> None:
    approval_id = "zzzzzzzzzz" if name == "unknown id" else pending(store, tag).id
    with pytest.raises(ApprovalError):
        store.resolve(approval_id, True, by)


def test_create_refuses_bad_values(store: ApprovalStore, tag: str) -> None:
    with pytest.raises(ApprovalError, match="timeout must be positive"):
        pending(store, tag, timeout=0)
    with pytest.raises(ApprovalError, match="hex SHA-256"):
        store.create(
            tool=tag, server=None, args_hash="abc", session_id=None, agent_id=None, ask_seq=1, summary="", timeout=1
        )


# -- consuming -------------------------------------------------------------------------------------------------------


def hash_of(tag: str, n: int = 0) -> str:
    tool = f"send_email_{tag}"
    return args_hash(tool, None, {"to": "x@example.com", "n": n})


@pytest.mark.parametrize(
    ("session", "agent", "n", "matches"),
    [
        ("s1", "a1", 0, True),
        ("s1", "other", 0, True),  # same session
        ("other", "a1", 0, True),  # same agent, new session
        ("other", "other", 0, False),  # someone else
        (None, None, 0, False),
        ("s1", "a1", 1, False),  # different arguments
    ],
)
def test_consume_approved_binds_hash_and_caller(
    store: ApprovalStore, tag: str, session: str | None, agent: str | None, n: int, matches: bool
) -> None:
    approval = pending(store, tag)
    store.resolve(approval.id, True, "alice")
    used = store.consume_approved(hash_of(tag, n), session_id=session, agent_id=agent)
    assert (used is not None) == matches
    if used is not None:
        assert used.id == approval.id and used.status == "consumed" and used.resolver == "alice"
        assert store.consume_approved(hash_of(tag, n), session_id=session, agent_id=agent) is None  # once only


def test_anonymous_calls_match_only_anonymous_approvals(store: ApprovalStore, tag: str) -> None:
    approval = pending(store, tag, session=None, agent=None)
    store.resolve(approval.id, True, "alice")
    assert store.consume_approved(hash_of(tag), session_id="s1", agent_id="a1") is None
    assert store.consume_approved(hash_of(tag), session_id=None, agent_id=None) is not None


@pytest.mark.parametrize("state", ["pending", "denied", "timeout", "stale"])
def test_only_fresh_approvals_are_consumed(store: ApprovalStore, tag: str, clock: Clock, state: str) -> None:
    approval = pending(store, tag)
    if state == "denied":
        store.resolve(approval.id, False, "alice")
    elif state == "timeout":
        assert store.time_out(approval.id) is not None
    elif state == "stale":
        store.resolve(approval.id, True, "alice")
        clock.now += 61  # grace is 60 s
    assert store.consume_approved(hash_of(tag), session_id="s1", agent_id="a1") is None
    assert store.consume(approval.id) is None


def test_consume_by_id_is_once(store: ApprovalStore, tag: str) -> None:
    approval = pending(store, tag)
    store.resolve(approval.id, True, "alice")
    assert store.consume(approval.id) is not None
    assert store.consume(approval.id) is None
    assert store.consume_approved(hash_of(tag), session_id="s1", agent_id="a1") is None


def test_two_approvals_of_one_call_are_two_uses(store: ApprovalStore, tag: str) -> None:
    for _ in range(2):
        store.resolve(pending(store, tag).id, True, "alice")
    assert store.consume_approved(hash_of(tag), session_id="s1", agent_id="a1") is not None
    assert store.consume_approved(hash_of(tag), session_id="s1", agent_id="a1") is not None
    assert store.consume_approved(hash_of(tag), session_id="s1", agent_id="a1") is None


# -- waiting and timing out ------------------------------------------------------------------------------------------


def test_wait_sync_sees_a_resolution_from_another_thread(store: ApprovalStore, tag: str) -> None:
    approval = pending(store, tag)
    timer = threading.Timer(0.2, store.resolve, args=(approval.id, True, "alice"))
    timer.start()
    started = time.monotonic()
    final = store.wait_sync(approval.id, 10, poll=0.02)
    timer.join()
    assert final.status == "approved" and time.monotonic() - started < 5


def test_async_wait_does_not_block_the_loop(store: ApprovalStore, tag: str) -> None:
    approval = pending(store, tag)
    ticks: list[float] = []

    async def ticker() -> None:
        for _ in range(10):
            ticks.append(time.monotonic())
            await asyncio.sleep(0.02)

    async def main() -> Approval:
        resolver = asyncio.get_running_loop().call_later(0.15, store.resolve, approval.id, False, "bob")
        waited, _ = await asyncio.gather(store.wait(approval.id, 10, poll=0.02), ticker())
        resolver.cancel()
        return waited

    final = asyncio.run(main())
    assert final.status == "denied" and final.resolver == "bob"
    assert len(ticks) == 10 and max(b - a for a, b in itertools.pairwise(ticks)) < 0.5


def test_wait_returns_pending_at_its_deadline_and_time_out_moves_it_once(store: ApprovalStore, tag: str) -> None:
    approval = pending(store, tag)
    assert store.wait_sync(approval.id, 0.05, poll=0.01).status == "pending"
    assert asyncio.run(store.wait(approval.id, 0.05, poll=0.01)).status == "pending"
    moved = store.time_out(approval.id)
    assert moved is not None and moved.status == "timeout"
    assert store.time_out(approval.id) is None
    with pytest.raises(ApprovalError, match="it is timeout"):
        store.resolve(approval.id, True, "alice")


def test_time_out_loses_to_an_earlier_resolution(store: ApprovalStore, tag: str) -> None:
    approval = pending(store, tag)
    store.resolve(approval.id, True, "alice")
    assert store.time_out(approval.id) is None
    assert store.get(approval.id).status == "approved"


def test_expire_moves_overdue_pending_approvals_exactly_once(store: ApprovalStore, tag: str, clock: Clock) -> None:
    short = pending(store, tag, n=1, timeout=10)
    long = pending(store, tag, n=2, timeout=100)
    resolved = pending(store, tag, n=3, timeout=10)
    store.resolve(resolved.id, True, "alice")
    clock.now += 12
    assert [a.id for a in store.expire(older_than=5) if tag in a.tool] == []  # only 2 s overdue
    clock.now += 5
    moved = [a for a in store.expire(older_than=5) if tag in a.tool]
    assert [(a.id, a.status) for a in moved] == [(short.id, "timeout")]
    assert [a for a in store.expire() if tag in a.tool] == []
    assert store.get(long.id).status == "pending" and store.get(resolved.id).status == "approved"


def test_database_failures_are_approval_errors(tmp_path: Path) -> None:
    store = ApprovalStore(f"sqlite:///{tmp_path / 'a.db'}")
    with store.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE approvals"))
    with pytest.raises(ApprovalError, match="cannot store the approval"):
        store.create(
            tool="t", server=None, args_hash="0" * 64, session_id=None, agent_id=None, ask_seq=1, summary="", timeout=1
        )
    with pytest.raises(ApprovalError, match="cannot read approvals"):
        store.consume_approved("0" * 64, session_id="s", agent_id=None)
    store.close()
    with pytest.raises(ApprovalError, match="cannot open the approvals database"):
        ApprovalStore("postgresql+psycopg2://postgres@127.0.0.1:1/none")


# -- processes racing ------------------------------------------------------------------------------------------------


def _race_consume(url: str, digest: str, start: float, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    store = ApprovalStore(url)
    time.sleep(max(0.0, start - time.time()))
    try:
        won = store.consume_approved(digest, session_id="s1", agent_id="a1")
        results.put("won" if won is not None else "lost")
    except Exception as error:  # reported, not swallowed: the test fails on it
        results.put(f"error {error!r}")
    finally:
        store.close()


def _race_resolve(url: str, approval_id: str, approve: bool, start: float, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    store = ApprovalStore(url)
    time.sleep(max(0.0, start - time.time()))
    try:
        store.resolve(approval_id, approve, "approver" if approve else "denier")
        results.put("won")
    except ApprovalError:
        results.put("lost")
    except Exception as error:
        results.put(f"error {error!r}")
    finally:
        store.close()


@pytest.mark.parametrize("rounds", [3])
def test_processes_racing_to_consume_one_approval(db_url: str, tag: str, rounds: int) -> None:
    ctx = multiprocessing.get_context("spawn")
    store = ApprovalStore(db_url)
    try:
        for round_number in range(rounds):
            approval = pending(store, tag, n=round_number)
            store.resolve(approval.id, True, "alice")
            results = ctx.Queue()
            start = time.time() + 1.5  # every process is up before the shot
            procs = [
                ctx.Process(target=_race_consume, args=(db_url, hash_of(tag, round_number), start, results))
                for _ in range(4)
            ]
            for proc in procs:
                proc.start()
            outcomes = sorted(results.get(timeout=60) for _ in procs)
            for proc in procs:
                proc.join(30)
            assert outcomes == ["lost", "lost", "lost", "won"], outcomes
            assert store.get(approval.id).status == "consumed"
    finally:
        with store.engine.begin() as conn:
            conn.execute(sa.delete(approvals).where(approvals.c.tool.like(f"%{tag}%")))
        store.close()


def test_processes_racing_to_approve_and_deny(db_url: str, tag: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    store = ApprovalStore(db_url)
    try:
        approval = pending(store, tag)
        results = ctx.Queue()
        start = time.time() + 1.5
        procs = [
            ctx.Process(target=_race_resolve, args=(db_url, approval.id, approve, start, results))
            for approve in (True, False, True, False)
        ]
        for proc in procs:
            proc.start()
        outcomes = sorted(results.get(timeout=60) for _ in procs)
        for proc in procs:
            proc.join(30)
        assert outcomes == ["lost", "lost", "lost", "won"], outcomes
        final = store.get(approval.id)
        assert (final.status, final.resolver) in {("approved", "approver"), ("denied", "denier")}
    finally:
        with store.engine.begin() as conn:
            conn.execute(sa.delete(approvals).where(approvals.c.tool.like(f"%{tag}%")))
        store.close()


# -- the command line ------------------------------------------------------------------------------------------------


def test_cli_list_approve_deny(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from aegis_proxy.cli import main

    url = f"sqlite:///{tmp_path / 'audit.db'}"
    store = ApprovalStore(url)
    first = pending(store, "cli", n=1)
    second = pending(store, "cli", n=2)
    assert main(["approvals", "list", "--db", url]) == 0
    listing = capsys.readouterr().out
    assert first.id in listing and second.id in listing and "expires in" in listing
    assert main(["approvals", "approve", first.id.upper(), "--by", "alice", "--db", url]) == 0
    assert f"approved {first.id} by alice" in capsys.readouterr().out
    assert main(["approvals", "deny", second.id, "--db", url]) == 0  # --by defaults to the login name
    assert main(["approvals", "approve", second.id, "--db", url]) == 2
    assert "it is denied" in capsys.readouterr().err
    assert main(["approvals", "list", "--db", url]) == 0
    assert "0 pending approvals" in capsys.readouterr().out
    assert main(["approvals", "list", "--all", "--json", "--db", url]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line]
    statuses = {item["id"]: item["status"] for item in map(json.loads, lines)}
    assert statuses == {first.id: "approved", second.id: "denied"}
    assert main(["approvals", "deny", "not-an-id", "--db", url]) == 2
    store.close()


def test_cli_db_defaults_from_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from aegis_proxy.cli import main

    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    (tmp_path / "aegis.toml").write_text(f'[audit]\ndb = "{url}"\n')
    approval = pending(ApprovalStore(url), "cfg")
    assert main(["approvals", "list"]) == 0  # ./aegis.toml names the database
    assert approval.id in capsys.readouterr().out
    other = tmp_path / "other.toml"
    other.write_text(f'[audit]\ndb = "sqlite:///{tmp_path / "empty.db"}"\n')
    assert main(["approvals", "list", "--config", str(other)]) == 0
    assert approval.id not in capsys.readouterr().out
    assert main(["approvals", "approve", approval.id, "--by", "bob", "--config", str(other), "--db", url]) == 0
    (tmp_path / "aegis.toml").write_text('fail_mode = "open"\n')
    assert main(["approvals", "list"]) == 2  # a config asking to fail open is refused, for every command
    assert "fails open" in capsys.readouterr().err
