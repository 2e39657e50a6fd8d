from __future__ import annotations

import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aegis_proxy.policy.ast import (
    BoolOp,
    Call,
    Category,
    Compare,
    Duration,
    Expr,
    ListExpr,
    Literal,
    Name,
    Neg,
    Not,
    Path,
    PolicyEffect,
    PolicyFile,
    SeverityConst,
    Span,
)
from aegis_proxy.policy.errors import PolicySyntaxError
from aegis_proxy.policy.parser import KEYWORDS, MISTAKES, parse_policy


def shape(expr: Expr) -> str:
    """A span-free rendering of an expression, so tables stay readable."""
    if isinstance(expr, Literal):
        return json.dumps(expr.value)
    if isinstance(expr, Name):
        return expr.name
    if isinstance(expr, Path):
        return expr.dotted()
    if isinstance(expr, SeverityConst):
        return f"{expr.name}!"
    if isinstance(expr, Category):
        return f"cat:{expr.pattern}"
    if isinstance(expr, Duration):
        return f"dur:{expr.seconds:g}"
    if isinstance(expr, Not):
        return f"(not {shape(expr.operand)})"
    if isinstance(expr, Neg):
        return f"(- {shape(expr.operand)})"
    if isinstance(expr, BoolOp | Compare):
        return f"({expr.op} {shape(expr.left)} {shape(expr.right)})"
    if isinstance(expr, ListExpr):
        return "[" + ", ".join(shape(item) for item in expr.items) + "]"
    if isinstance(expr, Call):
        parts = [shape(arg) for arg in expr.args] + [f"{kw.name}={shape(kw.value)}" for kw in expr.kwargs]
        return f"{expr.func}({', '.join(parts)})"
    raise AssertionError(type(expr))


def condition(text: str) -> Expr:
    policy = parse_policy(f"default deny\ndeny t when {text}\n", "p.aegis")
    rule_condition = policy.rules[0].condition
    assert rule_condition is not None
    return rule_condition


def syntax_error(source: str) -> PolicySyntaxError:
    with pytest.raises(PolicySyntaxError) as info:
        parse_policy(source, "policies/p.aegis")
    return info.value


# --- expressions ----------------------------------------------------------------------------------------------------

