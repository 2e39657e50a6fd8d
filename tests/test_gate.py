"""The Gate: decide, audit durably, hold for approval; every failure point denies (fail closed)."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from aegis_proxy import provenance
from aegis_proxy.approvals import ApprovalStore, approvals, args_hash
from aegis_proxy.audit.keys import TrustedKey, key_id
from aegis_proxy.audit.record import RecordBody, parse_body
from aegis_proxy.audit.store import audit_arguments, audit_head, audit_records
from aegis_proxy.audit.verify import verify_chain
from aegis_proxy.config import AegisConfig, load_config, open_signing_key
from aegis_proxy.decide import Evidence, Verdict
from aegis_proxy.firewall import Firewall
from aegis_proxy.gate import FAIL_CLOSED_RULE, INLINE_MAX_CHARS, Gate, GateOutcome, redact_arguments
from aegis_proxy.models import CallContext, Decision, Finding, Message, Role, Severity, ToolCall
from tests.pg import PG_URL

POLICY = """default allow
rule hold-writes: ask write_file priority 10
  message "writes need a human"
rule no-deletes: deny delete_file priority 10
"""
TOKEN = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def make_config(tmp_path: Path, db: str | None = None, **overrides: object) -> AegisConfig:
    policy = tmp_path / "policy.aegis"
    if not policy.exists():
        policy.write_text(POLICY)
    values: dict[str, object] = {
        "data_dir": str(tmp_path / "state"),
        "policies": [str(policy)],
        "audit.origin": f"test/{uuid.uuid4().hex}",
        "approval_timeout": 30.0,
    }
    if db is not None:
        values["audit.db"] = db
    values.update(overrides)
    return load_config(None, values)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str | None:
    if request.param == "sqlite":
        return None  # the default: sqlite under the data dir
    try:
        sa.create_engine(PG_URL).connect().close()
    except sa.exc.OperationalError as error:
        pytest.fail(f"PostgreSQL at {PG_URL} is unreachable (these tests must run on it): {error}")
    return PG_URL


@pytest.fixture
def config(tmp_path: Path, db_url: str | None, monkeypatch: pytest.MonkeyPatch) -> AegisConfig:
    monkeypatch.chdir(tmp_path)
    return make_config(tmp_path, db_url)


@pytest.fixture
def gate(config: AegisConfig) -> Iterator[Gate]:
    opened = Gate.from_config(config)
    yield opened
    engine = opened.writer.store.engine
    origin = opened.writer.store.origin
    opened.close()
    if config.audit.db.startswith("postgresql"):
        with engine.begin() as conn:
            for table in (audit_records, audit_head, audit_arguments):
                conn.execute(sa.delete(table).where(table.c.origin == origin))
            conn.execute(sa.delete(approvals).where(approvals.c.session_id.like(f"{origin}%")))
        engine.dispose()


def ctx(gate: Gate, suffix: str = "") -> CallContext:
    """A session unique to this test (the PostgreSQL approvals table is shared between tests)."""
    return CallContext(session_id=f"{gate.writer.store.origin}/s{suffix}", agent_id=f"{gate.writer.store.origin}/a")


def records(gate: Gate) -> dict[int, RecordBody]:
    return {r.seq: parse_body(r.record.body_bytes) for r in gate.writer.store.iter_records()}


def record_of(gate: Gate, outcome: GateOutcome) -> RecordBody:
    """The outcome's record, durable when the outcome was returned: at its seq, or, for a decision made durable as a
    staged row first (SQLite: audit/FORMAT.md section 9), once the writer has chained it."""
    if outcome.audit_seq is not None:
        return records(gate)[outcome.audit_seq]
    assert outcome.audit_staged is not None
    deadline = time.monotonic() + 10
    while gate.writer.store.staged()[0]:
        assert time.monotonic() < deadline, "the staged decision was not chained"
        time.sleep(0.01)
    [body] = [b for b in records(gate).values() if b.type == "decision" and b.request_id == outcome.request_id]
    return body


def stored_arguments(gate: Gate, seq: int) -> Any:
    store = gate.writer.store
    with store.engine.connect() as conn:
        row = conn.execute(
            sa.select(audit_arguments.c.arguments).where(
                audit_arguments.c.origin == store.origin, audit_arguments.c.seq == seq
            )
        ).one()
    return json.loads(bytes(row.arguments))


def verify(gate: Gate, config: AegisConfig) -> None:
    public = open_signing_key(config).public_key()
    verify_chain(gate.writer.store, {key_id(public): TrustedKey(key_id(public), public, 0)})


def call(tool: str, n: int = 0, **arguments: Any) -> ToolCall:
    return ToolCall(id=f"c{n}", tool=tool, arguments=arguments or {"path": f"notes/{n}.txt"})


# -- the three effects ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "effect", "rule"), [("read_file", "allow", "default"), ("delete_file", "deny", "no-deletes")]
)
def test_effects_are_audited_before_returning(
    gate: Gate, config: AegisConfig, tool: str, effect: str, rule: str
) -> None:
    outcome = gate.decide(call(tool), ctx(gate), request_id="req-1")
    assert (outcome.effect, outcome.cause, outcome.approval_id) == (effect, "policy", None)
    body = records(gate)[outcome.audit_seq]  # durable: a fresh read finds it
    assert (body.type, body.decision, body.tool, body.rules) == ("decision", effect, tool, (rule,))
    assert (body.request_id, body.session_id) == ("req-1", ctx(gate).session_id)
    assert body.policy_digest == gate.policy_digest and body.args_commit is not None
    assert body.latency_us > 0 and body.scores["risk"] == round(outcome.decision.risk * 1_000_000)
    assert stored_arguments(gate, outcome.audit_seq) == {"path": "notes/0.txt"}
    assert (outcome.message == "") == (effect == "allow")
    verify(gate, config)


def test_ask_creates_a_pending_approval_bound_to_the_call(gate: Gate) -> None:
    the_call = call("write_file", content="hello")
    outcome = gate.decide(the_call, ctx(gate))
    assert outcome.effect == "ask" and outcome.approval_id is not None
    assert outcome.ask_seq == outcome.audit_seq and records(gate)[outcome.audit_seq].decision == "ask"
    assert f"aegis approvals approve {outcome.approval_id}" in outcome.message
    assert "writes need a human" in outcome.message
    pending = gate.approvals.get(outcome.approval_id)
    assert pending.status == "pending" and pending.ask_seq == outcome.audit_seq
    assert pending.args_hash == args_hash("write_file", None, the_call.arguments)
    assert pending.summary.startswith("write_file(") and pending.session_id == ctx(gate).session_id


def test_an_approved_identical_call_passes_once(gate: Gate, config: AegisConfig) -> None:
    the_call = call("write_file", content="x")
    asked = gate.decide(the_call, ctx(gate))
    assert asked.approval_id is not None
    gate.approvals.resolve(asked.approval_id, True, "alice")
    other = gate.decide(call("write_file", content="y"), ctx(gate))  # different arguments: not covered
    assert other.effect == "ask"
    passed = gate.decide(the_call, ctx(gate, ""))
    assert (passed.effect, passed.cause, passed.approval_id, passed.ask_seq) == (
        "allow",
        "approval",
        asked.approval_id,
        asked.audit_seq,
    )
    body = records(gate)[passed.audit_seq]
    assert (body.type, body.decision, body.approver, body.ref_seq) == ("approval", "allow", "alice", asked.audit_seq)
    again = gate.decide(the_call, ctx(gate))
    assert again.effect == "ask" and again.approval_id not in (None, asked.approval_id)  # used up
    verify(gate, config)


def test_an_approval_is_bound_to_the_caller(gate: Gate) -> None:
    the_call = call("write_file", content="x")
    asked = gate.decide(the_call, ctx(gate))
    assert asked.approval_id is not None
    gate.approvals.resolve(asked.approval_id, True, "alice")
    stranger = CallContext(session_id=f"{gate.writer.store.origin}/other", agent_id=f"{gate.writer.store.origin}/b")
    assert gate.decide(the_call, stranger).effect == "ask"


# -- holding a flow ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("approve", "effect", "cause"), [(True, "allow", "approved"), (False, "deny", "rejected")])
def test_await_approval_outcomes(gate: Gate, config: AegisConfig, approve: bool, effect: str, cause: str) -> None:
    asked = gate.decide(call("write_file"), ctx(gate), request_id="held-1")
    assert asked.approval_id is not None
    timer = threading.Timer(0.3, gate.approvals.resolve, args=(asked.approval_id, approve, "alice"))
    timer.start()
    final = asyncio.run(gate.await_approval(asked, 10))
    timer.join()
    assert (final.effect, final.cause, final.approval_id, final.ask_seq) == (
        effect,
        cause,
        asked.approval_id,
        asked.audit_seq,
    )
    body = records(gate)[final.audit_seq]
    assert (body.type, body.decision, body.approver, body.ref_seq, body.request_id) == (
        "approval",
        effect,
        "alice",
        asked.audit_seq,
        "held-1",
    )
    expected_status = "consumed" if approve else "denied"
    assert gate.approvals.get(asked.approval_id).status == expected_status
    if not approve:
        assert "alice" in final.message
    verify(gate, config)


def test_await_approval_timeout_is_its_own_outcome(gate: Gate, config: AegisConfig) -> None:
    asked = gate.decide(call("write_file"), ctx(gate))
    final = asyncio.run(gate.await_approval(asked, 0.2))
    assert (final.effect, final.cause) == ("deny", "timeout")
    assert "timed out" in final.message
    body = records(gate)[final.audit_seq]
    assert (body.type, body.decision, body.approver, body.ref_seq) == ("timeout", None, None, asked.audit_seq)
    assert gate.approvals.get(asked.approval_id or "").status == "timeout"
    verify(gate, config)


def test_await_approval_passes_other_outcomes_through(gate: Gate) -> None:
    allowed = gate.decide(call("read_file"), ctx(gate))
    assert asyncio.run(gate.await_approval(allowed, 1)) is allowed


def test_held_flows_wait_concurrently(gate: Gate) -> None:
    asks = [gate.decide(call("write_file", n), ctx(gate)) for n in range(3)]

    async def main() -> list[GateOutcome]:
        loop = asyncio.get_running_loop()
        for ask in asks:
            loop.call_later(0.3, gate.approvals.resolve, ask.approval_id, True, "alice")
        return await asyncio.gather(*(gate.await_approval(ask, 10) for ask in asks))

    started = time.monotonic()
    finals = asyncio.run(main())
    assert [f.effect for f in finals] == ["allow"] * 3, [f.message for f in finals]
    assert time.monotonic() - started < 3  # in parallel, not one after another


def test_sweeper_times_out_unwatched_asks_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    gate = Gate.from_config(make_config(tmp_path))
    clock = Clock()
    gate.approvals = ApprovalStore(gate.writer.store.engine, clock=clock)
    try:
        asked = gate.decide(call("write_file"), ctx(gate))  # nobody waits for it (as when its replica died)
        assert gate.sweep_expired() == 0
        clock.now += 30 + 6  # past the timeout and the sweeper's margin
        assert gate.sweep_expired() == 1
        assert gate.sweep_expired() == 0
        timeouts = [b for b in records(gate).values() if b.type == "timeout"]
        assert [(b.ref_seq, b.tool) for b in timeouts] == [(asked.audit_seq, "write_file")]
    finally:
        gate.close()


# -- redaction --------------------------------------------------------------------------------------------------------


def test_secrets_never_reach_the_audit_log(gate: Gate) -> None:
    hidden = base64.b64encode(f"token={TOKEN}".encode()).decode()
    the_call = ToolCall(
        id="s", tool="send_email", arguments={"to": "a@example.com", "body": f"use {TOKEN}", "x": {"blob": hidden}}
    )
    outcome = gate.decide(the_call, ctx(gate))
    stored = json.dumps(stored_arguments(gate, outcome.audit_seq))
    assert TOKEN not in stored and hidden not in stored
    assert "[REDACTED:" in stored and "a@example.com" in stored
    body = records(gate)[outcome.audit_seq]
    assert TOKEN not in body.model_dump_json() and any(f.category.startswith("secrets.") for f in body.findings)


@pytest.mark.parametrize(
    ("arguments", "findings", "expected"),
    [
        ({"a": "plain"}, [], {"a": "plain"}),
        ({"a": [1, True, None, "x"]}, [], {"a": [1, True, None, "x"]}),
        # a finding the redactor cannot see in the raw text: the whole string goes
        ({"a": "aGlkZGVu", "b": "keep"}, [("args.a", ("base64",))], {"a": "[REDACTED:secret:…]", "b": "keep"}),
        # the decoded path goes deeper than the value: its longest existing prefix goes
        ({"p": '{"k": "v"}', "q": 1}, [("args.p.k", ("json",))], {"p": "[REDACTED:secret:…]", "q": 1}),
        ({"l": ["a", "b"]}, [("args.l", ("join",))], {"l": "[REDACTED:secret:…]"}),
        ({"odd key!": "v"}, [('args["odd key!"]', ())], {"odd key!": "[REDACTED:secret:…]"}),
        # a secret that cannot be placed: nothing of the arguments is kept
        ({"a": "x"}, [("elsewhere.z", ())], {"redacted": "[REDACTED:unlocated:…]"}),
    ],
)
def test_redact_arguments(arguments: Any, findings: list[tuple[str, tuple[str, ...]]], expected: Any) -> None:
    found = [
        Finding(scanner="secrets", category="secrets.token", severity=Severity.HIGH, path=p, chain=c, message="m")
        for p, c in findings
    ]
    assert redact_arguments(arguments, found) == expected


def test_redaction_keeps_both_values_when_keys_collide() -> None:
    other = "ghp_" + "Z9y8X7w6V5u4T3s2R1q0P9o8N7m6L5k4J3i2"
    redacted = redact_arguments({TOKEN: 1, other: 2}, [])
    assert isinstance(redacted, dict) and sorted(redacted.values()) == [1, 2]
    assert not any(TOKEN in key or other in key for key in redacted)


# -- policy reloads and other records ---------------------------------------------------------------------------------


def test_policy_reloads_are_audited(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = make_config(tmp_path, policy_reload_interval=3600.0)  # the test polls by hand
    with Gate.from_config(config) as gate:
        _check_reloads(gate, config)


def _check_reloads(gate: Gate, config: AegisConfig) -> None:
    first = gate.policy_digest
    policy = config.policies[0]
    policy.write_text(POLICY + "rule no-moves: deny move_file priority 10\n")
    assert gate.watcher is not None and gate.watcher.poll() is not None
    assert gate.decide(call("move_file"), ctx(gate)).effect == "deny"
    policy.write_text("this is not a policy\n")
    assert gate.watcher.poll() is not None
    reloads = [(b.rules, b.policy_digest) for b in records(gate).values() if b.type == "policy_reload"]
    assert reloads == [
        (("policy.loaded",), first),
        (("policy.reload",), gate.policy_digest),
        (("policy.reload-failed",), gate.policy_digest),  # the last good set stays in force
    ]
    assert gate.policy_digest != first
    verify(gate, config)


def test_record_failure_writes_a_deny(gate: Gate) -> None:
    seq = gate.record_failure(request_id="r9", context=ctx(gate), where="response", error=f"bad json near {TOKEN}")
    assert seq is not None
    body = records(gate)[seq]
    assert (body.type, body.decision, body.rules, body.request_id) == ("decision", "deny", (FAIL_CLOSED_RULE,), "r9")
    assert TOKEN not in json.dumps(stored_arguments(gate, seq))


class ThreadNotingFirewall(Firewall):
    """The real firewall, noting the thread that judged each call (the event loop's own, or a worker's)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.threads: list[int] = []

    def check(self, call: ToolCall, context: CallContext | None = None) -> Decision:
        self.threads.append(threading.get_ident())
        return super().check(call, context)


