"""The last stage of the pipeline: from what we know about a call to an effect.

`Evidence` is everything the earlier stages established; a `Decider` turns it into a `Verdict`. The built-in
`SeverityTable` is the decider used when no policy is loaded: the worst finding's severity picks the effect. The policy
language implements the same protocol, so the pipeline does not change when a policy takes over.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from aegis_proxy.models import CallContext, Effect, Finding, Severity, ToolCall

if TYPE_CHECKING:  # the provenance module is only needed for the type
    from aegis_proxy.provenance import ProvenanceReport


@dataclass(frozen=True, slots=True)
class Evidence:
    call: ToolCall
    context: CallContext
    findings: tuple[Finding, ...]
    provenance: ProvenanceReport | None = None
    scores: Mapping[str, float | None] = field(default_factory=dict)  # probe scores; None = unknown

    @property
    def worst(self) -> Severity | None:
        return max((f.severity for f in self.findings), default=None)


class Scorer(Protocol):
    """The hidden-state probe as the firewall sees it (aegis_proxy.probe.ProbeScorer implements it).

    Returns a score per name ("risk", "injection"), None where unknown (probe off, timed out, or failed to load).
    Must not raise for any call; if it does anyway, the firewall denies the call (fail closed).
    """

    def score_call(self, call: ToolCall, context: CallContext) -> Mapping[str, float | None]: ...


@runtime_checkable
class Prefetcher(Protocol):
    """A Scorer that can start on a conversation's untrusted content before a call in it arrives (optional).

    `prefetch` is a hint: it returns at once, warms what `score_call` on the same context will read, and never raises;
    the scores `score_call` returns must be the same with or without it. ProbeScorer implements it.
    """

    def prefetch(self, context: CallContext) -> None: ...


@dataclass(frozen=True, slots=True)
class Verdict:
    effect: Effect
    rules: tuple[str, ...]  # ids of what determined the effect
    reasons: tuple[str, ...]
    message: str = ""  # shown to the agent when blocked or held
    errors: tuple[str, ...] = ()
    flagged: bool = False  # allowed, but marked for review (the policy's `audit` effect)
    terminate: bool = False  # the agent's run should end, not continue after the block
    policy_digest: str = ""  # which policy decided ("" for the built-in table)


class Decider(Protocol):
    def decide(self, evidence: Evidence) -> Verdict: ...


# Risk summary of a finding severity, for `aegis check` and metrics. Monotone in severity; not a probability.
SEVERITY_RISK: Mapping[Severity, float] = {
    Severity.INFO: 0.05,
    Severity.LOW: 0.2,
    Severity.MEDIUM: 0.5,
    Severity.HIGH: 0.85,
    Severity.CRITICAL: 1.0,
}


def risk_of(findings: tuple[Finding, ...]) -> float:
    return max((SEVERITY_RISK[f.severity] for f in findings), default=0.0)


_ALLOW = Verdict(Effect.ALLOW, rules=("builtin.allow",), reasons=("no finding at or above medium",))


@dataclass(frozen=True, slots=True)
class SeverityTable:
    """Built-in decider: critical/high deny, medium ask, low/info allow."""

    deny_at: Severity = Severity.HIGH
    ask_at: Severity = Severity.MEDIUM

    def decide(self, evidence: Evidence) -> Verdict:
        worst = evidence.worst
        if worst is None or worst < self.ask_at:
            return _ALLOW  # immutable: one shared verdict for the common case
        decisive = sorted(
            (f for f in evidence.findings if f.severity == worst), key=lambda f: (f.category, f.path, f.chain)
        )
        effect = Effect.DENY if worst >= self.deny_at else Effect.ASK
        reasons = tuple(f"{f.severity.label} {f.category} at {f.where}: {f.message}" for f in decisive)
        head = decisive[0]
        verb = "blocked" if effect is Effect.DENY else "held for human approval"
        message = f"aegis-proxy {verb} this {evidence.call.tool} call: {head.message} ({head.category} at {head.where})"
        return Verdict(effect, rules=(f"builtin.{worst.label}",), reasons=reasons, message=message)