EXPRESSIONS = [
    # literals
    ('"a\\"b\\u00e9"', '"a\\"b\\u00e9"', "json-string-escapes"),
    ("42", "42", "int"),
    ("-1.5", "-1.5", "negative-float-folded"),
    ("true", "true", "true"),
    ("null", "null", "null"),
    ('[1, "a", [true]]', '[1, "a", [true]]', "nested-list"),
    ("[]", "[]", "empty-list"),
    ("high", "high!", "severity-constant"),
    # names and paths
    ("tool", "tool", "builtin-name"),
    ("protected", "protected", "let-name"),
    ("args", "args", "bare-args"),
    ("args.a.b[0]", "args.a.b[0]", "dotted-path-with-index"),
    ('args["odd key"].x', 'args["odd key"].x', "quoted-key-then-member"),
    ("args.items[-1]", "args.items[-1]", "negative-index"),
    ("args.default", "args.default", "keyword-as-member"),
    # precedence: or < and < not < comparison < unary minus
    ("a or b and c", "(or a (and b c))", "and-binds-tighter"),
    ("a and b or c", "(or (and a b) c)", "left-or"),
    ("a or b or c", "(or (or a b) c)", "or-is-left-associative"),
    ("not a and b", "(and (not a) b)", "not-binds-tighter-than-and"),
    ("not args.x == 1", "(not (== args.x 1))", "not-is-looser-than-comparison"),
    ("not not a", "(not (not a))", "double-not"),
    ("(a or b) and c", "(and (or a b) c)", "parentheses"),
    ("-args.n < 3", "(< (- args.n) 3)", "unary-minus-on-path"),
    # every comparison operator
    ("risk >= 0.5", "(>= risk 0.5)", "ge"),
    ('tool != "x"', '(!= tool "x")', "ne"),
    ("args.b in protected", "(in args.b protected)", "in"),
    ('args.b not in ["a"]', '(not (in args.b ["a"]))', "not-in-sugar"),
    ('args.p not contains ".."', '(not (contains args.p ".."))', "not-contains-sugar"),
    ('args.p matches "*.env"', '(matches args.p "*.env")', "matches"),
    ('args.u =~ "^https?://"', '(=~ args.u "^https?://")', "regex"),
    ('args.p startswith "/w/"', '(startswith args.p "/w/")', "startswith"),
    ('args.p endswith ".md"', '(endswith args.p ".md")', "endswith"),
    # functions
    ("len(args.x) > 2", "(> len(args.x) 2)", "len"),
    ("finding(shell.download_exec)", "finding(cat:shell.download_exec)", "finding-bare-dotted"),
    ("finding(paths.*)", "finding(cat:paths.*)", "finding-bare-glob"),
    ('finding("secrets.*")', "finding(cat:secrets.*)", "finding-quoted-glob"),
    ("finding(shell.*, severity >= high)", "finding(cat:shell.*, (>= severity high!))", "finding-with-filter"),
    ("findings(sql.*) > 1", "(> findings(cat:sql.*) 1)", "findings-count"),
    ("severity(shell.*) >= medium", "(>= severity(cat:shell.*) medium!)", "severity-function"),
    ("tainted(args.to[0])", "tainted(args.to[0])", "provenance"),
    ('all(args.to, it endswith "@c")', 'all(args.to, (endswith it "@c"))', "all-with-it"),
    ("any(args.xs, it.name == 1)", "any(args.xs, (== it.name 1))", "it-path"),
    ("any(args.xs, it[0] == 1)", "any(args.xs, (== it[0] 1))", "it-index"),
    ('count(tool = "send", within = 10m) > 5', '(> count((== tool "send"), within=dur:600) 5)', "count-filter"),
    (
        'earlier(tool = "read" and args.p matches "*.env")',
        'earlier((and (== tool "read") (matches args.p "*.env")))',
        "earlier-filter-with-and",
    ),
    ("count(within = 1d) > 100", "(> count(within=dur:86400) 100)", "count-without-filter"),
    ('count(tool == "a", within = 30s) > 1', '(> count((== tool "a"), within=dur:30) 1)', "count-double-equals"),
    ("count(within = 2h) > 0", "(> count(within=dur:7200) 0)", "hours"),
    ("count(within = 1.5m) > 0", "(> count(within=dur:90) 0)", "fractional-duration"),
]


@pytest.mark.parametrize(("text", "expected"), [(t, e) for t, e, _ in EXPRESSIONS], ids=[i for *_, i in EXPRESSIONS])
def test_expressions(text: str, expected: str) -> None:
    assert shape(condition(text)) == expected


def test_comments_and_newlines_are_whitespace() -> None:
    policy = parse_policy(
        "# header\ndefault deny # trailing\ndeny\n  run_shell # tool\n  when # why\n  args.x\n  ==\n  1\n", "p.aegis"
    )
    assert [shape(r.condition) for r in policy.rules if r.condition] == ["(== args.x 1)"]


# --- declarations ---------------------------------------------------------------------------------------------------


def test_declarations_and_order() -> None:
    source = "\n".join(
        [
            "default ask",
            'let xs = ["a"]',
            'include "common.aegis"',
            "allow read_file",
            'test "t" { call read_file(path = "/x") expect allow }',
        ]
    )
    policy = parse_policy(source, "policies/base.aegis")
    assert isinstance(policy, PolicyFile)
    assert policy.path == "policies/base.aegis" and policy.source == source
    assert policy.default is not None and policy.default.effect is PolicyEffect.ASK
    assert [let.name for let in policy.lets] == ["xs"]
    assert [inc.path for inc in policy.includes] == ["common.aegis"]
    assert [type(item).__name__ for item in policy.order] == ["DefaultDecl", "Let", "Include", "Rule", "PolicyTest"]


