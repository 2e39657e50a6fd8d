"""The Gate: what happens to one parsed tool call between the wire adapter and the effect on the flow.

    Firewall.check(call, context) -> Decision            (the live policy; hot reloads audited as `policy_reload`)
    ask + an approved approval of this exact call?        -> consume it (once) and allow, audited as `approval`
    audit record, arguments redacted                      -> DURABLE (group commit) before anything is returned;
                                                             on the event loop, a staged decision that the writer
                                                             chains right after (audit/FORMAT.md section 9)
    ask                                                   -> a pending approval in the database, its id in the message

`decide` never raises: any failure (the firewall, the argument hash, the approvals database, the audit log) returns
`deny` with a message saying why, and an audit record of the failure when the log can still take one. Nothing fails
open. `await_approval` holds a flow, streamed or not, until a human answers (`aegis approvals approve|deny ID`, from
any terminal or replica) or the approval times out; each outcome is its own audit record pointing at the ask.

An approval decided while nobody waits for it (the replica holding the call died) is not lost: the identical call
(same tool, server and arguments; same session or agent) passes exactly once through the consume path
(docs/approvals.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import JsonValue

from aegis_proxy import provenance
from aegis_proxy.approvals import Approval, ApprovalStore, args_hash
from aegis_proxy.audit.record import FindingSummary, score_ppm
from aegis_proxy.audit.store import AppendEntry, AuditStore
from aegis_proxy.audit.writer import AuditWriter, Durable
from aegis_proxy.decide import Prefetcher, Scorer
from aegis_proxy.extract import ROOT
from aegis_proxy.extract import _member_path as member_path  # one path syntax: findings name our nodes
from aegis_proxy.firewall import Firewall
from aegis_proxy.history import SessionHistory
from aegis_proxy.models import CallContext, Decision, Effect, Finding, ToolCall
from aegis_proxy.policy.reload import RELOAD, PolicyDecider, PolicyEvent, PolicyWatcher
from aegis_proxy.scanners.secrets import redact, redaction_marker

if TYPE_CHECKING:
    from aegis_proxy.config import AegisConfig
    from aegis_proxy.metrics import GateObserver

log = logging.getLogger("aegis_proxy.gate")


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _warm_quietly(texts: Sequence[tuple[str, bool]]) -> None:
    """provenance.warm in a worker thread: a failure is logged; the check will analyse the texts itself."""
    try:
        provenance.warm(texts)
    except Exception:
        log.warning("aegis: provenance prefetch failed; the check will analyse the messages", exc_info=True)


GateEffect = Literal["allow", "deny", "ask"]
# policy: the firewall decided; approval: an ask allowed by consuming an earlier approval of the identical call;
# approved / rejected / timeout: how a held call ended (await_approval); error: something failed, so the call is denied.
GateCause = Literal["policy", "approval", "approved", "rejected", "timeout", "error"]

FAIL_CLOSED_RULE = "builtin.fail-closed"
MAX_AUDITED_FINDINGS = 64  # worst first; a record is a summary, the full list is in the decision
MAX_SUMMARY = 500
# Calls whose arguments and new conversation text together stay within this many characters are judged on the event
# loop (about 0.1-0.5 ms, below the cost of a thread hand-off on a busy machine); larger ones in a worker thread, where
# the firewall's provenance pass over new text (milliseconds per 100 KB) cannot stall other flows. Text provenance has
# seen before (a session resends its conversation with every call) counts for 1/SEEN_TEXT_DISCOUNT of its length:
# tracing through it is only substring searches (measured: 0.1 ms for 29 KB, 0.6-1.0 ms for 574 KB of seen text).
INLINE_MAX_CHARS = 16 * 1024
SEEN_TEXT_DISCOUNT = 32
SWEEP_MARGIN = 5.0  # seconds past expiry before the sweeper times an approval out: a waiting flow does it first
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class GateOutcome:
    effect: GateEffect
    decision: Decision  # the firewall's; a synthesized deny when the firewall never produced one
    approval_id: str | None = None  # the pending approval (ask), or the one that allowed the call
    # The durable record of this outcome; None when it is staged (below) or when even that could not be written.
    audit_seq: int | None = None
    message: str = ""  # for the agent: why it was blocked, or which approval it waits for
    cause: GateCause = "policy"
    request_id: str | None = None
    ask_seq: int | None = None  # the ask record that this outcome resolves (or is)
    # A decision made durable as a staged row (AuditWriter.commit_async), chained into its record right after.
    audit_staged: int | None = None


@dataclass(frozen=True, slots=True)
class _Judged:
    """A call the firewall decided, with what its audit record and approval need."""

    call: ToolCall
    context: CallContext  # with the session's history
    request_id: str | None
    started: float
    decision: Decision
    call_hash: str | None  # what an approval binds to; an ask's only (allow and deny need none)
    arguments: JsonValue  # redacted for the audit log


class _StageFailed(Exception):
    def __init__(self, stage: str, error: Exception) -> None:
        super().__init__(stage)
        self.stage = stage
        self.error = error


class Gate:
    """Decides, audits and holds tool calls. Thread-safe; one per process."""

    def __init__(
        self,
        firewall: Firewall,
        writer: AuditWriter,
        approvals: ApprovalStore,
        *,
        approval_timeout: float = 300.0,
        audit_timeout: float = 5.0,
        watcher: PolicyWatcher | None = None,
        sweep_interval: float = 1.0,
        observer: GateObserver | None = None,
    ) -> None:
        self.firewall = firewall
        self.writer = writer
        self.approvals = approvals
        self.approval_timeout = approval_timeout
        self.audit_timeout = audit_timeout
        self.watcher = watcher
        self.sweep_interval = sweep_interval
        self.history = SessionHistory()  # the session's earlier calls, for count(...) / earlier(...) rules
        self.observer = observer  # metrics: told of outcomes, appends, waits, reloads; its failures are ignored
        self._closers: list[Callable[[], None]] = []  # what from_config opened, closed in order
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: AegisConfig, *, observer: GateObserver | None = None) -> Gate:
        """Open everything the configuration names. Raises AegisError: startup may fail, decisions never do."""
        from aegis_proxy.config import open_signing_key, prepare_data_dir

        closers: list[Callable[[], None]] = []
        try:
            prepare_data_dir(config)
            key = open_signing_key(config)
            store = AuditStore(
                config.audit.db,
                origin=config.audit.origin,
                signer_key=key,
                replica=config.replica,
                checkpoint_every=config.audit.checkpoint_records,
                checkpoint_interval=config.audit.checkpoint_seconds,
                sync=config.audit.sync,
            )
            closers.insert(0, store.close)
            writer = AuditWriter(store, sync_interval=config.audit.sync_interval)
            closers.insert(0, writer.close)
            approvals = ApprovalStore(store.engine, grace=config.approval_grace)
            closers.insert(1, approvals.close)
            created: list[Gate] = []  # the watcher reports reloads to the gate built after it

            def on_event(event: PolicyEvent) -> None:
                if created:
                    created[0].audit_policy_event(event)

            watcher = PolicyWatcher(
                [str(path) for path in config.policies], interval=config.policy_reload_interval, on_event=on_event
            )
            gate = cls(
                Firewall(decider=PolicyDecider(watcher), scorer=open_probe(config)),
                writer,
                approvals,
                approval_timeout=config.approval_timeout,
                watcher=watcher,
                observer=observer,
            )
            created.append(gate)
        except BaseException:
            for close in closers:
                close()
            raise
        gate._closers = closers
        return gate

    def start(self) -> Gate:
        """Start the policy watcher and the approval sweeper; audit which policy is in force. Returns self."""
        if self.watcher is not None:
            self._audit_policy("policy.loaded", self.watcher.digest)
            self.watcher.start()
        if self._sweeper is None:
            self._stop.clear()
            self._sweeper = threading.Thread(target=self._sweep_loop, name="aegis-approval-sweeper", daemon=True)
            self._sweeper.start()
        return self

    def close(self) -> None:
        """Stop the threads, flush the audit writer, close what from_config opened. Idempotent."""
        self._stop.set()
        if self._sweeper is not None:
            self._sweeper.join(10)
            self._sweeper = None
        if self.watcher is not None:
            self.watcher.stop()
        closers, self._closers = self._closers, []
        for close in closers:
            try:
                close()
            except Exception:
                log.exception("closing the gate")

    def __enter__(self) -> Gate:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def policy_digest(self) -> str:
        return self.watcher.digest if self.watcher is not None else ""

    # -- deciding -----------------------------------------------------------------------------------------------------

    def prefetch(self, context: CallContext) -> None:
        """Start on a request's conversation now, once the LLM request that carries it has gone on, so that the call
        in its answer finds the work done while the LLM thought:
          1. provenance: analyse the messages the check has not seen yet (a session's new tool results, documents):
             on this thread when they are small (INLINE_MAX_CHARS; on the event loop a hand-off costs more) or when
             it runs no event loop, else in a worker thread, so that a long document never stalls the loop;
          2. the probe, when on: score the untrusted content (its own queue).
        Never raises and never waits (a prefetch is a hint: a failed one is logged, and the check does the work)."""
        try:
            new = provenance.unseen(context)
            loop = _running_loop()
            if loop is not None and sum(len(text) for text, _ in new) > INLINE_MAX_CHARS:
                loop.run_in_executor(None, _warm_quietly, new)
            else:
                provenance.warm(new)
        except Exception:
            log.warning("aegis: provenance prefetch failed; the check will analyse the messages", exc_info=True)
        scorer = self.firewall.scorer
        if scorer is None:  # no probe: nothing more to warm
            return
        try:
            if isinstance(scorer, Prefetcher):
                scorer.prefetch(context)
        except Exception:
            log.warning("aegis: probe prefetch failed; the call will be scored in full", exc_info=True)

    def decide(
        self, call: ToolCall, context: CallContext | None = None, *, request_id: str | None = None
    ) -> GateOutcome:
        """Decide one call and make its audit record durable. Never raises; any failure is a deny."""
        started = time.perf_counter()
        try:
            outcome = self._decide(call, context or CallContext(), request_id, started)
        except Exception as error:
            outcome = self._failed(call, context, request_id, started, "decide", error)
        self._notify("decided", outcome, time.perf_counter() - started)
        return outcome

    async def decide_async(
        self,
        call: ToolCall,
        context: CallContext | None = None,
        *,
        request_id: str | None = None,
        alone: bool = False,
    ) -> GateOutcome:
        """`decide` for the event loop: the same outcome and the same durable record, without blocking the loop.

        A small call (arguments and conversation within `INLINE_MAX_CHARS`, no probe) is judged right here: the
        firewall is pure and takes a fraction of a millisecond, less than handing the call to a worker thread and back.
        Its audit record goes to the writer thread, and the loop serves other flows until the record is durable; or,
        when the writer is idle and an append cannot wait or fsync (SQLite, `audit.sync = "normal"`), it is appended
        right here (AuditWriter.append_async); with `full`, too, when the caller is `alone` (no other flow is in
        progress on this loop, so nobody waits while the loop waits for the fsync).
        Whatever may take long or block runs in a worker thread, as `decide`: the probe, large calls, the approvals
        database of an ask, writing a failure."""
        if not self._inline(call, context):
            return await self._decide_in_thread(call, context, request_id)
        started = time.perf_counter()
        try:
            outcome = await self._decide_inline(call, context or CallContext(), request_id, started, alone)
        except Exception as error:  # a bug in the inline path: still a deny, audited when the log takes it
            outcome = await self._failed_in_thread(call, context, request_id, started, "decide", error)
        self._notify("decided", outcome, time.perf_counter() - started)
        return outcome

    async def _decide_in_thread(
        self, call: ToolCall, context: CallContext | None, request_id: str | None
    ) -> GateOutcome:
        try:
            return await asyncio.to_thread(self.decide, call, context, request_id=request_id)
        except Exception as error:  # e.g. the thread pool is shutting down
            return self._failed(call, context, request_id, time.perf_counter(), "decide", error)

    async def _failed_in_thread(
        self,
        call: ToolCall,
        context: CallContext | None,
        request_id: str | None,
        started: float,
        stage: str,
        error: BaseException,
    ) -> GateOutcome:
        """`_failed` (which may write a failure record) off the event loop."""
        try:
            return await asyncio.to_thread(self._failed, call, context, request_id, started, stage, error)
        except Exception:  # no thread to write from: deny without a record rather than block the loop
            return self._failed(call, context, request_id, started, "audit", error)

    def _inline(self, call: ToolCall, context: CallContext | None) -> bool:
        """Whether judging `call` on the event loop is cheaper than a thread hand-off and cannot stall other flows.
        The firewall's cost grows with the text it reads (arguments, and the conversation for provenance: new text
        much more than text seen on an earlier call); the probe runs a model. A call that does not carry its wire
        size (raw_size 0) goes to a thread: any doubt does."""
        if self.firewall.scorer is not None or not isinstance(call, ToolCall):
            return False
        if not 0 < call.raw_size <= INLINE_MAX_CHARS:
            return False
        budget = INLINE_MAX_CHARS - call.raw_size
        for message in context.messages if context is not None else ():
            size = len(message.content)
            budget -= size // SEEN_TEXT_DISCOUNT if provenance.seen(message) else size
            if budget < 0:
                return False
        return True

    async def _decide_inline(
        self, call: ToolCall, context: CallContext, request_id: str | None, started: float, alone: bool
    ) -> GateOutcome:
        try:
            judged = self._judge(call, context, request_id, started)
        except _StageFailed as failed:
            return await self._failed_in_thread(call, context, request_id, started, failed.stage, failed.error)
        if judged.decision.effect is Effect.ASK:
            return await asyncio.to_thread(self._conclude, judged)  # the approvals database: off the loop
        try:
            durable = await self._write_async(self._decision_entry(judged), alone=alone)
        except Exception as error:  # nothing to write the failure to: _failed writes nothing for "audit"
            return self._failed(call, context, request_id, started, "audit", error)
        return self._ruled(judged, durable.seq, staged=durable.staged)

    def _decide(self, call: ToolCall, context: CallContext, request_id: str | None, started: float) -> GateOutcome:
        try:
            judged = self._judge(call, context, request_id, started)
        except _StageFailed as failed:
            return self._failed(call, context, request_id, started, failed.stage, failed.error)
        return self._conclude(judged)

    def _judge(self, call: ToolCall, context: CallContext, request_id: str | None, started: float) -> _Judged:
        """The pure part: the firewall's decision, the session history, the argument hash and redacted copy.
        Raises _StageFailed naming the stage that failed."""
        stage = "firewall"
        try:
            context = self.history.with_history(context)
            decision = self.firewall.check(call, context)
            # Recorded before the audit write: a call denied because the log failed was still attempted, and
            # session rules (rate limits, "a secret was read earlier") must count it.
            self.history.record(context, call, decision.effect)
            stage = "arguments"
            call_hash = args_hash(call.tool, call.server, call.arguments) if decision.effect is Effect.ASK else None
            arguments = redact_arguments(call.arguments, decision.findings)
        except Exception as error:
            raise _StageFailed(stage, error) from error
        return _Judged(call, context, request_id, started, decision, call_hash, arguments)

    def _conclude(self, judged: _Judged) -> GateOutcome:
        """After the firewall, blocking: consume an earlier approval of an ask, write the record (durable), create the
        pending approval of a new ask. Any failure denies."""
        call, context, decision = judged.call, judged.context, judged.decision
        stage = "approvals"
        try:
            call_hash = ""
            if decision.effect is Effect.ASK:
                call_hash = judged.call_hash or args_hash(call.tool, call.server, call.arguments)
                approval = self.approvals.consume_approved(
                    call_hash, session_id=context.session_id, agent_id=context.agent_id
                )
                if approval is not None:
                    stage = "audit"
                    return self._allow_approved(
                        call, context, judged.request_id, judged.started, decision, judged.arguments, approval
                    )
            stage = "audit"
            seq = self._write(self._decision_entry(judged))
            if decision.effect is not Effect.ASK:
                return self._ruled(judged, seq)
            stage = "approvals"
            approval = self.approvals.create(
                tool=call.tool,
                server=call.server,
                args_hash=call_hash,
                session_id=context.session_id,
                agent_id=context.agent_id,
                ask_seq=seq,
                summary=summarize(call.tool, call.server, judged.arguments, decision),
                timeout=self.approval_timeout,
            )
        except Exception as error:
            return self._failed(call, context, judged.request_id, judged.started, stage, error)
        held = (decision.message or f"aegis-proxy held this {call.tool} call for human approval").rstrip(". ")
        message = (
            f"{held}. Approval id {approval.id}: a human can run `aegis approvals approve {approval.id}` "
            f"(or deny it) within {self.approval_timeout:g} s; once approved, the identical call is allowed once."
        )
        return GateOutcome(
            "ask",
            decision,
            approval_id=approval.id,
            audit_seq=seq,
            message=message,
            request_id=judged.request_id,
            ask_seq=seq,
        )

    def _decision_entry(self, judged: _Judged) -> AppendEntry:
        decision = judged.decision
        return self._entry(
            "decision",
            decision.effect.value,
            judged.call,
            judged.context,
            judged.request_id,
            judged.started,
            decision,
            judged.arguments,
        )

    @staticmethod
    def _ruled(judged: _Judged, seq: int | None, *, staged: int | None = None) -> GateOutcome:
        """The outcome of an allow or a deny whose record `seq` (or staged decision `staged`) is durable."""
        decision = judged.decision
        if decision.effect is Effect.ALLOW:
            return GateOutcome("allow", decision, audit_seq=seq, request_id=judged.request_id, audit_staged=staged)
        message = decision.message or f"aegis-proxy blocked this {judged.call.tool} call"
        return GateOutcome(
            "deny", decision, audit_seq=seq, message=message, request_id=judged.request_id, audit_staged=staged
        )

    def _allow_approved(
        self,
        call: ToolCall,
        context: CallContext,
        request_id: str | None,
        started: float,
        decision: Decision,
        arguments: JsonValue,
        approval: Approval,
    ) -> GateOutcome:
        """An ask whose exact call a human approved earlier: the approval is used up (consumed), then audited."""
        entry = self._entry("approval", "allow", call, context, request_id, started, decision, arguments)
        seq = self._write(_replace(entry, approver=approval.resolver, ref_seq=approval.ask_seq))
        return GateOutcome(
            "allow",
            decision,
            approval_id=approval.id,
            audit_seq=seq,
            cause="approval",
            request_id=request_id,
            ask_seq=approval.ask_seq,
        )

    # -- holding ------------------------------------------------------------------------------------------------------

    async def await_approval(self, outcome: GateOutcome, timeout: float | None = None) -> GateOutcome:
        """Hold an `ask` until a human answers or it times out; audit the outcome; return allow or deny. Never raises.
        Any other outcome is returned as it is."""
        if outcome.effect != "ask" or outcome.approval_id is None:
            return outcome
        started = time.perf_counter()
        try:
            final = await self._await(outcome, outcome.approval_id, timeout, started)
        except Exception as error:
            log.exception("aegis: waiting for approval %s failed", outcome.approval_id)
            final = _denied(
                outcome, "error", f"aegis-proxy could not complete the approval and blocked the call: {error}"
            )
        self._notify("approval_resolved", final, time.perf_counter() - started)
        return final

    async def _await(
        self, outcome: GateOutcome, approval_id: str, timeout: float | None, started: float
    ) -> GateOutcome:
        pending = await asyncio.to_thread(self.approvals.get, approval_id)
        remaining = pending.expires_at - self.approvals.now()
        budget = remaining if timeout is None else min(timeout, remaining)
        final = await self.approvals.wait(approval_id, max(0.0, budget))
        if final.status == "pending":
            moved = await asyncio.to_thread(self.approvals.time_out, approval_id)
            if moved is None:  # resolved in the last instant: honour what the human said
                final = await asyncio.to_thread(self.approvals.get, approval_id)
            else:
                return await asyncio.to_thread(self._resolved, outcome, moved, "timeout", started)
        if final.status == "approved":
            used = await asyncio.to_thread(self.approvals.consume, approval_id)
            if used is None:
                return _denied(outcome, "error", f"approval {approval_id} was already used by an identical call")
            return await asyncio.to_thread(self._resolved, outcome, used, "approved", started)
        if final.status == "denied":
            return await asyncio.to_thread(self._resolved, outcome, final, "rejected", started)
        if final.status == "timeout":  # another process timed it out and audited that
            return _denied(outcome, "timeout", _timeout_message(approval_id), audit_seq=None)
        return _denied(outcome, "error", f"approval {approval_id} was already used by an identical call")

    def _resolved(self, outcome: GateOutcome, approval: Approval, cause: GateCause, started: float) -> GateOutcome:
        """Write the outcome's record (durable) and build the result; a failed write denies."""
        decision = outcome.decision
        kind: Literal["approval", "timeout"] = "timeout" if cause == "timeout" else "approval"
        effect = "allow" if cause == "approved" else "deny"
        entry = AppendEntry(
            type=kind,
            decision=None if kind == "timeout" else effect,
            tool=approval.tool,
            request_id=outcome.request_id,
            session_id=approval.session_id,
            agent_id=approval.agent_id,
            rules=decision.rules,
            policy_digest=decision.policy_digest or None,
            approver=None if kind == "timeout" else approval.resolver,
            ref_seq=approval.ask_seq,
            latency_us=int((time.perf_counter() - started) * 1e6),
        )
        try:
            seq = self._write(entry)
        except Exception as error:
            log.error("aegis: could not audit the %s of approval %s: %s", cause, approval.id, error)
            return _denied(
                outcome, "error", f"aegis-proxy could not record the approval outcome and blocked the call: {error}"
            )
        if cause == "approved":
            return GateOutcome(
                "allow",
                decision,
                approval_id=approval.id,
                audit_seq=seq,
                cause="approved",
                request_id=outcome.request_id,
                ask_seq=approval.ask_seq,
            )
        if cause == "rejected":
            message = f"a human ({approval.resolver}) denied this call (approval {approval.id})"
        else:
            message = _timeout_message(approval.id)
        return _denied(outcome, cause, message, audit_seq=seq)

    # -- other records ------------------------------------------------------------------------------------------------

    def sweep_expired(self) -> int:
        """Time out pending approvals nobody waits for (their replica died, their wait failed) and audit each once."""
        written = 0
        for approval in self.approvals.expire(older_than=SWEEP_MARGIN):
            if approval.ask_seq is None:
                log.warning("aegis: approval %s timed out but names no ask record", approval.id)
                continue
            self._write(
                AppendEntry(
                    type="timeout",
                    tool=approval.tool,
                    session_id=approval.session_id,
                    agent_id=approval.agent_id,
                    ref_seq=approval.ask_seq,
                )
            )
            written += 1
        return written

    def record_failure(
        self, *, request_id: str | None, context: CallContext | None, where: str, error: str
    ) -> int | None:
        """Audit a failure outside `decide` (a hook, a parser) that blocked a flow: a deny record. Never raises."""
        try:
            return self._write(
                AppendEntry(
                    type="decision",
                    decision="deny",
                    arguments={"where": where[:200], "error": redact(error)[:2000]},
                    request_id=request_id,
                    session_id=context.session_id if context else None,
                    agent_id=context.agent_id if context else None,
                    rules=(FAIL_CLOSED_RULE,),
                )
            )
        except Exception:
            log.exception("aegis: could not audit a failure in %s", where)
            return None

    def audit_policy_event(self, event: PolicyEvent) -> int | None:
        """A reload (or a failed one: the old policy stays) as a `policy_reload` record. Never raises."""
        rule = "policy.reload" if event.kind == RELOAD else "policy.reload-failed"
        self._notify("policy_event", event.kind)
        return self._audit_policy(rule, event.digest)

    def _audit_policy(self, rule: str, digest: str) -> int | None:
        try:
            return self._write(AppendEntry(type="policy_reload", rules=(rule,), policy_digest=digest or None))
        except Exception:
            log.exception("aegis: could not audit %s", rule)
            return None

    # -- internals ----------------------------------------------------------------------------------------------------

    def _write(self, entry: AppendEntry) -> int:
        started = time.perf_counter()
        try:
            seq = self.writer.append_sync(entry, self.audit_timeout)
        except BaseException as error:
            self._notify("appended", time.perf_counter() - started, error)
            raise
        self._notify("appended", time.perf_counter() - started, None)
        return seq

    async def _write_async(self, entry: AppendEntry, *, alone: bool = False) -> Durable:
        """`_write` for the event loop: the entry made durable without blocking the loop, as a record or as a staged
        decision that the writer chains right after (when `alone`, the loop may wait for it: AuditWriter.commit_async).
        """
        started = time.perf_counter()
        try:
            durable = await self.writer.commit_async(entry, self.audit_timeout, alone=alone)
        except BaseException as error:
            self._notify("appended", time.perf_counter() - started, error)
            raise
        self._notify("appended", time.perf_counter() - started, None)
        return durable

    def _notify(self, event: str, *args: Any) -> None:
        """Tell the observer (metrics); an observer that fails is logged and otherwise ignored."""
        if self.observer is None:
            return
        try:
            getattr(self.observer, event)(*args)
        except Exception:
            log.warning("aegis: gate observer failed in %s", event, exc_info=True)

    def _entry(
        self,
        kind: Literal["decision", "approval"],
        effect: str,
        call: ToolCall,
        context: CallContext,
        request_id: str | None,
        started: float,
        decision: Decision,
        arguments: JsonValue,
    ) -> AppendEntry:
        # "risk" is the findings' summary; the probe's own scores are kept apart as probe_<name> (unknown: absent).
        scores = {"risk": score_ppm(decision.risk)}
        scores.update(
            {f"probe_{name}": score_ppm(value) for name, value in decision.scores.items() if value is not None}
        )
        return AppendEntry(
            type=kind,
            decision=effect,
            tool=call.tool,
            arguments=arguments if isinstance(arguments, dict) else {"value": arguments},
            request_id=request_id,
            session_id=context.session_id,
            agent_id=context.agent_id,
            rules=decision.rules,
            policy_digest=decision.policy_digest or None,
            findings=summarize_findings(decision.findings),
            scores=scores,
            latency_us=int((time.perf_counter() - started) * 1e6),
        )

    def _failed(
        self,
        call: ToolCall,
        context: CallContext | None,
        request_id: str | None,
        started: float,
        stage: str,
        error: BaseException,
    ) -> GateOutcome:
        """Fail closed: a deny, audited if the log still takes records. Never raises."""
        reason = f"{stage}: {type(error).__name__}: {_CONTROL.sub(' ', str(error))[:300]}"
        log.error("aegis: %s call denied (fail closed): %s", getattr(call, "tool", "?"), reason)
        message = (
            "aegis-proxy could not record this call in its audit log and blocked it"
            if stage == "audit"
            else "aegis-proxy could not check this call and blocked it; the operator has the details"
        )
        decision = Decision(
            effect=Effect.DENY,
            reasons=(reason,),
            rules=(FAIL_CLOSED_RULE,),
            risk=1.0,
            message=message,
            errors=(reason,),
        )
        seq: int | None = None
        if stage != "audit":  # the log itself failed: there is nothing to write the failure to
            try:
                tool = call.tool if isinstance(call, ToolCall) else None
                arguments = redact_arguments(call.arguments, ()) if isinstance(call, ToolCall) else {}
                entry = AppendEntry(
                    type="decision",
                    decision="deny",
                    tool=tool,
                    arguments=arguments if isinstance(arguments, dict) else {"value": arguments},
                    request_id=request_id,
                    session_id=context.session_id if context else None,
                    agent_id=context.agent_id if context else None,
                    rules=(FAIL_CLOSED_RULE,),
                    latency_us=int((time.perf_counter() - started) * 1e6),
                )
                seq = self._write(entry)
            except Exception:
                log.exception("aegis: could not audit the failure either")
        return GateOutcome("deny", decision, audit_seq=seq, message=message, cause="error", request_id=request_id)

    def _sweep_loop(self) -> None:
        while not self._stop.wait(self.sweep_interval):
            try:
                self.sweep_expired()
            except Exception:  # the next tick retries; a held flow times itself out meanwhile
                log.exception("aegis: approval sweep failed")


