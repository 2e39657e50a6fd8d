from __future__ import annotations

import pytest

from aegis_proxy.decide import Evidence, SeverityTable, risk_of
from aegis_proxy.models import CallContext, Effect, Finding, Severity, ToolCall

CALL = ToolCall(id="c", tool="run_shell", arguments={})


def finding(severity: Severity, category: str = "shell.destructive") -> Finding:
    return Finding(scanner="shell", category=category, severity=severity, path="args.cmd", message="bad")


@pytest.mark.parametrize(
    ("severities", "effect", "rule"),
    [
        ((), Effect.ALLOW, "builtin.allow"),
        ((Severity.INFO, Severity.LOW), Effect.ALLOW, "builtin.allow"),
        ((Severity.MEDIUM,), Effect.ASK, "builtin.medium"),
        ((Severity.LOW, Severity.HIGH), Effect.DENY, "builtin.high"),
        ((Severity.MEDIUM, Severity.CRITICAL), Effect.DENY, "builtin.critical"),
    ],
)
def test_severity_table(severities: tuple[Severity, ...], effect: Effect, rule: str) -> None:
    findings = tuple(finding(s) for s in severities)
    verdict = SeverityTable().decide(Evidence(call=CALL, context=CallContext(), findings=findings))
    assert verdict.effect is effect
    assert verdict.rules == (rule,)
    if effect is not Effect.ALLOW:
        assert "run_shell" in verdict.message and "shell.destructive" in verdict.message


@pytest.mark.parametrize(
    ("severities", "risk"),
    [((), 0.0), ((Severity.INFO,), 0.05), ((Severity.LOW, Severity.MEDIUM), 0.5), ((Severity.CRITICAL,), 1.0)],
)
def test_risk_is_the_worst_severity(severities: tuple[Severity, ...], risk: float) -> None:
    assert risk_of(tuple(finding(s) for s in severities)) == risk