def test_two_defaults_parse_and_are_left_to_the_checks() -> None:
    policy = parse_policy("default deny\ndefault allow\nallow x\n", "p.aegis")
    assert policy.default is not None and policy.default.effect is PolicyEffect.DENY
    assert sum(type(item).__name__ == "DefaultDecl" for item in policy.order) == 2


RULES = [
    # source, id, explicit, effect, tools (name@server), priority, message, terminate
    ("deny run_shell", "p:2", False, "deny", ["run_shell"], 100, None, False, "derived-id"),
    ("rule no-curl.v2: deny bash", "no-curl.v2", True, "deny", ["bash"], 100, None, False, "explicit-id-dash-dot"),
    ("allow read_*, list_?", "p:2", False, "allow", ["read_*", "list_?"], 100, None, False, "globs"),
    ("ask *", "p:2", False, "ask", ["*"], 100, None, False, "star"),
    ("audit mcp__fs__*", "p:2", False, "audit", ["mcp__fs__*"], 100, None, False, "mcp-glob"),
    ("allow write_file@filesystem", "p:2", False, "allow", ["write_file@filesystem"], 100, None, False, "server"),
    ("deny *@api.github.com", "p:2", False, "deny", ["*@api.github.com"], 100, None, False, "dotted-host-server"),
    ('deny "odd name"@"my server"', "p:2", False, "deny", ["odd name@my server"], 100, None, False, "quoted"),
    ("deny get-issue, github.create", "p:2", False, "deny", ["get-issue", "github.create"], 100, None, False, "dash"),
    ("deny x priority 0", "p:2", False, "deny", ["x"], 0, None, False, "priority-0"),
    ("deny x priority 1000", "p:2", False, "deny", ["x"], 1000, None, False, "priority-1000"),
    ('deny x message "no"', "p:2", False, "deny", ["x"], 100, "no", False, "message"),
    ("deny x terminate", "p:2", False, "deny", ["x"], 100, None, True, "terminate"),
    ('deny x terminate message "m" priority 5', "p:2", False, "deny", ["x"], 5, "m", True, "options-any-order"),
]


@pytest.mark.parametrize(
    ("source", "rule_id", "explicit", "effect", "tools", "priority", "message", "terminate"),
    [r[:-1] for r in RULES],
    ids=[r[-1] for r in RULES],
)
def test_rules(
    source: str,
    rule_id: str,
    explicit: bool,
    effect: str,
    tools: list[str],
    priority: int,
    message: str | None,
    terminate: bool,
) -> None:
    (rule,) = parse_policy(f"default deny\n{source}\n", "policies/p.aegis").rules
    assert (rule.id, rule.explicit_id, rule.effect.value, rule.priority) == (rule_id, explicit, effect, priority)
    assert [t.name + (f"@{t.server}" if t.server else "") for t in rule.tools] == tools
    assert (rule.fallback.message, rule.fallback.terminate) == (message, terminate)


def test_spans_point_at_what_was_written() -> None:
    source = "default deny\nrule r1: deny run_shell\n  when args.cmd == 1\n"
    (rule,) = parse_policy(source, "f.aegis").rules
    assert rule.span == Span("f.aegis", 2, 1, 3, 21)
    assert rule.tools[0].span == Span("f.aegis", 2, 15, 2, 24)
    assert isinstance(rule.condition, Compare)
    assert rule.condition.left.span == Span("f.aegis", 3, 8, 3, 16)
    assert rule.condition.right.span == Span("f.aegis", 3, 20, 3, 21)


def test_derived_ids_use_the_stem_and_the_rule_line() -> None:
    policy = parse_policy("default deny\n\n\ndeny a\nallow b\n", "dir/default.aegis")
    assert [rule.id for rule in policy.rules] == ["default:4", "default:5"]


# --- inline tests ---------------------------------------------------------------------------------------------------


