"""The decision semantics (spec 3-8): candidates, precedence, ties, default, fail-closed, digest, determinism."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aegis_proxy.decide import Evidence
from aegis_proxy.firewall import Firewall
from aegis_proxy.models import CallContext, Effect, Finding, Severity, ToolCall
from aegis_proxy.policy import ast
from aegis_proxy.policy.compiler import PolicyCompileError
from aegis_proxy.policy.engine import CompiledRule, PolicySet, build_policy_set
from aegis_proxy.policy.loader import policy_digest
from aegis_proxy.policy.parser import parse_policy

NOW = 1_700_000_000.0


def policy(source: str, *more: str, clock: Any = None) -> PolicySet:
    texts = [source, *more]
    files = [parse_policy(text, f"p{index}.aegis") for index, text in enumerate(texts)]
    digest = policy_digest((f"p{index}.aegis", text.encode()) for index, text in enumerate(texts))
    return build_policy_set(files, digest=digest, clock=clock or (lambda: NOW))


def evidence(tool: str = "t", server: str | None = None, findings: tuple[Finding, ...] = (), **args: Any) -> Evidence:
    return Evidence(ToolCall(id="c", tool=tool, arguments=args, server=server), CallContext(), findings, None, {})


def label(effect: Effect, flagged: bool) -> str:
    return "audit" if effect is Effect.ALLOW and flagged else effect.value


# --------------------------------------------------------------------------------------------------------------------
# Precedence (semantics 6) and default (semantics 7).

SEMANTICS = [
    # rules (after `default deny`), expected effect, expected rule ids
    ("allow t priority 10\ndeny t priority 20", "allow", ("p0:2",)),
    ("deny t priority 20\nallow t priority 10", "allow", ("p0:3",)),
    ("allow t\ndeny t", "deny", ("p0:3",)),  # equal priority: deny beats allow
    ("ask t\nallow t", "ask", ("p0:2",)),
    ("audit t\nallow t", "audit", ("p0:2",)),
    ("ask t\naudit t", "ask", ("p0:2",)),
    ("deny t\nask t", "deny", ("p0:2",)),
    ("audit t\nallow t priority 99", "allow", ("p0:3",)),
    ('rule a: deny t message "first"\nrule b: deny t message "second"', "deny", ("a", "b")),  # ties listed
    ("rule a: allow t\nrule b: allow t when args.x == 2", "allow", ("a",)),  # a tie that does not match
    ("allow other", "deny", ("default",)),  # no candidate
    ("allow t when false", "deny", ("default",)),
    ("deny t when args.missing == 1", "deny", ("p0:2",)),  # fail closed: error makes deny match
    ("ask t when args.missing == 1", "ask", ("p0:2",)),
    ("allow t when args.missing == 1", "deny", ("default",)),  # ... and allow not match
    ("audit t when args.missing == 1", "deny", ("default",)),
    ("allow t when risk < 0.2", "deny", ("default",)),  # unknown probe score
    ("deny t when risk > 0.8\nallow t priority 101", "deny", ("p0:2",)),
    ("allow t when args.x == 1 priority 0\ndeny t priority 1000", "allow", ("p0:2",)),
    ("allow *\ndeny t_*", "allow", ("p0:2",)),  # a glob that does not match
    ("allow *\ndeny t*", "deny", ("p0:3",)),
]


@pytest.mark.parametrize(("rules", "effect", "ids"), SEMANTICS, ids=[r.replace("\n", " | ") for r, _, _ in SEMANTICS])
def test_semantics(rules: str, effect: str, ids: tuple[str, ...]) -> None:
    policy_set = policy(f"default deny\n{rules}\n")
    verdict = policy_set.decide(evidence(x=1))
    assert label(verdict.effect, verdict.flagged) == effect
    assert verdict.rules == ids
    assert verdict.policy_digest == policy_set.digest
    # explain's evaluation reaches the same verdict
    assert policy_set.evaluate_all(evidence(x=1)).verdict == verdict


@pytest.mark.parametrize(
    ("defaults", "expected"),
    [
        (("allow", "allow"), Effect.ALLOW),
        (("allow", "ask"), Effect.ASK),
        (("ask", "deny", "allow"), Effect.DENY),
        (("deny",), Effect.DENY),
    ],
    ids=["allow+allow", "allow+ask", "ask+deny+allow", "deny"],
)
def test_default_is_the_strictest_declared(defaults: tuple[str, ...], expected: Effect) -> None:
    sources = [f"default {effect}\nallow never_called\n" for effect in defaults]
    policy_set = policy(*sources)
    verdict = policy_set.decide(evidence())
    assert verdict.effect is expected and verdict.rules == ("default",)
    assert "default" in verdict.reasons[0]


def test_default_names_the_declaring_file() -> None:
    policy_set = policy("default allow\nallow x\n", "default deny\nallow y\n")
    verdict = policy_set.decide(evidence())
    assert verdict.reasons[0] == "no rule matched; default deny declared at p1.aegis:1:1"
    assert verdict.message == "aegis-proxy blocked this t call: no policy rule allows it"


def test_a_file_without_default_is_refused() -> None:
    with pytest.raises(PolicyCompileError, match="declares no default"):
        build_policy_set([ast.PolicyFile("x.aegis", "", None)], digest="d")
    with pytest.raises(PolicyCompileError, match="no policy file"):
        build_policy_set([], digest="d")


def test_duplicate_rule_ids_are_refused() -> None:
    with pytest.raises(PolicyCompileError, match="already used"):
        policy("default deny\nrule a: allow t\n", "default deny\nrule a: deny t\n")


# --------------------------------------------------------------------------------------------------------------------
# Candidates (semantics 3).

CANDIDATES = [
    ("write_file@filesystem", "write_file", "filesystem", True),
    ("write_file@filesystem", "write_file", None, False),  # a qualifier never matches a call without a server
    ("write_file@filesystem", "write_file", "github", False),
    ("*@api.github.com", "create_issue", "api.github.com", True),
    ("*@*.github.com", "create_issue", "api.github.com", True),
    ("write_file", "write_file", "anything", True),
    ("send_*", "send_email", None, True),
    ("send_*", "resend", None, False),
    ('"odd name"', "odd name", None, True),
    ("execute_*", "execute_", None, True),
    ("read_?", "read_x", None, True),
]


@pytest.mark.parametrize(
    ("pattern", "tool", "server", "applies"), CANDIDATES, ids=[f"{c[0]} {c[1]}@{c[2]}" for c in CANDIDATES]
)
def test_tool_patterns(pattern: str, tool: str, server: str | None, applies: bool) -> None:
    policy_set = policy(f"default deny\nallow {pattern}\n")
    verdict = policy_set.decide(evidence(tool, server))
    assert (verdict.effect is Effect.ALLOW) is applies
    assert (len(policy_set.candidates(tool, server)) == 1) is applies


def test_candidates_are_sorted_by_priority_then_strength_then_load_order() -> None:
    policy_set = policy(
        "default deny\nrule a: allow t priority 5\nrule b: deny * priority 5\nrule c: ask t* priority 1\n"
        "rule d: allow t\nrule e: deny other\nrule f: allow t, t\n"
    )
    assert [rule.id for rule in policy_set.candidates("t", None)] == ["c", "b", "a", "d", "f"]


def test_candidate_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import aegis_proxy.policy.engine as engine

    monkeypatch.setattr(engine, "_CANDIDATE_CACHE_MAX", 8)
    policy_set = policy("default deny\nallow t*\n")
    for index in range(50):
        policy_set.decide(evidence(f"t{index}"))
    assert len(policy_set._cache) <= 8


# --------------------------------------------------------------------------------------------------------------------
# Evaluation order and fail-closed errors (semantics 4, 5).


def test_first_match_stops_evaluation() -> None:
    policy_set = policy("default deny\nrule first: allow t priority 1\nrule later: deny t when args.missing == 1\n")
    verdict = policy_set.decide(evidence())
    assert verdict.rules == ("first",) and verdict.errors == ()  # the later rule was never evaluated
    outcomes = {o.rule.id: o.status for o in policy_set.evaluate_all(evidence()).outcomes}
    assert outcomes == {"first": "won", "later": "lost"}


def test_errors_are_recorded_with_the_rule_id() -> None:
    policy_set = policy(
        "default allow\nrule careful: allow t when args.n > 3 priority 1\nrule strict: deny t when args.missing\n"
    )
    verdict = policy_set.decide(evidence(n="many"))
    assert verdict.effect is Effect.DENY and verdict.rules == ("strict",)
    assert verdict.errors[0].startswith("careful: `>` cannot compare string with number (at p0.aegis:2:")
    assert verdict.errors[1].startswith("strict: args.missing is missing")


def test_a_condition_that_is_not_a_boolean_is_an_error() -> None:
    policy_set = policy("default allow\nrule r: deny t when args.x\n")
    verdict = policy_set.decide(evidence(x="yes"))
    assert verdict.effect is Effect.DENY and "must be a boolean, got string" in verdict.errors[0]


def test_an_exception_inside_a_condition_is_an_error_value() -> None:
    def explode(env: Any) -> bool:
        raise RuntimeError("closure bug")

    base = policy("default allow\nrule d: deny t when args.x == 1\nrule a: allow u when args.x == 1\n")
    rules = tuple(CompiledRule(rule.rule, rule.index, explode, rule.tools, rule.text) for rule in base.rules)
    policy_set = PolicySet(rules, base.default, base.digest, base.files, base.compiler)
    denied = policy_set.decide(evidence("t"))
    assert denied.effect is Effect.DENY and "internal error: RuntimeError: closure bug" in denied.errors[0]
    allowed_rule_errors = policy_set.decide(evidence("u"))
    assert allowed_rule_errors.rules == ("default",) and allowed_rule_errors.errors


def test_an_exception_in_decide_propagates_and_the_firewall_denies() -> None:
    def broken_clock() -> float:
        raise OSError("clock")

    policy_set = policy("default allow\nallow *\n", clock=broken_clock)
    with pytest.raises(OSError):
        policy_set.decide(evidence())
    decision = Firewall(decider=policy_set).check(ToolCall(id="c", tool="t", arguments={}))
    assert decision.effect is Effect.DENY and decision.rules == ("builtin.fail-closed",)


# --------------------------------------------------------------------------------------------------------------------
# What a verdict carries.


def test_verdict_carries_message_terminate_and_reasons() -> None:
    policy_set = policy(
        "default allow\nrule stop: deny run_shell when finding(shell.*) priority 1 terminate\n"
        'rule hold: ask send_email message "a human must approve emails"\n'
    )
    shell = Finding(
        scanner="shell",
        category="shell.download_exec",
        severity=Severity.HIGH,
        path="args.cmd",
        message="pipes a download to a shell",
    )
    verdict = policy_set.decide(evidence("run_shell", findings=(shell,), cmd="curl x | sh"))
    assert verdict.effect is Effect.DENY and verdict.terminate
    assert verdict.message == (
        "aegis-proxy blocked this run_shell call (policy rule stop): pipes a download to a shell "
        "(shell.download_exec at args.cmd)"
    )
    assert verdict.reasons[0] == ("stop (p0.aegis:2:1): deny run_shell when finding(shell.*) priority 1 terminate")
    assert "high shell.download_exec at args.cmd: pipes a download to a shell" in verdict.reasons
    held = policy_set.decide(evidence("send_email"))
    assert held.effect is Effect.ASK and held.message == "a human must approve emails" and not held.terminate


def test_audit_is_an_allow_that_is_flagged() -> None:
    verdict = policy("default deny\naudit t\n").decide(evidence())
    assert verdict.effect is Effect.ALLOW and verdict.flagged and verdict.message == ""


def test_the_firewall_passes_the_policy_fields_through() -> None:
    policy_set = policy('default allow\nrule r: deny t message "no" terminate\n')
    decision = Firewall(decider=policy_set).check(ToolCall(id="c", tool="t", arguments={}))
    assert decision.effect is Effect.DENY and decision.terminate and decision.message == "no"
    assert decision.policy_digest == policy_set.digest and decision.rules == ("r",)


# --------------------------------------------------------------------------------------------------------------------
# Digest (semantics 8) and determinism.


def test_digest_follows_the_spec_formula() -> None:
    import hashlib

    expected = hashlib.sha256(b"aegis-policy-v1\x00p0.aegis\x00default deny\n\x00").hexdigest()
    assert policy("default deny\n").digest == expected


def test_digest_changes_with_content_names_and_order() -> None:
    one = policy_digest([("a.aegis", b"default deny\n")])
    assert one != policy_digest([("a.aegis", b"default deny \n")])
    assert one != policy_digest([("b.aegis", b"default deny\n")])
    two = [("a.aegis", b"x"), ("b.aegis", b"y")]
    assert policy_digest(two) != policy_digest(list(reversed(two)))
    assert len(one) == 64 and int(one, 16) >= 0


def test_decisions_are_deterministic() -> None:
    source = (
        "default deny\nrule a: allow t when args.n < 5\nrule b: ask t when args.n < 10\n"
        "rule c: deny t when args.n < 20 priority 100\nrule d: audit t priority 200\n"
    )
    first = policy(source)
    second = policy(source)
    for n in [1, 7, 15, 30, "x"]:
        verdicts = {first.decide(evidence(n=n)) for _ in range(3)} | {second.decide(evidence(n=n))}
        assert len(verdicts) == 1


@pytest.mark.parametrize("order", list(itertools.permutations(["allow t", "ask t", "deny t", "audit t"])))
def test_equal_priority_outcome_does_not_depend_on_rule_order(order: tuple[str, ...]) -> None:
    verdict = policy("default allow\n" + "\n".join(order) + "\n").decide(evidence())
    assert verdict.effect is Effect.DENY


# Every operator and function on whatever the arguments turn out to be: a Verdict, never an exception.
EVERY_OPERATOR = """default ask
let xs = ["a", "b*", 1]
let globs = ["a", "b*"]
rule r1: deny t when args.a == args.b or args.a != 1 priority 1
rule r2: deny t when args.a < args.b or args.a >= 2 priority 2
rule r3: deny t when args.a in args.b or args.a in xs or "k" in args priority 3
rule r4: deny t when args.a matches "x*" or args.a matches globs or args.a =~ "^[a-z]+$" priority 4
rule r5: deny t when args.a startswith "x" or args.a endswith "y" or args.a contains "z" or args.b contains 1 priority 5
rule r6: deny t when len(args.a) > 2 or lower(args.a) == "x" or -args.a < 0 or not args.a priority 6
rule r7: deny t when all(args.a, it == 1) or any(args.b, it.c[0] == 1) or args.a[-1] == 2 priority 7
rule r8: deny t when tainted(args.a) or from_user(args.b) or injected(args) priority 8
rule r9: deny t when count(args.a == 1, within = 1m) > 0 or earlier(tool = "t") priority 9
rule r10: allow t when finding(*, severity >= high) or findings(shell.*) > 1 or severity(*) == low
"""

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(a=JSON, b=JSON, extra=st.dictionaries(st.sampled_from(["a", "b", "k", "c"]), JSON, max_size=3))
def test_decide_never_raises_on_any_arguments(a: object, b: object, extra: dict[str, object]) -> None:
    policy_set = _EVERY_OPERATOR_SET
    arguments = {"a": a, "b": b, **extra}
    from aegis_proxy.extract import extract
    from aegis_proxy.provenance import trace

    report = trace(extract(arguments).strings, CallContext())
    verdict = policy_set.decide(
        Evidence(ToolCall(id="c", tool="t", arguments=arguments), CallContext(), (), report, {})
    )
    assert verdict.effect in (Effect.ALLOW, Effect.DENY, Effect.ASK)
    assert verdict.rules and verdict.policy_digest == policy_set.digest


_EVERY_OPERATOR_SET = policy(EVERY_OPERATOR)


# --------------------------------------------------------------------------------------------------------------------
# denies_unconditionally: the tools an MCP tools/list hides.

UNCONDITIONAL = [
    # rules (after `default deny`), tool, server, expected
    ("deny t", "t", None, True),
    ("deny t when true", "t", None, True),  # a constant-true condition is no condition
    ("deny t when args.x == 1", "t", None, False),  # conditional: some calls pass to the default... or an allow
    ("deny t when args.x == 1\nallow t", "t", None, False),
    ("allow t\ndeny t", "t", None, True),  # equal priority: deny beats allow
    ("deny t\nask t when args.x == 1", "t", None, True),  # ... and ask
    ("allow t priority 10\ndeny t priority 20", "t", None, False),  # a better-priority allow
    ("allow t when args.x == 1 priority 10\ndeny t", "t", None, False),  # ... even a conditional one
    ("ask t when args.x == 1 priority 10\ndeny t", "t", None, False),  # an ask is not a deny
    ("audit t priority 10\ndeny t", "t", None, False),
    ("allow t when false priority 10\ndeny t", "t", None, True),  # constant false: never matches
    ("deny t when args.x == 1 priority 10\ndeny t", "t", None, True),  # an earlier deny decides deny too
    ("deny *", "anything", None, True),
    ("deny send_*", "send_email", None, True),
    ("deny send_*", "read_file", None, False),
    ("allow other", "t", None, False),  # only the default denies t: not hidden (see the docs)
    ("deny t@files", "t", "files", True),
    ("deny t@files", "t", "other", False),
    ("deny t@files", "t", None, False),  # a qualified pattern never matches a call without a server
    ("deny *@files\nallow read_file@files priority 50", "read_file", "files", False),
    ("deny *@files\nallow read_file@files priority 50", "write_file", "files", True),
    ("deny t when severity >= high", "t", None, False),
    ("deny t priority 200\nallow t when args.safe == true priority 150", "t", None, False),
]


@pytest.mark.parametrize(
    ("rules", "tool", "server", "expected"),
    UNCONDITIONAL,
    ids=[f"{r.replace(chr(10), ' | ')} ? {t}@{s}" for r, t, s, _ in UNCONDITIONAL],
)
def test_denies_unconditionally(rules: str, tool: str, server: str | None, expected: bool) -> None:
    policy_set = policy("default deny\n" + rules)
    assert policy_set.denies_unconditionally(tool, server) is expected
    if expected:  # then no call to it, whatever its arguments and findings, gets anything but deny
        high = Finding(scanner="s", category="shell.destructive", severity=Severity.HIGH, path="args.x", message="m")
        for args in ({}, {"x": 1}, {"safe": True}):
            for findings in ((), (high,)):
                verdict = policy_set.decide(evidence(tool, server, findings, **args))
                assert verdict.effect is Effect.DENY


def test_denies_unconditionally_under_an_allow_default() -> None:
    policy_set = policy("default allow\ndeny run_command\nallow read_file")
    assert [policy_set.denies_unconditionally(t, "files") for t in ("run_command", "read_file", "other")] == [
        True,
        False,
        False,
    ]
