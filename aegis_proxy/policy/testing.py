"""Inline policy tests (`test "name" { call ...; expect ... }`), run through the whole firewall.

Each test's call goes through a `Firewall(decider=policy_set)`, so extraction, the scanners and provenance take part
exactly as in production: a test that expects `deny` for `curl x | sh` checks the rule *and* that the scanner finds
`shell.download_exec`. `expect audit` means allowed and flagged; `expect allow` means allowed and not flagged.
Output follows `opa test -v`:

    PASS: policies/default.aegis: blocks curl pipe sh (0.3ms)
    FAIL: policies/default.aegis: history (0.4ms)
      expected deny, got allow (rules: default)
    --------------------------------------------------------------------------------
    1 passed, 1 failed
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from aegis_proxy.firewall import Firewall
from aegis_proxy.models import CallContext, Decision, Effect, Message, PriorCall, Role, ToolCall
from aegis_proxy.policy import ast
from aegis_proxy.policy.engine import PolicySet
from aegis_proxy.policy.errors import PolicyError
from aegis_proxy.policy.loader import load_policy

POLICY_SUFFIX = ".aegis"
_SEPARATOR = "-" * 80
_HISTORY_SPACING = 1.0  # seconds between the history calls of a test, ending one spacing before "now"


@dataclass(frozen=True, slots=True)
class TestResult:
    file: str
    name: str
    passed: bool
    expected: str  # allow | deny | ask | audit
    expected_rule: str | None
    actual: str  # allow | deny | ask | audit (allowed and flagged)
    rules: tuple[str, ...]  # what determined the actual effect
    elapsed_ms: float
    span: ast.Span | None = None
    errors: tuple[str, ...] = ()

    __test__ = False  # not a pytest test class

    @property
    def detail(self) -> str:
        """Why it failed, in one line (empty when it passed)."""
        if self.passed:
            return ""
        wanted = self.expected + (f' by rule "{self.expected_rule}"' if self.expected_rule else "")
        text = f"expected {wanted}, got {self.actual} (rules: {', '.join(self.rules) or 'none'})"
        if self.errors:
            text += "; errors: " + "; ".join(self.errors)
        return text

    def render(self) -> str:
        line = f"{'PASS' if self.passed else 'FAIL'}: {self.file}: {self.name} ({self.elapsed_ms:.1f}ms)"
        return line if self.passed else f"{line}\n  {self.detail}"


@dataclass(frozen=True, slots=True)
class LoadFailure:
    file: str
    error: str  # rendered diagnostics

    def render(self) -> str:
        body = "\n".join("  " + line for line in self.error.splitlines())
        return f"ERROR: {self.file}: the policy does not load\n{body}"


@dataclass(frozen=True, slots=True)
class TestReport:
    results: tuple[TestResult, ...]
    failures: tuple[LoadFailure, ...] = ()
    files: int = 0  # policy files whose tests were run

    __test__ = False

    @property
    def passed(self) -> int:
        return sum(1 for result in self.results if result.passed)

    @property
    def failed(self) -> int:
        return sum(1 for result in self.results if not result.passed) + len(self.failures)

    @property
    def ok(self) -> bool:
        return self.failed == 0

    def render(self, *, verbose: bool = True) -> str:
        lines = [failure.render() for failure in self.failures]
        lines += [result.render() for result in self.results if verbose or not result.passed]
        if not self.results and not self.failures:
            lines.append(f"no tests found in {self.files} policy file{'s' if self.files != 1 else ''}")
        lines.append(_SEPARATOR)
        lines.append(f"{self.passed} passed, {self.failed} failed")
        return "\n".join(lines)


def effect_label(decision: Decision) -> str:
    """The effect as tests name it: audit is an allow that was flagged."""
    if decision.effect is Effect.ALLOW and decision.flagged:
        return ast.PolicyEffect.AUDIT.value
    return decision.effect.value


def build_case(test: ast.PolicyTest, now: float) -> tuple[ToolCall, CallContext]:
    """The call and context a test describes. History calls are spaced one second apart, ending before `now`."""
    call = ToolCall(id=f"test:{test.name}", tool=test.call.tool, arguments=test.call.arguments, server=test.call.server)  # type: ignore[arg-type]
    messages = tuple(
        Message(role=Role(message.role), content=message.content, name=message.name) for message in test.context
    )
    count = len(test.history)
    history = tuple(
        PriorCall(
            tool=prior.tool,
            arguments=prior.arguments,  # type: ignore[arg-type]
            effect=Effect.ALLOW,
            at=now - _HISTORY_SPACING * (count - index),
        )
        for index, prior in enumerate(test.history)
    )
    return call, CallContext(session_id=f"test:{test.name}", messages=messages, history=history)


def run_tests(
    policy_set: PolicySet,
    *,
    files: Iterable[str] | None = None,
    firewall: Firewall | None = None,
) -> list[TestResult]:
    """Run the inline tests of the set's files (all, or those whose path is in `files`) through a full firewall."""
    firewall = firewall or Firewall(decider=policy_set)
    wanted = set(files) if files is not None else None
    results = []
    for file, test in policy_set.tests:
        if wanted is not None and file.path not in wanted:
            continue
        results.append(run_test(policy_set, file.path, test, firewall))
    return results


def run_test(policy_set: PolicySet, file: str, test: ast.PolicyTest, firewall: Firewall) -> TestResult:
    started = time.perf_counter()
    expected = test.expect.value
    try:
        call, context = build_case(test, policy_set.clock())
    except (ValueError, TypeError) as exc:  # a role the firewall does not know, arguments that are not JSON
        return TestResult(file, test.name, False, expected, test.expect_rule, "error", (), 0.0, test.span, (str(exc),))
    decision = firewall.check(call, context)
    elapsed = (time.perf_counter() - started) * 1000
    actual = effect_label(decision)
    passed = actual == expected and (test.expect_rule is None or test.expect_rule in decision.rules)
    return TestResult(
        file, test.name, passed, expected, test.expect_rule, actual, decision.rules, elapsed, test.span, decision.errors
    )


def discover(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Policy files under the given files and directories (recursively, `*.aegis`), sorted, each once."""
    found: dict[str, None] = {}
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for child in sorted(path.rglob(f"*{POLICY_SUFFIX}")):
                if child.is_file():
                    found.setdefault(os.path.normpath(child), None)
        else:
            found.setdefault(os.path.normpath(path), None)
    return list(found)


def run_test_paths(paths: Sequence[str | os.PathLike[str]], *, firewall: Firewall | None = None) -> TestReport:
    """Each policy file is loaded as its own root (with its includes) and runs its own tests against that set."""
    files = discover(paths)
    results: list[TestResult] = []
    failures: list[LoadFailure] = []
    firewall = firewall or Firewall()
    for file in files:
        try:
            policy_set = load_policy([file])
        except PolicyError as exc:
            failures.append(LoadFailure(file, exc.render()))
            continue
        firewall.decider = policy_set
        results.extend(run_tests(policy_set, files=[policy_set.files[0].path], firewall=firewall))
    return TestReport(tuple(results), tuple(failures), len(files))