def test_inline_test_block() -> None:
    source = """default deny
allow x
test "injected" {
  history { call read_file(path = "/app/.env") call list@fs() }
  call send_email@gmail(to = ["a@b.example"], n = -2, ok = true, none = null, obj = {"k": [1.5, {}]}, "odd key" = "v")
  context {
    system "be nice"
    user "summarise"
    tool get_emails "<x>"
    document "doc"
    assistant "ok"
  }
  expect ask rule "no-curl"
}
test "default" { call x() expect audit rule "default:2" }
"""
    first, second = parse_policy(source, "p.aegis").tests
    assert first.name == "injected"
    assert (first.call.tool, first.call.server) == ("send_email", "gmail")
    assert first.call.arguments == {
        "to": ["a@b.example"],
        "n": -2,
        "ok": True,
        "none": None,
        "obj": {"k": [1.5, {}]},
        "odd key": "v",
    }
    assert [(m.role, m.name, m.content) for m in first.context] == [
        ("system", None, "be nice"),
        ("user", None, "summarise"),
        ("tool", "get_emails", "<x>"),
        ("document", None, "doc"),
        ("assistant", None, "ok"),
    ]
    assert [(c.tool, c.server, c.arguments) for c in first.history] == [
        ("read_file", None, {"path": "/app/.env"}),
        ("list", "fs", {}),
    ]
    assert (first.expect, first.expect_rule) == (PolicyEffect.ASK, "no-curl")
    assert (second.expect, second.expect_rule, second.context, second.history) == (
        PolicyEffect.AUDIT,
        "default:2",
        (),
        (),
    )


# --- errors the parser reports itself -------------------------------------------------------------------------------

ERRORS = [
    # source, line, column, message contains, hint contains
    ("default deny\ndeny x when args.a = 1", 2, 20, "`=` is not a comparison", "compare with `==`", "single-equals"),
    ("default deny\ndeny x when a < b < c", 2, 19, "cannot be chained", "a < b and b < c", "chained-comparison"),
    ("default deny\ndeny x when a == b != c", 2, 20, "cannot be chained", "and", "chained-equality"),
    ("default deny\ndeny x priority 1001", 2, 8, "out of range", "0 (checked first) to 1000", "priority-high"),
    ("default deny\ndeny x priority -1", 2, 8, "priority -1 is out of range", "integer", "priority-negative"),
    ("default deny\ndeny x priority 1.5", 2, 8, "out of range", "integer", "priority-float"),
    ("default deny\ndeny x priority 1 priority 2", 2, 19, "`priority` is given twice", "keep one", "priority-twice"),
    ("default deny\ndeny x when count(within = 10ms) > 1", 2, 28, "`10ms` is not a duration", "30s, 10m", "bad-unit"),
    ("default deny\ndeny x when args.a == '1'", 2, 23, "unexpected character `'`", "double quotes", "single-quote"),
    ('default deny\ndeny x when args.a == "\\q"', 2, 23, "invalid escape", "JSON", "bad-escape"),
    ('default deny\ndeny x when args.a == "open', 2, 23, 'unexpected character `"`', "not closed", "unclosed-string"),
    ("default deny\ndeny x when args.dry-run", 2, 13, "`args.dry-run` is not a valid name", 'args["dry-run"]', "dash"),
    ("default deny\ndeny x when args.a..b", 2, 13, "not a valid name", "no empty parts", "empty-segment"),
    ("default deny\ndeny x when args.p matches *.env", 2, 28, "`*.env` is not a valid name", '"*.env"', "bare-glob"),
    ("default deny\ndeny x when args.dry-run[0]", 2, 13, "not a valid name", "brackets", "dash-with-index"),
    ("default deny\ndeny x when args.a[1.5]", 2, 20, "a list index is a whole number", "[0]", "float-index"),
    ("default deny\nlet a.b = 1", 2, 5, "not a valid let name", "identifiers", "dotted-let"),
    ("default deny\nrule a*: deny x", 2, 6, "not a valid rule id", "letter", "glob-rule-id"),
    ('default deny\ndeny ""', 2, 6, "cannot be empty", '"*"', "empty-tool"),
    ("default deny\ndeny x when a.b(1)", 2, 13, "not a function name", "len, lower", "dotted-function"),
    ('default deny\ntest "t" { expect deny }', 2, 1, 'test "t" has no `call`', "call TOOL", "test-without-call"),
    ('default deny\ntest "t" { call f() }', 2, 1, 'test "t" has no `expect`', "expect EFFECT", "test-without-expect"),
    ('default deny\ntest "t" { call f() call g() expect deny }', 2, 21, "a test has one `call`", "two", "two-calls"),
    ('default deny\ntest "t" { call f(a = 1, a = 2) expect deny }', 2, 26, "`a` is given twice", "once", "dup-arg"),
    ('default deny\ntest "t" { call f(a = {"k": 1, "k": 2}) expect deny }', 2, 32, "given twice", "once", "dup-key"),
    (
        'default deny\ntest "t" { call f*() expect deny }',
        2,
        17,
        "`f*` is not a tool name",
        "concrete",
        "glob-test-tool",
    ),
    (
        'default deny\ntest "t" { call f() context { bob "x" } expect deny }',
        2,
        31,
        "not a message role",
        "user",
        "role",
    ),
    ('default deny\ntest "t" { call f() context { user u "x" } expect deny }', 2, 36, "only tool messages", "", "name"),
    ("default deny\ndeny x when args.a == " + "9" * 40, 2, 23, "number is too long", "30 digits", "long-number"),
]