def decide_on_a_loop(gate: Gate, the_call: ToolCall, context: CallContext) -> tuple[GateOutcome, int]:
    """decide_async on a fresh event loop; the outcome and the loop's thread."""

    async def run() -> tuple[GateOutcome, int]:
        return await gate.decide_async(the_call, context, request_id="req-a"), threading.get_ident()

    return asyncio.run(run())


@pytest.mark.parametrize(
    ("size", "on_the_loop"),
    [
        ("small, wire size known", True),
        ("wire size unknown", False),
        ("long conversation", False),
        ("long conversation, seen on an earlier call", True),
    ],
)
@pytest.mark.parametrize(("tool", "effect"), [("read_file", "allow"), ("delete_file", "deny"), ("write_file", "ask")])
def test_decide_async_judges_small_calls_on_the_loop(
    gate: Gate, config: AegisConfig, size: str, on_the_loop: bool, tool: str, effect: str
) -> None:
    """Small calls are judged on the event loop (no thread hand-off), others in a worker; either way the outcome is
    decide's, and its record is durable when the outcome is returned."""
    gate.firewall = ThreadNotingFirewall(decider=gate.firewall.decider)
    the_call, context = call(tool), ctx(gate)
    if size != "wire size unknown":
        the_call = the_call.model_copy(update={"raw_size": len(json.dumps(the_call.arguments))})
    if size.startswith("long conversation"):
        # New text for every case: what provenance has seen before costs it only substring searches.
        long_text = f"{size} {tool} {uuid.uuid4()} " + "words " * (INLINE_MAX_CHARS // 6 + 1)
        messages = (Message(role=Role.USER, content=long_text), Message(role=Role.TOOL, content=long_text[::-1]))
        context = context.model_copy(update={"messages": messages})
        if size.endswith("earlier call"):
            provenance.trace([], context)  # what an earlier call in the session leaves behind
    outcome, loop_thread = decide_on_a_loop(gate, the_call, context)
    assert (gate.firewall.threads == [loop_thread]) is on_the_loop
    assert (outcome.effect, outcome.cause) == (effect, "policy")
    body = record_of(gate, outcome)
    assert (body.type, body.decision, body.tool, body.request_id) == ("decision", effect, tool, "req-a")
    if effect == "ask":
        assert outcome.approval_id is not None and gate.approvals.get(outcome.approval_id).ask_seq == body.seq
    verify(gate, config)


# -- fail closed at every point ---------------------------------------------------------------------------------------


class BrokenDecider:
    """A decider returning an effect that does not exist: Firewall.check raises while building its Decision."""

    def decide(self, evidence: Evidence) -> Verdict:
        return Verdict(effect="maybe", rules=("x",), reasons=())  # type: ignore[arg-type]


def test_firewall_failure_denies_and_is_audited(gate: Gate) -> None:
    gate.firewall = Firewall(decider=BrokenDecider())
    outcome = gate.decide(call("read_file"), ctx(gate))
    assert (outcome.effect, outcome.cause) == ("deny", "error")
    assert outcome.decision.rules == (FAIL_CLOSED_RULE,) and "firewall" in outcome.decision.reasons[0]
    body = records(gate)[outcome.audit_seq]
    assert (body.decision, body.rules) == ("deny", (FAIL_CLOSED_RULE,))


def assert_denied_unaudited(gate: Gate) -> None:
    for tool in ("read_file", "write_file", "delete_file"):
        outcome = gate.decide(call(tool), ctx(gate))
        assert (outcome.effect, outcome.cause, outcome.audit_seq) == ("deny", "error", None), tool
        assert "audit log" in outcome.message
    assert [a for a in gate.approvals.list() if a.session_id == ctx(gate).session_id] == []  # no ask without a record


@pytest.mark.parametrize("how", ["head row gone", "writer closed"])
def test_audit_log_down_denies(gate: Gate, how: str) -> None:
    store = gate.writer.store
    if how == "writer closed":
        gate.writer.close()
    else:
        with store.engine.begin() as conn:
            conn.execute(sa.delete(audit_head).where(audit_head.c.origin == store.origin))
    assert_denied_unaudited(gate)


def test_audit_tables_gone_denies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with Gate.from_config(make_config(tmp_path)) as gate:  # SQLite only: the PostgreSQL tables are shared
        with gate.writer.store.engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE audit_arguments"))
        assert_denied_unaudited(gate)


def test_approvals_database_down_denies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    gate = Gate.from_config(make_config(tmp_path))
    try:
        with gate.writer.store.engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE approvals"))
        held = gate.decide(call("write_file"), ctx(gate))
        assert (held.effect, held.cause) == ("deny", "error") and "approvals" in held.decision.reasons[0]
        kinds = [(b.type, b.decision, b.rules) for b in records(gate).values()]
        assert kinds == [("decision", "deny", (FAIL_CLOSED_RULE,))]  # the failure is on record; no ask without one
        assert gate.decide(call("read_file"), ctx(gate)).effect == "allow"  # calls that need no approval go on
        stale = GateOutcome("ask", held.decision, approval_id="abcdefghij", audit_seq=0, ask_seq=0)
        waited = asyncio.run(gate.await_approval(stale, 1))
        assert (waited.effect, waited.cause) == ("deny", "error")
    finally:
        gate.close()


@pytest.mark.parametrize("failure", ["firewall", "audit log", "approvals"])
def test_decide_async_on_the_loop_fails_closed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: str) -> None:
    monkeypatch.chdir(tmp_path)
    with Gate.from_config(make_config(tmp_path)) as gate:  # SQLite only: the PostgreSQL tables are shared
        tool = "write_file" if failure == "approvals" else "read_file"
        the_call = call(tool).model_copy(update={"raw_size": 30})  # small: judged on the loop
        if failure == "firewall":
            gate.firewall = Firewall(decider=BrokenDecider())
        elif failure == "audit log":
            gate.writer.close()
        else:
            with gate.writer.store.engine.begin() as conn:
                conn.execute(sa.text("DROP TABLE approvals"))
        outcome, _ = decide_on_a_loop(gate, the_call, ctx(gate))
        assert (outcome.effect, outcome.cause) == ("deny", "error")
        assert outcome.decision.rules == (FAIL_CLOSED_RULE,)
        if failure == "audit log":
            assert outcome.audit_seq is None and "audit log" in outcome.message  # nothing to write it to
            return
        assert failure in outcome.decision.reasons[0]
        body = records(gate)[outcome.audit_seq]  # the failure is on record
        assert (body.decision, body.rules) == ("deny", (FAIL_CLOSED_RULE,))