def _denied(outcome: GateOutcome, cause: GateCause, message: str, *, audit_seq: int | None = None) -> GateOutcome:
    return GateOutcome(
        "deny",
        outcome.decision,
        approval_id=outcome.approval_id,
        audit_seq=audit_seq,
        message=message,
        cause=cause,
        request_id=outcome.request_id,
        ask_seq=outcome.ask_seq,
    )


def _timeout_message(approval_id: str) -> str:
    return f"nobody approved this call in time (approval {approval_id} timed out); it was not run"


def _replace(entry: AppendEntry, **changes: Any) -> AppendEntry:
    return dataclasses.replace(entry, **changes)


# -- what is written --------------------------------------------------------------------------------------------------


def summarize_findings(findings: Sequence[Finding]) -> tuple[FindingSummary, ...]:
    """Category, severity and place of the worst findings; never the matched text (it may be a secret)."""
    return tuple(
        FindingSummary(category=f.category, severity=f.severity.label, path=_CONTROL.sub("?", f.where)[:4096])
        for f in findings[:MAX_AUDITED_FINDINGS]
    )


def summarize(tool: str, server: str | None, arguments: JsonValue, decision: Decision) -> str:
    """One line for the human deciding: the call with redacted arguments, and the first reason."""
    try:
        shown = json.dumps(arguments, ensure_ascii=False, sort_keys=True, separators=(", ", ": "))
    except (TypeError, ValueError):
        shown = "?"
    name = f"{tool}@{server}" if server else tool
    reason = decision.reasons[0] if decision.reasons else ""
    text = f"{name}({shown[:300]}{'…' if len(shown) > 300 else ''})" + (f" — {reason}" if reason else "")
    return _CONTROL.sub(" ", redact(text))[:MAX_SUMMARY]  # reasons may quote argument text