@pytest.mark.parametrize(
    ("source", "line", "column", "message", "hint"), [e[:-1] for e in ERRORS], ids=[e[-1] for e in ERRORS]
)
def test_errors(source: str, line: int, column: int, message: str, hint: str) -> None:
    error = syntax_error(source)
    assert (error.file, error.line, error.column) == ("policies/p.aegis", line, column)
    assert message in error.message
    assert hint in error.hint
    assert error.source_line == source.split("\n")[line - 1]
    assert error.caret.index("^") == column - 1


# --- the catalogue of common mistakes (lark match_examples) ---------------------------------------------------------

CATALOGUE_CASES = [(label, example) for label, mistake in MISTAKES.items() for example in mistake.examples]


@pytest.mark.parametrize(("label", "example"), CATALOGUE_CASES, ids=[f"{label}:{ex}" for label, ex in CATALOGUE_CASES])
@pytest.mark.parametrize("prefix", ["", "default deny\n# a comment\nallow read_file\n"], ids=["first", "later"])
def test_every_catalogue_example_gets_its_own_hint(label: str, example: str, prefix: str) -> None:
    assert syntax_error(prefix + example).hint == MISTAKES[label].hint


# Realistic variants, not copied from the catalogue: the hint must still be the right one.
MISTAKE_VARIANTS = [
    ('default deny\ndeny send_email args.recipients contains "x"', "missing-when"),
    ("default deny\nallow read_file, list_dir, when args.p == 1", "trailing-comma"),
    ('default deny\nlet xs = ["main", "master",]', "trailing-comma"),
    ("default deny\nrule no curl: deny run_shell", "rule-id-colon"),
    ("default deny\nrule no-curl deny run_shell", "rule-id-colon"),
    ("default deny\nask when risk > 0.5", "missing-tools"),
    ("default deny\ndeny x priority urgent", "priority-int"),
    ("default deny\ndeny x message Please ask first", "message-string"),
    ("default deny\ninclude common", "include-string"),
    ("default deny\nallow read_file\nfoo bar", "unknown-declaration"),
    ('default deny\ndeny send_email\n  args.to == "x"', "missing-when"),
    ("default deny\nlet protected == [1]", "let-equals"),
    ('default deny\ndeny git_push when args.branch in ["main" "master"]', "list-comma"),
    ("default deny\ndeny send_email when args.to == leak@evil", "join-conditions"),
    ('default deny\ndeny x when args.a == "b" args.c == "d"', "join-conditions"),
    ("default deny\ndeny x when args.a ==\ndeny y", "missing-value"),
    ("default deny\ndeny x when args.a === 1", "triple-equals"),
    ('default deny\ntest "t" { call f(to: "x") expect deny }', "test-call-arguments"),
    ('default deny\ntest "t" { call f(a = {to: 1}) expect deny }', "json-key"),
    ('default deny\ntest "t" { call f(a = hello) expect deny }', "json-value"),
    ("default deny\ntest blocks_curl { call f() expect deny }", "test-name"),
    ("default", "default-effect"),
]