def test_outcome_audit_failure_denies_an_approved_call(gate: Gate) -> None:
    asked = gate.decide(call("write_file"), ctx(gate))
    assert asked.approval_id is not None
    gate.approvals.resolve(asked.approval_id, True, "alice")
    gate.writer.close()  # the log goes away between the ask and the answer
    final = asyncio.run(gate.await_approval(asked, 5))
    assert (final.effect, final.cause, final.audit_seq) == ("deny", "error", None)


@pytest.mark.parametrize(
    "bad",
    [
        ToolCall(id="big", tool="read_file", arguments={"n": 2**60}),  # no canonical form: no hash, no record
        ToolCall(id="ctl", tool="read\x1bfile", arguments={}),  # the record schema refuses the tool name
        None,  # not even a call
    ],
)
def test_malformed_calls_deny_without_raising(gate: Gate, bad: ToolCall | None) -> None:
    outcome = gate.decide(bad, ctx(gate))  # type: ignore[arg-type]
    assert (outcome.effect, outcome.cause) == ("deny", "error")


def test_unbounded_session_ids_deny(gate: Gate) -> None:
    outcome = gate.decide(call("read_file"), CallContext(session_id="s" * 1000))
    assert (outcome.effect, outcome.cause) == ("deny", "error")


def test_approval_summaries_are_redacted(gate: Gate) -> None:
    outcome = gate.decide(call("write_file", path="notes.txt", content=f"token {TOKEN}"), ctx(gate))
    assert outcome.effect == "ask" and outcome.approval_id is not None
    summary = gate.approvals.get(outcome.approval_id).summary
    assert TOKEN not in summary and "[REDACTED:" in summary and summary.startswith("write_file(")