_SEGMENT = re.compile(r'(\.[A-Za-z_][A-Za-z0-9_]*|\[\d+\]|\["(?:[^"\\]|\\.)*(?:\.\.\.)?"\])$')


def redact_arguments(arguments: JsonValue, findings: Sequence[Finding]) -> JsonValue:
    """A copy of `arguments` fit for the audit log: every string and key through the secret redactor, and every place
    where a scanner found a secret that the redactor cannot see in the raw text (behind base64, JSON-in-a-string, a
    normalisation) replaced whole by a marker. A secret we cannot place drops all arguments (fail closed)."""
    hard: set[str] = set()  # paths replaced whole
    soft: set[str] = set()  # strings replaced whole only if the redactor finds nothing in them
    secret = [f for f in findings if f.category.startswith("secrets.")]
    if secret:
        paths = {path for path, _ in _walk(arguments, ROOT)}
        for finding in secret:
            place = _existing_prefix(finding.path, paths)
            if place is None:
                return {"redacted": redaction_marker("unlocated", "")}
            (soft if place == finding.path and not finding.chain else hard).add(place)
    return _copy(arguments, ROOT, hard, soft)


def _walk(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    stack = [(value, path)]
    while stack:
        node, where = stack.pop()
        yield where, node
        if isinstance(node, dict):
            stack.extend((child, member_path(where, str(key))) for key, child in node.items())
        elif isinstance(node, list | tuple):
            stack.extend((child, f"{where}[{index}]") for index, child in enumerate(node))


def _existing_prefix(path: str, paths: set[str]) -> str | None:
    current = path.split(" -> ", 1)[0]
    while True:
        if current in paths:
            return current
        match = _SEGMENT.search(current)
        if match is None or match.start() == 0:
            return None
        current = current[: match.start()]


def _copy(value: Any, path: str, hard: set[str], soft: set[str]) -> Any:
    if path in hard:
        return redaction_marker("secret", "")
    if isinstance(value, str):
        redacted = redact(value)
        if path in soft and redacted == value:
            return redaction_marker("secret", "")
        return redacted
    if isinstance(value, dict):
        copied: dict[str, Any] = {}
        for key, child in value.items():
            name = redact(str(key))
            while name in copied:  # two keys redacted to one marker: keep both values
                name += "'"
            copied[name] = _copy(child, member_path(path, str(key)), hard, soft)
        if path in soft and all(name in value for name in copied):  # a secret in a key the redactor cannot see
            return redaction_marker("secret", "")
        return copied
    if isinstance(value, list | tuple):
        return [_copy(child, f"{path}[{index}]", hard, soft) for index, child in enumerate(value)]
    return value


def open_probe(config: AegisConfig) -> Scorer | None:
    """The hidden-state probe the configuration asks for, or None (`probe.backbone = "off"`, the default).

    A probe that cannot load (no torch, a missing or malformed model or head) is logged and runs switched off: every
    score is unknown and the policy decides with what it has. The proxy keeps working and says so.
    """
    if config.probe.backbone == "off":
        return None
    from aegis_proxy.probe import ProbeScorer, ProbeSettings  # imports no torch; loading the model does

    probe = config.probe
    scorer = ProbeScorer.open(
        ProbeSettings(
            backbone=probe.backbone, heads_dir=probe.heads_dir, timeout_s=probe.timeout, precision=probe.precision
        )
    )
    if scorer.ready:
        heads = ", ".join(sorted(scorer.heads))
        log.info("aegis: probe %s ready (heads: %s; precision %s)", probe.backbone, heads, scorer.precision)
    else:
        log.warning("aegis: probe %s is off, every score is unknown: %s", config.probe.backbone, scorer.status)
    return scorer