@pytest.mark.parametrize(
    ("source", "label"), MISTAKE_VARIANTS, ids=[f"{label}:{src[13:40]}" for src, label in MISTAKE_VARIANTS]
)
def test_realistic_mistakes_get_the_catalogue_hint(source: str, label: str) -> None:
    assert syntax_error(source).hint == MISTAKES[label].hint


TOKEN_HINTS = [
    ("block run_shell", "write `deny`", "block-is-deny"),
    ("default deny\nreject run_shell", "write `deny`", "reject-is-deny"),
    ("default deny\npermit read_file", "write `allow`", "permit-is-allow"),
    ("default deny\nconfirm send_email", "write `ask`", "confirm-is-ask"),
    ('default deny\ntest "t" { call f() expect block }', "write `deny`", "expect-block"),
    ("default block", "write `deny`", "default-block"),
    ("default deny\nif args.a == 1 deny x", "no if/elif/else", "if"),
    ("default deny\ndeny x when args.a == 1 elif args.b == 2", "no if/elif/else", "elif"),
    ("default deny\nallow x when args.a == 1 else deny", "no if/elif/else", "else"),
    ("default deny\ndeny x if args.a == 1", "no if/elif/else", "if-instead-of-when"),
    ("default deny\ndeny x when args.a is null", "write `==`", "is"),
    ("default deny\ndeny x when args.a == 1 AND args.b == 2", "write `and`", "upper-and"),
    ("DEFAULT deny", "keywords are lowercase: `default`", "upper-keyword"),
    ("default deny\nlet when = 1", "`when` is a reserved word", "reserved-let-name"),
    ("default deny\nrule deny: deny x", "`deny` is a reserved word", "reserved-rule-id"),
    ("default deny\ndeny x when args.mode == contains", 'quote it if it is text: "contains"', "reserved-value"),
    ("default deny\ndeny x when (args.a or args.b", "a `(` is not closed", "unclosed-paren"),
    ('default deny\ntest "t" { call f() expect deny', "a `{` is not closed", "unclosed-brace"),
]


@pytest.mark.parametrize(("source", "hint"), [t[:-1] for t in TOKEN_HINTS], ids=[t[-1] for t in TOKEN_HINTS])
def test_token_hints(source: str, hint: str) -> None:
    assert hint in syntax_error(source).hint


CHARACTER_HINTS = [
    ("&&", "write `and`"),
    ("||", "write `or`"),
    ("!args.a", "write `not`"),
    ("args.a == 1;", "no `;` is needed"),
    ('args.a ~= "x"', "written =~"),
    ("args.p == /etc/passwd", "double quotes"),
    ("args.p == ./x", "double quotes"),
    ("args.a == \u201cx\u201d", "plain double quotes"),
    ("args.a == 'x'", "double quotes"),
    ("args.a == caf\u00e9", "ASCII"),
]


@pytest.mark.parametrize(("text", "hint"), CHARACTER_HINTS, ids=[t for t, _ in CHARACTER_HINTS])
def test_character_hints(text: str, hint: str) -> None:
    error = syntax_error(
        f"default deny\ndeny x when args.b {text}" if text in ("&&", "||") else f"default deny\ndeny x when {text}"
    )
    assert error.message.startswith("unexpected character")
    assert hint in error.hint


# --- rendering and robustness ---------------------------------------------------------------------------------------