def test_probe_off_by_default_and_an_unloadable_probe_runs_switched_off(tmp_path: Path) -> None:
    from aegis_proxy.gate import open_probe

    assert open_probe(load_config(None, {"data_dir": str(tmp_path)})) is None
    missing = load_config(None, {"data_dir": str(tmp_path), "probe.backbone": str(tmp_path / "no-such-model")})
    scorer = open_probe(missing)
    assert scorer is not None and not scorer.ready
    call = ToolCall(id="1", tool="read_file", arguments={"path": "README.md"})
    assert scorer.score_call(call, CallContext()) == {"risk": None, "injection": None}
    with Gate.from_config(missing) as gate:
        outcome = gate.decide(call, CallContext())
    assert outcome.effect == "allow"  # the default policy does not need the probe's scores
    assert outcome.decision.scores == {"risk": None, "injection": None}


@pytest.mark.parametrize(
    ("precision", "ready", "runs"),
    [("fp32", True, "fp32"), ("int8", False, None)],  # the shipped call-risk head's card refuses int8
    ids=["fp32", "int8-refused"],
)
def test_probe_precision_from_the_config_reaches_the_scorer(
    tmp_path: Path, precision: str, ready: bool, runs: str | None
) -> None:
    from aegis_proxy.gate import open_probe

    config = load_config(None, {"data_dir": str(tmp_path), "probe.backbone": "minilm", "probe.precision": precision})
    scorer = open_probe(config)
    assert scorer is not None
    try:
        assert (scorer.ready, scorer.precision) == (ready, runs)
        if not ready:
            assert "int8" in scorer.status
    finally:
        scorer.close()


