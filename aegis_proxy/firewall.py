"""`Firewall.check(call, context) -> Decision`: the whole pure pipeline, and the one place failures become denials.

Steps (kept in this order in `check` and in docs/pipeline.md):
  1 extract     every string and key of the arguments, decoded, normalised, bounded (extract.py)
  2 targets     decide which strings are executed; parse those as shell (targets.py)
  3 scan        each scanner turns targets into findings (scanners/)
  4 provenance  where each argument value came from: the user, untrusted content, an injected span (provenance.py)
  5 probe       optional: the hidden-state probe's scores ("risk", "injection"; None = unknown) (decide.Scorer)
  6 decide      a Decider (built-in severity table, or a policy) turns the evidence into an effect (decide.py)
An exception in any step, including a scanner's, yields `deny` with the step and the error in the reasons: a firewall
whose check failed has not checked.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from aegis_proxy.decide import Decider, Evidence, Scorer, SeverityTable, risk_of
from aegis_proxy.extract import ExtractionLimits, extract
from aegis_proxy.models import CallContext, Decision, Effect, Finding, ToolCall
from aegis_proxy.provenance import trace
from aegis_proxy.scanners.base import Scanner, ScanSettings
from aegis_proxy.scanners.registry import default_scanners
from aegis_proxy.targets import build_targets

_NO_SCORES: dict[str, float | None] = {}


class Firewall:
    def __init__(
        self,
        *,
        scanners: Sequence[Scanner] | None = None,
        settings: ScanSettings | None = None,
        limits: ExtractionLimits | None = None,
        decider: Decider | None = None,
        scorer: Scorer | None = None,
    ) -> None:
        chosen = tuple(default_scanners() if scanners is None else scanners)
        # (stage name, scanner): the name a failure is reported under, built once rather than on every call.
        self._stages: tuple[tuple[str, Scanner], ...] = tuple((f"scanner {each.name}", each) for each in chosen)
        self.settings = settings or ScanSettings()
        self.limits = limits or ExtractionLimits()
        self.decider: Decider = decider or SeverityTable()
        self.scorer = scorer  # None: no probe; the policy sees `risk` and `injection` as unknown

    @property
    def scanners(self) -> tuple[Scanner, ...]:
        return tuple(scanner for _, scanner in self._stages)

    def check(self, call: ToolCall, context: CallContext | None = None) -> Decision:
        started = time.perf_counter()
        context = context or CallContext()
        stage = "extract"
        try:
            extraction = extract(call.arguments, self.limits)
            stage = "targets"
            targets = build_targets(call.tool, extraction.strings)
            findings = list(extraction.findings)
            for stage, scanner in self._stages:  # noqa: B007 (`stage` names the scanner if it raises)
                findings.extend(scanner.scan(call, targets, self.settings))
            stage = "provenance"
            provenance = trace(extraction.strings, context)
            findings.extend(provenance.findings())
            merged = merge_findings(findings)
            stage = "probe"
            scores = _NO_SCORES if self.scorer is None else dict(self.scorer.score_call(call, context))
            stage = "decide"
            verdict = self.decider.decide(
                Evidence(call=call, context=context, findings=merged, provenance=provenance, scores=scores)
            )
        except Exception as exc:
            return Decision(
                effect=Effect.DENY,
                reasons=(f"internal error in {stage}: {type(exc).__name__}: {exc}",),
                rules=("builtin.fail-closed",),
                risk=1.0,
                message="aegis-proxy could not check this call and blocked it; the operator has the details",
                errors=(f"{stage}: {type(exc).__name__}: {exc}",),
                elapsed_ms=(time.perf_counter() - started) * 1000,
            )
        # Fields left at their defaults are not passed: pydantic validates every field it is given, and most calls
        # have no findings, no message and no policy digest.
        extra: dict[str, object] = {}
        if merged:
            extra["findings"] = merged
            extra["risk"] = risk_of(merged)
        if verdict.message:
            extra["message"] = verdict.message
        if verdict.errors:
            extra["errors"] = verdict.errors
        if verdict.flagged:
            extra["flagged"] = True
        if verdict.terminate:
            extra["terminate"] = True
        if verdict.policy_digest:
            extra["policy_digest"] = verdict.policy_digest
        if scores:
            extra["scores"] = scores
        return Decision(
            effect=verdict.effect,
            reasons=verdict.reasons,
            rules=verdict.rules,
            elapsed_ms=(time.perf_counter() - started) * 1000,
            **extra,
        )


def merge_findings(findings: Sequence[Finding]) -> tuple[Finding, ...]:
    """One finding per (category, path, chain), the most severe; ordered worst first, then by place."""
    if not findings:
        return ()
    best: dict[tuple[str, str, tuple[str, ...]], Finding] = {}
    for finding in findings:
        key = (finding.category, finding.path, finding.chain)
        kept = best.get(key)
        if kept is None or finding.severity > kept.severity:
            best[key] = finding
    return tuple(sorted(best.values(), key=lambda f: (-f.severity, f.category, f.path, f.chain)))
