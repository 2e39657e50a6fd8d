"""A compiled policy: candidate rules per tool, evaluated in precedence order, first match decides.

`PolicySet` implements the `Decider` protocol (decide.py). Semantics, numbered as in docs and spec:
  3 candidates   rules whose tool pattern (and `@server` qualifier) matches the call; a qualified pattern never
                 matches a call without a server. Indexed by exact tool name plus a list of globs, cached per tool.
  4 evaluate     each candidate's condition (absent = true) gives true, false or an error value.
  5 fail closed  an error makes a deny/ask rule match and an allow/audit rule not match; recorded in Verdict.errors.
  6 precedence   lowest priority number wins; at equal priority deny > ask > audit > allow. Candidates are sorted by
                 (priority, -strength, load order) so the first match decides; rules tied with it at the same
                 priority and effect are evaluated too, and every one that matches is listed in Verdict.rules.
  7 default      no match: the set's default effect (the strictest declared), rule id "default".
  8 digest       every Verdict carries the digest of the sources (computed by the loader).
`evaluate_all` evaluates every candidate, for `aegis policy explain`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from aegis_proxy.decide import Evidence, Verdict
from aegis_proxy.models import Effect, Finding, Severity
from aegis_proxy.policy import ast
from aegis_proxy.policy.compiler import Compiler, EvalEnv, Fn, PolicyCompileError, compile_glob
from aegis_proxy.policy.errors import Diagnostic
from aegis_proxy.policy.values import EvalError, kind

_EFFECTS: Mapping[ast.PolicyEffect, Effect] = {
    ast.PolicyEffect.ALLOW: Effect.ALLOW,
    ast.PolicyEffect.AUDIT: Effect.ALLOW,  # allowed, and flagged for review
    ast.PolicyEffect.ASK: Effect.ASK,
    ast.PolicyEffect.DENY: Effect.DENY,
}
_FAIL_CLOSED = frozenset({ast.PolicyEffect.DENY, ast.PolicyEffect.ASK})  # an error makes these match
_CANDIDATE_CACHE_MAX = 4096  # (tool, server) pairs remembered; tool names come from the request, so bounded
DEFAULT_RULE_ID = "default"


@dataclass(frozen=True, slots=True)
class ToolMatcher:
    name: str
    exact: bool
    matches_name: Callable[[str], bool]
    matches_server: Callable[[str], bool] | None  # None: any server, or none

    def matches(self, tool: str, server: str | None) -> bool:
        if not self.matches_name(tool):
            return False
        if self.matches_server is None:
            return True
        return server is not None and self.matches_server(server)


@dataclass(frozen=True, slots=True, eq=False)
class CompiledRule:
    rule: ast.Rule
    index: int  # position in load order: the last tie-breaker, so evaluation order is deterministic
    condition: Fn | None
    tools: tuple[ToolMatcher, ...]
    text: str  # the rule as written, on one line, for reasons and explain

    @property
    def id(self) -> str:
        return self.rule.id

    @property
    def effect(self) -> ast.PolicyEffect:
        return self.rule.effect

    @property
    def priority(self) -> int:
        return self.rule.priority

    @property
    def span(self) -> ast.Span:
        return self.rule.span

    @property
    def fails_closed(self) -> bool:
        return self.rule.effect in _FAIL_CLOSED

    @property
    def order_key(self) -> tuple[int, int, int]:
        return (self.rule.priority, -self.rule.effect.strength, self.index)

    @property
    def tie_key(self) -> tuple[int, int]:
        return (self.rule.priority, self.rule.effect.strength)

    def applies_to(self, tool: str, server: str | None) -> bool:
        return any(matcher.matches(tool, server) for matcher in self.tools)

    def evaluate(self, env: EvalEnv) -> bool | EvalError:
        """The condition's value: True, False or an error (an exception inside it is an error, never a crash)."""
        condition = self.condition
        if condition is None:
            return True
        try:
            value = condition(env)
        except Exception as exc:  # a bug in a closure must fail closed like any other error
            return EvalError(f"internal error: {type(exc).__name__}: {exc}", self.rule.span)
        if value is True or value is False or type(value) is EvalError:
            return value
        return EvalError(f"the condition must be a boolean, got {kind(value)}", self.rule.span)


