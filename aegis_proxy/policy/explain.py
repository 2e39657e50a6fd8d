"""`aegis policy explain`: why a call got its decision, rule by rule.

The call (one `aegis check` line) goes through the whole firewall; the evidence the policy saw is then evaluated
against every candidate rule (`PolicySet.evaluate_all`). For a rule whose condition was false, the first conjunct that
was false is shown; for an error, the sub-expression that failed and why. Conjuncts are compiled here, on demand:
explain is for people, the request path never pays for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from aegis_proxy.check import parse_line
from aegis_proxy.decide import Evidence, Verdict
from aegis_proxy.firewall import Firewall
from aegis_proxy.models import Decision
from aegis_proxy.policy import ast
from aegis_proxy.policy.compiler import EvalEnv
from aegis_proxy.policy.engine import DEFAULT_RULE_ID, Evaluation, PolicySet, RuleOutcome

_TEXT_MAX = 100


class _Recorder:
    """Delegates to the policy and keeps the evidence it was given."""

    def __init__(self, policy_set: PolicySet) -> None:
        self.policy_set = policy_set
        self.evidence: Evidence | None = None

    def decide(self, evidence: Evidence) -> Verdict:
        self.evidence = evidence
        return self.policy_set.decide(evidence)


@dataclass(frozen=True, slots=True)
class RuleExplanation:
    outcome: RuleOutcome
    why: str  # one line: what made it match, not match, error or lose


@dataclass(frozen=True, slots=True)
class Explanation:
    decision: Decision
    evaluation: Evaluation | None  # None when the pipeline failed before the policy ran
    rules: tuple[RuleExplanation, ...]
    policy_set: PolicySet

    def render(self) -> str:
        return render(self)


def explain_line(policy_set: PolicySet, text: str, *, firewall: Firewall | None = None) -> Explanation:
    """Explain one `aegis check` input line. Raises InputError for a line that is not a tool call."""
    _, call, context = parse_line(text)
    recorder = _Recorder(policy_set)
    firewall = firewall or Firewall()
    saved = firewall.decider
    firewall.decider = recorder
    try:
        decision = firewall.check(call, context)
    finally:
        firewall.decider = saved
    if recorder.evidence is None:
        return Explanation(decision, None, (), policy_set)
    return explain_evidence(policy_set, recorder.evidence, decision)


def explain_evidence(policy_set: PolicySet, evidence: Evidence, decision: Decision) -> Explanation:
    evaluation = policy_set.evaluate_all(evidence)
    env = EvalEnv(evidence, policy_set.clock())
    rules = tuple(RuleExplanation(outcome, _why(policy_set, outcome, env)) for outcome in evaluation.outcomes)
    return Explanation(decision, evaluation, rules, policy_set)


# --------------------------------------------------------------------------------------------------------------------


def span_text(policy_set: PolicySet, span: ast.Span | None) -> str:
    """The source text a span covers (its first line when it spans several), whitespace collapsed and cut."""
    if span is None:
        return ""
    source = next((file.source for file in policy_set.files if file.path == span.file), None)
    if source is None:
        return ""
    lines = source.split("\n")
    if not 1 <= span.line <= len(lines):
        return ""
    line = lines[span.line - 1]
    end = span.end_column - 1 if span.end_line == span.line and span.end_column > span.column else len(line)
    text = " ".join(line[span.column - 1 : end].split())
    return text if len(text) <= _TEXT_MAX else text[: _TEXT_MAX - 3] + "..."


def _conjuncts(expr: ast.Expr) -> list[ast.Expr]:
    if isinstance(expr, ast.BoolOp) and expr.op == "and":
        return _conjuncts(expr.left) + _conjuncts(expr.right)
    return [expr]


def _first_false(policy_set: PolicySet, outcome: RuleOutcome, env: EvalEnv) -> str:
    condition = outcome.rule.rule.condition
    if condition is None:
        return ""
    parts = _conjuncts(condition)
    if len(parts) == 1:
        return span_text(policy_set, condition.span)
    for part in parts:
        try:
            value = policy_set.compiler.condition(part, outcome.rule.span.file).fn(env)
        except Exception:  # a conjunct that does not compile alone (PolicyCompileError) or fails: skip it
            continue
        if value is False:
            return span_text(policy_set, part.span)
    return span_text(policy_set, condition.span)


def _why(policy_set: PolicySet, outcome: RuleOutcome, env: EvalEnv) -> str:
    rule = outcome.rule
    error = outcome.error
    if error is not None:
        where = span_text(policy_set, error.span)
        failed = f"`{where}`: {error.reason}" if where else error.reason
        if rule.fails_closed:
            tail = "a deny/ask rule matches when its condition is an error"
            head = f"error in {failed}; {tail}"
        else:
            head = f"error in {failed}; an {rule.effect.value} rule does not match on error"
        if outcome.status == "lost":
            head += f", but it lost to {outcome.lost_to}"
        return head
    if outcome.status == "won":
        return "no condition" if rule.rule.condition is None else "condition is true"
    if outcome.status == "lost":
        return f"matched, but lost to {outcome.lost_to}"
    return f"`{_first_false(policy_set, outcome, env)}` is false"


def _verdict_line(decision: Decision) -> str:
    label = (
        "audit (allowed, flagged)" if decision.flagged and decision.effect.value == "allow" else decision.effect.value
    )
    rules = ", ".join(decision.rules) or "none"
    extra = " [terminate]" if decision.terminate else ""
    return f"decision: {label} by {rules}{extra}"


def render(explanation: Explanation) -> str:
    decision = explanation.decision
    policy_set = explanation.policy_set
    lines = [_verdict_line(decision)]
    if decision.message:
        lines.append(f"message: {decision.message}")
    files = len(policy_set.files)
    lines.append(f"policy: sha256:{policy_set.digest} ({files} file{'s' if files != 1 else ''})")
    if decision.findings:
        lines.append("findings:")
        lines += [f"  {f.severity.label} {f.category} at {f.where}: {f.message}" for f in decision.findings]
    else:
        lines.append("findings: none")
    evaluation = explanation.evaluation
    if evaluation is None:
        lines.append("the policy was not consulted: the pipeline failed before the decision")
        lines += [f"  {error}" for error in decision.errors]
        return "\n".join(lines)
    count = len(evaluation.outcomes)
    lines.append(
        f"rules ({count} apply to this tool, {evaluation.not_candidates} do not), in evaluation order:"
        if count
        else f"rules: none apply to this tool ({evaluation.not_candidates} do not)"
    )
    width = max((len(item.outcome.rule.id) for item in explanation.rules), default=0)
    for item in explanation.rules:
        rule = item.outcome.rule
        lines.append(
            f"  {item.outcome.status:<5}  {rule.id:<{width}}  {rule.effect.value:<5}  priority {rule.priority:<4}  "
            f"{rule.span}"
        )
        lines.append(f"         {rule.text}")
        lines.append(f"         -> {item.why}")
    if decision.rules == (DEFAULT_RULE_ID,):
        default = policy_set.default
        lines.append(f"default: {default.effect.value} (declared at {default.span}); no rule matched")
    else:
        default = policy_set.default
        lines.append(f"default: {default.effect.value} (declared at {default.span}); not used")
    return "\n".join(lines)


__all__ = ["Explanation", "RuleExplanation", "explain_evidence", "explain_line", "render", "span_text"]
