"""`Firewall.check(call, context) -> Decision`: the whole pure pipeline, and the one place failures become denials.

Steps (kept in this order in `check` and in docs/architecture):
  1 extract     every string and key of the arguments, decoded, normalised, bounded (extract.py)
  2 targets     decide which strings are executed; parse those as shell (targets.py)
  3 scan        each scanner turns targets into findings (scanners/)
  4 provenance  where each argument value came from: the user, untrusted content, an injected span (provenance.py)
  5 decide      a Decider (built-in severity table, or a policy) turns the evidence into an effect (decide.py)
An exception in any step, including a scanner's, yields `deny` with the step and the error in the reasons: a firewall
whose check failed has not checked.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from aegis_proxy.decide import Decider, Evidence, SeverityTable, risk_of
from aegis_proxy.extract import ExtractionLimits, extract
from aegis_proxy.models import CallContext, Decision, Effect, Finding, ToolCall
from aegis_proxy.provenance import trace
from aegis_proxy.scanners.base import Scanner, ScanSettings
from aegis_proxy.scanners.registry import default_scanners
from aegis_proxy.targets import build_targets


class Firewall:
    def __init__(
        self,
        *,
        scanners: Sequence[Scanner] | None = None,
        settings: ScanSettings | None = None,
        limits: ExtractionLimits | None = None,
        decider: Decider | None = None,
    ) -> None:
        self.scanners: tuple[Scanner, ...] = tuple(default_scanners() if scanners is None else scanners)
        self.settings = settings or ScanSettings()
        self.limits = limits or ExtractionLimits()
        self.decider: Decider = decider or SeverityTable()

    def check(self, call: ToolCall, context: CallContext | None = None) -> Decision:
        started = time.perf_counter()
        context = context or CallContext()
        stage = "extract"
        try:
            extraction = extract(call.arguments, self.limits)
            stage = "targets"
            targets = build_targets(call.tool, extraction.strings)
            findings = list(extraction.findings)
            for scanner in self.scanners:
                stage = f"scanner {scanner.name}"
                findings.extend(scanner.scan(call, targets, self.settings))
            stage = "provenance"
            provenance = trace(extraction.strings, context)
            findings.extend(provenance.findings())
            merged = merge_findings(findings)
            stage = "decide"
            verdict = self.decider.decide(Evidence(call=call, context=context, findings=merged, provenance=provenance))
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
        return Decision(
            effect=verdict.effect,
            reasons=verdict.reasons,
            rules=verdict.rules,
            findings=merged,
            risk=risk_of(merged),
            message=verdict.message,
            errors=verdict.errors,
            flagged=verdict.flagged,
            terminate=verdict.terminate,
            policy_digest=verdict.policy_digest,
            elapsed_ms=(time.perf_counter() - started) * 1000,
        )


def merge_findings(findings: Sequence[Finding]) -> tuple[Finding, ...]:
    """One finding per (category, path, chain), the most severe; ordered worst first, then by place."""
    best: dict[tuple[str, str, tuple[str, ...]], Finding] = {}
    for finding in findings:
        key = (finding.category, finding.path, finding.chain)
        kept = best.get(key)
        if kept is None or finding.severity > kept.severity:
            best[key] = finding
    return tuple(sorted(best.values(), key=lambda f: (-f.severity, f.category, f.path, f.chain)))