@dataclass(frozen=True, slots=True)
class RuleOutcome:
    """What one candidate rule did for one call (explain)."""

    rule: CompiledRule
    value: bool | EvalError  # the condition's value
    matched: bool  # after semantics 5: an error matches a deny/ask rule
    status: str  # "won" | "lost" | "false" | "error" (an allow/audit rule whose condition is an error)
    lost_to: str | None = None  # the winning rule's id when status is "lost"

    @property
    def error(self) -> EvalError | None:
        return self.value if type(self.value) is EvalError else None


@dataclass(frozen=True, slots=True)
class Evaluation:
    verdict: Verdict
    outcomes: tuple[RuleOutcome, ...]  # every candidate, in evaluation order
    not_candidates: int  # rules whose tool pattern does not match this call


@dataclass(frozen=True, slots=True)
class DefaultChoice:
    effect: ast.PolicyEffect
    span: ast.Span  # where the winning `default` was declared


@dataclass(eq=False)
class PolicySet:
    """A loaded, checked, compiled policy. Immutable once built (the candidate cache is an internal memo)."""

    rules: tuple[CompiledRule, ...]
    default: DefaultChoice
    digest: str
    files: tuple[ast.PolicyFile, ...] = ()
    compiler: Compiler = field(default_factory=Compiler)
    warnings: tuple[Diagnostic, ...] = ()  # static-check warnings (shadowed rules), for the CLI
    clock: Callable[[], float] = time.time  # "now" for count(within = ...)
    _exact: dict[str, list[CompiledRule]] = field(init=False, repr=False)
    _globbed: list[CompiledRule] = field(init=False, repr=False)
    _cache: dict[tuple[str, str | None], tuple[CompiledRule, ...]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._exact = {}
        self._globbed = []
        for rule in self.rules:
            if any(not matcher.exact for matcher in rule.tools):
                self._globbed.append(rule)
            for matcher in rule.tools:
                if matcher.exact:
                    bucket = self._exact.setdefault(matcher.name, [])
                    if rule not in bucket:
                        bucket.append(rule)
        self._cache = {}

    @property
    def tests(self) -> tuple[tuple[ast.PolicyFile, ast.PolicyTest], ...]:
        return tuple((file, test) for file in self.files for test in file.tests)

    @property
    def default_effect(self) -> ast.PolicyEffect:
        return self.default.effect

    def candidates(self, tool: str, server: str | None) -> tuple[CompiledRule, ...]:
        """The rules that apply to this tool (and server), in evaluation order."""
        key = (tool, server)
        found = self._cache.get(key)
        if found is not None:
            return found
        chosen = {rule.index: rule for rule in self._exact.get(tool, ()) if rule.applies_to(tool, server)}
        for rule in self._globbed:
            if rule.index not in chosen and rule.applies_to(tool, server):
                chosen[rule.index] = rule
        found = tuple(sorted(chosen.values(), key=lambda rule: rule.order_key))
        if len(self._cache) >= _CANDIDATE_CACHE_MAX:
            self._cache.clear()
        self._cache[key] = found
        return found

    def denies_unconditionally(self, tool: str, server: str | None) -> bool:
        """Whether every call to this tool (on this server) is denied by a deny rule, whatever its arguments,
        context, findings and history: the tools the proxy hides from an MCP tools/list (docs/policy-language.md).

        Walking the candidates in evaluation order (semantics 6): a deny rule with no condition (a constant-true one
        compiles to none) decides True. Before it, a deny rule with a condition does not matter (if it matches, the
        call is denied anyway) and neither does a rule whose condition is constant false; any other rule (allow,
        audit or ask, with any condition) could win for some call, so the answer is False. The default effect does
        not count: a tool no rule names stays visible, so that its attempts are audited and the policy's gap seen.
        """
        for rule in self.candidates(tool, server):
            if rule.condition is _never:
                continue
            if rule.effect is ast.PolicyEffect.DENY:
                if rule.condition is None:
                    return True
                continue
            return False
        return False

    def decide(self, evidence: Evidence) -> Verdict:
        env = EvalEnv(evidence, self.clock())
        winners: list[CompiledRule] = []
        errors: list[str] = []
        tie: tuple[int, int] | None = None
        for rule in self.candidates(evidence.call.tool, evidence.call.server):
            if tie is not None and rule.tie_key != tie:
                break  # every later rule ranks below the winner (semantics 6)
            value = rule.evaluate(env)
            if value is True:
                matched = True
            elif value is False:
                continue
            else:
                errors.append(_error_line(rule, value))
                matched = rule.fails_closed
            if matched:
                winners.append(rule)
                tie = rule.tie_key
        return self._verdict(evidence, winners, errors)

    def evaluate_all(self, evidence: Evidence) -> Evaluation:
        """Every candidate evaluated (no early stop), with the verdict `decide` gives."""
        env = EvalEnv(evidence, self.clock())
        candidates = self.candidates(evidence.call.tool, evidence.call.server)
        values = [(rule, rule.evaluate(env)) for rule in candidates]
        winners: list[CompiledRule] = []
        errors: list[str] = []
        tie: tuple[int, int] | None = None
        for rule, value in values:
            if tie is not None and rule.tie_key != tie:
                break
            if type(value) is EvalError:
                errors.append(_error_line(rule, value))
            if value is True or (type(value) is EvalError and rule.fails_closed):
                winners.append(rule)
                tie = rule.tie_key
        won = {rule.index for rule in winners}
        outcomes = []
        for rule, value in values:
            matched = value is True or (type(value) is EvalError and rule.fails_closed)
            if rule.index in won:
                outcomes.append(RuleOutcome(rule, value, True, "won"))
            elif matched:
                outcomes.append(RuleOutcome(rule, value, True, "lost", winners[0].id if winners else None))
            else:
                outcomes.append(RuleOutcome(rule, value, False, "false" if value is False else "error"))
        verdict = self._verdict(evidence, winners, errors)
        return Evaluation(verdict, tuple(outcomes), len(self.rules) - len(candidates))

    # -- verdicts ----------------------------------------------------------------------------------------------------

    def _verdict(self, evidence: Evidence, winners: Sequence[CompiledRule], errors: Sequence[str]) -> Verdict:
        tool = evidence.call.tool
        if not winners:
            effect = self.default.effect
            span = self.default.span
            reasons: tuple[str, ...] = (f"no rule matched; default {effect.value} declared at {span}",)
            message = ""
            if effect in _FAIL_CLOSED:
                verb = "blocked" if effect is ast.PolicyEffect.DENY else "held for human approval"
                message = f"aegis-proxy {verb} this {tool} call: no policy rule allows it"
            return Verdict(
                _EFFECTS[effect],
                rules=(DEFAULT_RULE_ID,),
                reasons=(*reasons, *_finding_reasons(evidence.findings)) if message else reasons,
                message=message,
                errors=tuple(errors),
                flagged=effect is ast.PolicyEffect.AUDIT,
                policy_digest=self.digest,
            )
        head = winners[0]
        effect = head.effect
        reasons = tuple(f"{rule.id} ({rule.span}): {rule.text}" for rule in winners)
        message = next((rule.rule.fallback.message for rule in winners if rule.rule.fallback.message), "") or ""
        if effect in _FAIL_CLOSED:
            reasons += _finding_reasons(evidence.findings)
            if not message:
                verb = "blocked" if effect is ast.PolicyEffect.DENY else "held for human approval"
                message = f"aegis-proxy {verb} this {tool} call (policy rule {head.id})"
                decisive = _decisive(evidence.findings)
                if decisive:
                    first = decisive[0]
                    message = f"{message}: {first.message} ({first.category} at {first.where})"
        return Verdict(
            _EFFECTS[effect],
            rules=tuple(rule.id for rule in winners),
            reasons=reasons,
            message=message,
            errors=tuple(errors),
            flagged=effect is ast.PolicyEffect.AUDIT,
            terminate=any(rule.rule.fallback.terminate for rule in winners),
            policy_digest=self.digest,
        )


def _error_line(rule: CompiledRule, error: EvalError) -> str:
    where = error.span or rule.span
    return f"{rule.id}: {error.reason} (at {where})"


def _decisive(findings: Sequence[Finding]) -> list[Finding]:
    """The worst findings, if any is at least medium: what a human reading the decision wants first."""
    worst = max((f.severity for f in findings), default=Severity.INFO)
    if worst < Severity.MEDIUM:
        return []
    return sorted((f for f in findings if f.severity == worst), key=lambda f: (f.category, f.path, f.chain))


def _finding_reasons(findings: Sequence[Finding]) -> tuple[str, ...]:
    return tuple(f"{f.severity.label} {f.category} at {f.where}: {f.message}" for f in _decisive(findings)[:5])


# --------------------------------------------------------------------------------------------------------------------
# Building a set from parsed files.


def rule_text(rule: ast.Rule, source: str) -> str:
    """The rule as written (without its `rule ID:` prefix), whitespace collapsed, cut to 160 characters."""
    lines = source.splitlines()
    span = rule.span
    if not 1 <= span.line <= len(lines):
        return f"{rule.effect.value} {', '.join(t.name for t in rule.tools)}"
    if span.end_line >= span.line and span.end_line <= len(lines) and span.end_column > 0:
        chunk = lines[span.line - 1 : span.end_line]
        chunk[-1] = chunk[-1][: span.end_column - 1]
        chunk[0] = chunk[0][span.column - 1 :]
    else:
        chunk = [_strip_comment(lines[span.line - 1][span.column - 1 :])]
    text = " ".join(" ".join(chunk).split())
    if rule.explicit_id and text.startswith("rule ") and ": " in text:
        text = text.split(": ", 1)[1]  # the id is printed next to the text anyway
    return text if len(text) <= 160 else text[:157] + "..."


def _strip_comment(line: str) -> str:
    """The line up to a `#` that is not inside a string literal."""
    quoted = escaped = False
    for index, char in enumerate(line):
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "#" and not quoted:
            return line[:index]
    return line


def strictest_default(files: Sequence[ast.PolicyFile]) -> DefaultChoice:
    """Semantics 2: every file declares a default; the set's is the strictest (first declared among equals)."""
    choice: DefaultChoice | None = None
    for file in files:
        if file.default is None:
            raise PolicyCompileError(
                f"{file.path} declares no default",
                None,
                hint="add `default deny` (or ask / allow): a policy never falls back to allow-all",
            )
        if choice is None or file.default.effect.strength > choice.effect.strength:
            choice = DefaultChoice(file.default.effect, file.default.span)
    if choice is None:
        raise PolicyCompileError("no policy file was loaded", None, hint="give at least one .aegis file")
    return choice


def _matcher(pattern: ast.ToolPattern) -> ToolMatcher:
    try:
        name_test = compile_glob(pattern.name)
        server_test = compile_glob(pattern.server) if pattern.server is not None else None
    except Exception as exc:  # PatternError and anything else: refuse the set at load
        raise PolicyCompileError(f"bad tool pattern {pattern.name!r}: {exc}", pattern.span) from None
    return ToolMatcher(pattern.name, not pattern.is_glob, name_test, server_test)


def build_policy_set(
    files: Sequence[ast.PolicyFile],
    *,
    digest: str,
    scopes: Mapping[str, Mapping[str, ast.Let]] | None = None,
    warnings: Sequence[Diagnostic] = (),
    clock: Callable[[], float] | None = None,
) -> PolicySet:
    """Compile parsed (and checked) files, in load order, into a PolicySet. Raises PolicyCompileError.

    `scopes[file.path]` are the `let` names visible in that file; by default each file sees its own.
    """
    default = strictest_default(files)
    if scopes is None:
        scopes = {file.path: {let.name: let for let in file.lets} for file in files}
    compiler = Compiler(scopes)
    compiled: list[CompiledRule] = []
    seen: dict[str, ast.Rule] = {}
    for file in files:
        for rule in file.rules:
            if rule.id in seen:
                raise PolicyCompileError(
                    f"rule id {rule.id!r} is already used at {seen[rule.id].span}",
                    rule.span,
                    hint="rule ids must be unique across the loaded files",
                )
            seen[rule.id] = rule
            if not rule.tools:
                raise PolicyCompileError(f"rule {rule.id} names no tool", rule.span)
            condition = compiler.condition(rule.condition, file.path) if rule.condition is not None else None
            fn: Fn | None = None
            if condition is not None:
                if condition.is_const:
                    if condition.const is not True and condition.const is not False:
                        raise PolicyCompileError(
                            f"the condition of rule {rule.id} is a {kind(condition.const)}, not a boolean",
                            rule.condition.span if rule.condition else rule.span,
                        )
                    if condition.const is False:
                        fn = _never
                    # constant true: same as no condition
                else:
                    fn = condition.fn
            compiled.append(
                CompiledRule(
                    rule=rule,
                    index=len(compiled),
                    condition=fn,
                    tools=tuple(_matcher(pattern) for pattern in rule.tools),
                    text=rule_text(rule, file.source),
                )
            )
    return PolicySet(
        rules=tuple(compiled),
        default=default,
        digest=digest,
        files=tuple(files),
        compiler=compiler,
        warnings=tuple(warnings),
        clock=clock or time.time,
    )


def _never(env: EvalEnv) -> bool:
    return False