class FailingProbe:
    """A probe whose every method raises: the firewall fails closed on score_call; prefetch is only a hint."""

    def score_call(self, call: ToolCall, context: CallContext) -> dict[str, float | None]:
        raise RuntimeError("probe down")

    def prefetch(self, context: CallContext) -> None:
        raise RuntimeError("probe down")


def test_prefetch_without_a_probe_is_a_no_op(gate: Gate, tmp_path: Path) -> None:
    from aegis_proxy.gate import open_probe

    context = ctx(gate).model_copy(update={"messages": (Message(role=Role.TOOL, content="a tool result"),)})
    assert gate.firewall.scorer is None
    before = records(gate)
    assert gate.prefetch(context) is None
    off = open_probe(load_config(None, {"data_dir": str(tmp_path), "probe.backbone": str(tmp_path / "none")}))
    assert off is not None and not off.ready  # configured but unable to load: prefetch does nothing either
    gate.firewall = Firewall(scorer=off)
    assert gate.prefetch(context) is None
    assert records(gate) == before  # a prefetch decides nothing and writes nothing


def test_prefetch_with_a_failing_probe_never_raises(gate: Gate, caplog: pytest.LogCaptureFixture) -> None:
    context = ctx(gate).model_copy(update={"messages": (Message(role=Role.TOOL, content="a tool result"),)})
    gate.firewall = Firewall(scorer=FailingProbe())
    with caplog.at_level("WARNING", logger="aegis_proxy.gate"):
        gate.prefetch(context)
    assert "probe prefetch failed" in caplog.text
    outcome = gate.decide(call("read_file"), context)  # the call itself still fails closed on the broken probe
    assert (outcome.effect, outcome.cause) == ("deny", "policy") and "probe" in outcome.decision.reasons[0]