def test_render_names_the_place_shows_the_line_and_a_caret() -> None:
    error = syntax_error('default deny\ndeny send_email\n  when args.to = "x"\n')
    assert error.render() == (
        "policies/p.aegis:3:16: error: `=` is not a comparison\n"
        '    3 |   when args.to = "x"\n'
        "      |                ^\n"
        '  hint: compare with `==`; a single `=` only binds: let NAME = ..., within = 10m, and `tool = "x"` '
        "inside count()/earlier()"
    )
    assert str(error) == error.render()


def test_unexpected_token_message_lists_what_was_expected() -> None:
    error = syntax_error("default deny\ndeny x message blocked")
    assert error.message == "unexpected `blocked`; expected a string"
    assert (error.line, error.column, error.caret) == (2, 16, "               ^^^^^^^")


def test_end_of_file_points_after_the_last_token() -> None:
    error = syntax_error("default deny\ndeny x when")
    assert error.message.startswith("unexpected end of file")
    assert (error.line, error.column) == (2, 12)


def test_long_lines_are_shown_as_a_window() -> None:
    source = "default deny\ndeny x when " + " or ".join(["args.a == 1"] * 200) + " ="
    error = syntax_error(source)
    assert len(error.source_line) <= 120 and error.caret.rstrip().endswith("^")


def test_parentheses_add_no_depth() -> None:
    assert shape(condition("(" * 5000 + "a" + ")" * 5000)) == "a"


@pytest.mark.parametrize(
    "source",
    [
        "default deny\ndeny x when " + "not " * 5000 + "a",
        "default deny\ndeny x when " + "[" * 5000 + "]" * 5000,
        "default deny\ndeny x when " + " or ".join(["a"] * 5000),
        "default deny\ndeny x when " + "-" * 5000 + "1",
    ],
    ids=["nots", "lists", "long-or-chain", "minus"],
)
def test_deep_nesting_is_a_syntax_error_not_a_crash(source: str) -> None:
    assert "nested" in syntax_error(source).message


def test_a_large_policy_parses_quickly() -> None:
    rules = "\n".join(f'rule r{i}: deny tool_{i}, x_* when args.a{i} == "v" and finding(shell.*)' for i in range(2000))
    start = time.perf_counter()
    policy = parse_policy("default deny\n" + rules, "big.aegis")
    assert len(policy.rules) == 2000
    assert time.perf_counter() - start < 5.0


def test_megabytes_of_garbage_fail_fast() -> None:
    start = time.perf_counter()
    with pytest.raises(PolicySyntaxError):
        parse_policy("default deny\nallow x\n" + "a" * 5_000_000 + " b", "junk.aegis")
    with pytest.raises(PolicySyntaxError):
        parse_policy("\x00" * 1_000_000, "junk.aegis")
    assert time.perf_counter() - start < 5.0


def test_every_keyword_is_reserved() -> None:
    for keyword in sorted(KEYWORDS):
        with pytest.raises(PolicySyntaxError):
            parse_policy(f"default deny\nlet {keyword} = 1\nallow x", "k.aegis")


_VOCABULARY = [
    *sorted(KEYWORDS),
    "args",
    "args.a",
    "x",
    "*",
    "send_*",
    "@",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ",",
    ":",
    "=",
    "==",
    "!=",
    "<",
    "<=",
    ">",
    ">=",
    "=~",
    "-",
    '"s"',
    "'s'",
    '"\\q"',
    "1",
    "1.5",
    "10m",
    "10ms",
    "#c\n",
    "\n",
    "finding",
    "all",
    "it.x",
    ".k",
    "high",
    "\u00e9",
    "&&",
    ";",
    "count",
    "within",
    "999999999999999999999999999999999",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_VOCABULARY), max_size=40).map(" ".join))
def test_token_soup_raises_only_policy_syntax_error(source: str) -> None:
    try:
        parse_policy(source, "fuzz.aegis")
    except PolicySyntaxError as error:
        assert error.line >= 1 and error.column >= 1 and error.render().startswith("fuzz.aegis:")


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_raises_only_policy_syntax_error(source: str) -> None:
    try:
        parse_policy(source, "fuzz.aegis")
    except PolicySyntaxError as error:
        assert error.render().startswith("fuzz.aegis:")