@pytest.mark.parametrize(
    ("size", "on_a_loop", "on_the_calling_thread"),
    [
        (200, True, True),  # small: analysed on the loop, cheaper than a hand-off
        (INLINE_MAX_CHARS + 1, True, False),  # large: a worker thread, so that the loop never stalls on it
        (INLINE_MAX_CHARS + 1, False, True),  # no event loop to keep free: the caller's own thread
    ],
)
def test_prefetch_analyses_the_conversations_new_messages_before_the_check(
    gate: Gate, monkeypatch: pytest.MonkeyPatch, size: int, on_a_loop: bool, on_the_calling_thread: bool
) -> None:
    threads: list[threading.Thread] = []
    warm = provenance.warm

    def recording(texts: Any) -> None:
        threads.append(threading.current_thread())
        warm(texts)

    monkeypatch.setattr(provenance, "warm", recording)
    text = (f"tool output {uuid.uuid4().hex} " * (size // 40 + 1))[:size]
    message = Message(role=Role.TOOL, content=text)
    context = ctx(gate).model_copy(update={"messages": (Message(role=Role.USER, content="go"), message)})
    caller = threading.current_thread()

    async def on_loop() -> None:
        gate.prefetch(context)
        for _ in range(1000):  # the worker thread's analysis, if it went there
            if provenance.seen(message):
                return
            await asyncio.sleep(0.01)

    if on_a_loop:
        asyncio.run(on_loop())
    else:
        gate.prefetch(context)
    assert [thread is caller for thread in threads] == [on_the_calling_thread]
    assert provenance.unseen(context) == []  # the check that follows analyses nothing
    assert gate.decide(call("read_file"), context).effect == "allow"


@pytest.mark.parametrize("where", ["unseen", "warm"])
def test_a_failing_provenance_prefetch_is_logged_and_changes_no_decision(
    gate: Gate, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    def broken(*_args: Any) -> None:
        raise RuntimeError("forced failure")

    monkeypatch.setattr(provenance, where, broken)
    context = ctx(gate).model_copy(update={"messages": (Message(role=Role.TOOL, content="a tool result"),)})
    with caplog.at_level("WARNING", logger="aegis_proxy.gate"):
        assert gate.prefetch(context) is None
    assert "provenance prefetch failed" in caplog.text
    assert gate.decide(call("read_file"), context).effect == "allow"  # the check analyses the message itself
