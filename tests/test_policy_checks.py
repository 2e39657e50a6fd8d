from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aegis_proxy.policy.checks import check_policy, glob_problem
from aegis_proxy.policy.errors import Diagnostic, PolicyCheckError, PolicySyntaxError
from aegis_proxy.policy.parser import parse_policy
from aegis_proxy.scanners.registry import known_categories

CATEGORIES = known_categories()


def diagnostics(*files: tuple[str, str]) -> list[Diagnostic]:
    return check_policy([parse_policy(source, path) for path, source in files], known_categories=CATEGORIES)


def check(body: str) -> list[Diagnostic]:
    """Diagnostics of one file: `default deny` on line 1, then `body` from line 2."""
    return diagnostics(("p.aegis", f"default deny\n{body}\n"))


def summary(found: list[Diagnostic]) -> list[tuple[str, int, int]]:
    return [(d.severity, d.span.line, d.span.column) for d in found]


# --- one problem each: (body, severity, line, column, message contains, hint contains) -----------------------------

PROBLEMS = [
    # names
    ('deny x when tol == "a"', "error", 2, 13, "unknown name `tol`", "did you mean `tool`?", "typo"),
    ("deny x when args.a == True", "error", 2, 23, "unknown name `True`", "write `true`", "python-true"),
    ("deny x when args.a == None", "error", 2, 23, "unknown name `None`", "write `null`", "python-none"),
    ("deny x when len > 1", "error", 2, 13, "unknown name `len`", "len(TEXT or LIST)", "function-as-name"),
    ("deny x when shell", "error", 2, 13, "unknown name `shell`", "finding(shell.*)", "family-as-name"),
    ("deny x when shell.destructive", "error", 2, 13, "is a finding category", "finding(shell.destructive)", "cat"),
    ('deny x when tool.name == "a"', "error", 2, 13, "`tool` is text: it has no fields", "args", "field-on-tool"),
    ("deny x when foo.bar", "error", 2, 13, "unknown name `foo`", "paths start at args", "unknown-root"),
    ("deny x when it == 1", "error", 2, 13, "`it` is only defined inside all() and any()", "all(", "it-outside"),
    ("deny x when it.name == 1", "error", 2, 13, "`it` is only defined", "", "it-path-outside"),
    # functions
    ("deny x when lenght(args.a) > 1", "error", 2, 13, "unknown function `lenght`", "did you mean len()?", "typo"),
    ("deny x when length(args.a) > 1", "error", 2, 13, "unknown function `length`", "use len(...)", "alias"),
    ('deny x when regex(args.a, "x")', "error", 2, 13, "unknown function `regex`", "=~", "regex-alias"),
    ("deny x when len(args.a, args.b) > 1", "error", 2, 13, "len() takes 1 argument, got 2", "len(", "arity"),
    ("deny x when all(args.a)", "error", 2, 13, "all() takes 2 arguments, got 1", "PREDICATE", "arity-all"),
    ("deny x when len(args.a, n = 1) > 1", "error", 2, 25, "len() has no keyword argument `n`", "==", "kwarg"),
    ('deny x when count(tool = "a", window = 10m) > 1', "error", 2, 31, "no keyword argument `window`", "", "kw"),
    ("deny x when finding(1)", "error", 2, 21, "finding() takes a finding category", "finding(paths.*)", "cat-num"),
    ("deny x when finding(shell.downlaod_exec)", "error", 2, 21, "no scanner emits", "shell.download_exec", "cat"),
    ("deny x when finding(foo.*)", "error", 2, 21, "matching `foo.*`", "families: code.*", "unknown-family"),
    ("deny x when finding(shell)", "error", 2, 21, "matching `shell`", "shell.* names every shell", "family"),
    ('deny x when finding("shell.[a")', "error", 2, 21, "`[` is not closed", "globs use", "bad-category-glob"),
    ("deny x when findings(sql.*, 1) > 0", "error", 2, 13, "findings() takes 1 argument", "", "findings-arity"),
    ("deny x when finding(shell.*, 1)", "error", 2, 30, "finding() needs a condition on the finding", "", "filter"),
    ("deny x when tainted(tool)", "error", 2, 21, "tainted() takes an argument path", "tainted(args.", "prov"),
    ('deny x when from_user("x")', "error", 2, 23, "from_user() takes an argument path", "", "prov-string"),
    ("deny x when any(args.a, injected(it))", "error", 2, 34, "injected() takes an argument path", "", "prov-it"),
    # count() / earlier() filters
    ('deny x when count(tool = "a" and severity >= high) > 1', "error", 2, 34, "cannot use `severity`", "", "sev"),
    ("deny x when earlier(finding(shell.*))", "error", 2, 21, "cannot use finding()", "earlier call", "finding"),
    ("deny x when earlier(risk > 0.5)", "error", 2, 21, "cannot use `risk`", "", "probe"),
    ("deny x when earlier(count() > 1)", "error", 2, 21, "cannot use count()", "", "nested-count"),
    ("let me = args.user\ndeny x when earlier(args.user == me)", "error", 3, 34, "let `me`", "", "call-let"),
    ("deny x when count(within = 10) > 1", "error", 2, 28, "within needs a duration, not a number", "10m", "within"),
    # types
    ("deny x when severity >= 3", "error", 2, 13, "`severity` is a severity and `3` is a number", "constants", "sev"),
    ('deny x when severity == "high"', "error", 2, 13, "never equal", "bare severity constant", "sev-string"),
    ("deny x when risk > high", "error", 2, 13, "cannot order them", "scores with numbers", "risk-severity"),
    ('deny x when "a" < 3', "error", 2, 13, '`"a"` is text and `3` is a number', "quoted", "string-number"),
    ("deny x when tool == 1", "error", 2, 13, "never equal", "quoted", "tool-number"),
    ("deny x when len(5) > 1", "error", 2, 17, "len() needs text, a list or an object", "", "len-number"),
    ('deny x when lower(1) == "a"', "error", 2, 19, "lower() needs text", "", "lower-number"),
    ('deny x when not "x"', "error", 2, 17, "`not` needs true or false", "compare", "not-string"),
    ('deny x when "x" and args.a', "error", 2, 13, "`and` needs true or false", "", "and-string"),
    ('deny x when "yes"', "error", 2, 13, "the condition is text, not true or false", "compare it", "condition"),
    ("deny x when len(args.a)", "error", 2, 13, "the condition is a number", "", "number-condition"),
    ('deny x when -"a" < 1', "error", 2, 13, "`-` needs a number", "", "minus-string"),
    ("deny x when args.a in 5", "error", 2, 23, "`in` needs a list or a string", "", "in-number"),
    ("deny x when args.a startswith 1", "error", 2, 31, "`startswith` needs text on the right", "", "startswith"),
    ("deny x when count() contains 1", "error", 2, 13, "`contains` needs text or a list", "", "contains-number"),
    ('deny x when all(["a", "b"], it > 1)', "error", 2, 29, "text and `1` is a number", "", "it-element-type"),
    ("deny x when count(within = 10m) > 1m", "error", 2, 13, "cannot order them", "within = 10m", "duration"),
    # patterns
    ('deny x when args.a =~ "(?=x)"', "error", 2, 23, "is not supported", "RE2", "lookahead"),
    ('deny x when args.a =~ "(a)\\\\1"', "error", 2, 23, "is not supported", "back-references", "backref"),
    ("deny x when args.a =~ args.b", "error", 2, 23, "must be a constant", "compiled once", "dynamic-regex"),
    ("deny x when args.a =~ 5", "error", 2, 23, "must be a string", "", "number-regex"),
    ('deny x when args.a matches "[a"', "error", 2, 28, "bad glob '[a': `[` is not closed", "", "unclosed-bracket"),
    ('deny x when args.a matches "[z-a]"', "error", 2, 28, "range z-a is reversed", "", "reversed-range"),
    ('let globs = ["ok", "[x"]\ndeny x when args.a matches globs', "error", 3, 28, "bad glob '[x'", "", "let-glob"),
    ("deny x when args.a matches args.b", "error", 2, 28, "must be a constant", "", "dynamic-glob"),
    ('deny "x["', "error", 2, 6, "bad tool pattern 'x['", "", "tool-glob"),
    ('deny x@"s["', "error", 2, 6, "bad server pattern 's['", "", "server-glob"),
    # reachability
    ("deny x when false", "error", 2, 13, "rule `p:2` can never match", "remove the rule", "false"),
    ("deny x when not true", "error", 2, 13, "can never match", "", "not-true"),
    ("allow x when 1 == 2", "error", 2, 14, "can never match", "", "constant-compare"),
    ('deny a, b when tool == "c"', "error", 2, 16, "can never match", "", "tool-not-in-patterns"),
    ('allow read_* when tool == "write_file"', "error", 2, 19, "can never match", "", "tool-vs-glob"),
    ('allow x when tool != "x"', "error", 2, 14, "can never match", "", "tool-ne"),
    ('allow a, b when tool in ["c", "d"]', "error", 2, 17, "can never match", "", "tool-in"),
    ("allow x when args.a == 1 and false", "error", 2, 14, "can never match", "", "allow-and-false"),
    ('let modes = ["a"]\nallow x when "b" in modes', "error", 3, 14, "can never match", "", "let-constant"),
    ("allow x when high < low", "error", 2, 14, "can never match", "", "severity-order"),
    # structure
    ("rule a: deny x\nrule a: deny y", "error", 3, 1, "rule id `a` is already used at p.aegis:2:1", "own id", "dup"),
    ("deny x deny y", "error", 2, 8, "rule id `p:2` is already used", "own line", "dup-derived"),
    ("default allow\ndeny x", "error", 2, 1, "`default` is declared twice (first at p.aegis:1:1)", "once", "two-def"),
    ("let x = 1\nlet x = 2\ndeny y", "error", 3, 1, "`x` is already defined at p.aegis:2:1", "rename", "let-redef"),
    ("let tool = 1\ndeny y", "error", 2, 1, "`tool` is a built-in name", "another name", "let-builtin"),
    ("let high = 1\ndeny y", "error", 2, 1, "`high` is a built-in name", "", "let-severity"),
    ("let a = a\ndeny y", "error", 2, 1, "let `a` refers to itself (a -> a)", "", "let-self"),
    ("let a = [b]\nlet b = a\ndeny y", "error", 2, 1, "let `a` refers to itself (a -> b -> a)", "", "let-cycle"),
    ('deny x\ntest "t" { call x() expect deny rule "nope" }', "error", 3, 1, "expects rule `nope`", "rule id", "tst"),
    ('rule no-curl: deny x\ntest "t" { call x() expect deny rule "no-curl-x" }', "error", 3, 1, "", "no-curl", "dym"),
    # warnings
    ('allow x message "m"', "warning", 2, 1, "`message` on an allow rule is never shown", "deny/ask", "allow-msg"),
    ("audit x terminate", "warning", 2, 1, "`terminate` on an audit rule has no effect", "", "audit-terminate"),
    (
        'test "t" { call x() expect deny }\ntest "t" { call x() expect deny }\ndeny x',
        "warning",
        3,
        1,
        "test 't' is defined twice",
        "rename",
        "dup-test",
    ),
]


@pytest.mark.parametrize(
    ("body", "severity", "line", "column", "message", "hint"), [p[:-1] for p in PROBLEMS], ids=[p[-1] for p in PROBLEMS]
)
def test_problems(body: str, severity: str, line: int, column: int, message: str, hint: str) -> None:
    found = check(body)
    matching = [d for d in found if message in d.message]
    assert matching, [d.render() for d in found]
    diagnostic = matching[0]
    assert (diagnostic.severity, diagnostic.span.line, diagnostic.span.column) == (severity, line, column)
    assert hint in diagnostic.hint
    assert diagnostic.render().startswith(f"p.aegis:{line}:{column}: {severity}: ")


# --- what must pass clean --------------------------------------------------------------------------------------------

CLEAN = [
    ("deny * when severity >= high priority 10", "severity-constant"),
    ("deny run_shell, bash when finding(shell.download_exec) priority 1 terminate", "finding"),
    ("allow read_file when not finding(paths.*)", "finding-glob"),
    ('deny x when finding("secrets.*", severity >= high)', "finding-filter"),
    ("ask x when findings(sql.*) > 2 or severity(shell.*) >= medium", "findings-severity"),
    ('allow write_file@filesystem when args.path startswith "/workspace/" and not args.path contains ".."', "path"),
    ('audit send_email when all(args.recipients, it endswith "@corp.example")', "all"),
    ('deny x when any(args.items, it.name == "a" and it.size > 3)', "it-fields"),
    ('deny x when any(["a", "b"], it == tool)', "any-literal-list"),
    ("ask send_email when tainted(args.recipients) or not from_user(args.recipients[0])", "provenance"),
    ("deny x when injected(args)", "provenance-all-args"),
    (
        'let protected = ["main", "release/*"]\ndeny git_push when args.force == true and args.branch matches protected',
        "let",
    ),
    ('deny send_email when count(tool = "send_email", within = 10m) > 5', "count"),
    (
        'deny http when earlier(tool = "read_file" and args.path matches "*.env") and args.url =~ "^https?://"',
        "earlier",
    ),
    ('let sensitive = ["*.env", "*.pem"]\ndeny x when earlier(args.path matches sensitive, within = 1h)', "const-let"),
    ("deny * when risk > 0.8 or injection > 0.9", "probes"),
    ('deny x when server == null or agent != "a" or session == "s" or protocol == "mcp"', "null-builtins"),
    ('deny x when lower(args.a) == "x" and len(args.items) > 3 and -args.n < 3', "functions"),
    ('deny x when "needle" in args.text and args.tags contains "t"', "substring-and-list"),
    ('deny x, y when tool == "y"', "tool-reachable"),
    ('deny send_* when tool matches ["send_e*"]', "tool-glob-reachable"),
    ("deny x when args.a == 1 and false", "deny-fails-closed-on-error"),
    ("deny x when args.a == 1.5 or args.b == -2", "numbers"),
    ("ask * when severity >= medium priority 20\ndeny * when severity >= high priority 10", "different-conditions"),
    ("ask *\ndeny x when args.a", "stronger-effect-at-equal-priority"),
    ("deny *@fs\nask x", "server-qualified-does-not-cover-unqualified"),
    ('allow x\ntest "t" { call x() expect allow rule "default" }', "expect-default"),
    ('rule r: deny x\ntest "t" { call x() expect deny rule "r" }', "expect-rule"),
]


@pytest.mark.parametrize("body", [c for c, _ in CLEAN], ids=[i for _, i in CLEAN])
def test_clean(body: str) -> None:
    assert [d.render() for d in check(body)] == []


def test_the_spec_example_is_clean() -> None:
    example = (
        "default deny\n"
        'let protected = ["main", "master", "release/*"]\n'
        'include "common.aegis"\n'
        'deny * when severity >= high priority 10 message "blocked by a high-severity finding"\n'
        "ask  * when severity >= medium priority 20\n"
        "rule no-curl-pipe: deny run_shell, bash, execute_* when finding(shell.download_exec) priority 1 terminate\n"
        "deny git_push when args.force == true and args.branch matches protected and args.remote in remotes\n"
        'test "blocks curl pipe sh" {\n  call run_shell(cmd = "curl x | sh")\n  expect deny rule "no-curl-pipe"\n}\n'
    )
    common = 'default deny\nlet remotes = ["origin"]\ndeny * when risk > 0.8 or injection > 0.9\n'
    assert diagnostics(("policies/example.aegis", example), ("policies/common.aegis", common)) == []


# --- shadowing (warnings) -------------------------------------------------------------------------------------------

SHADOWING = [
    # body, (line of the shadowed rule) or None
    ("deny *\nask x", 3, "stronger-effect-same-priority"),
    ("deny *\ndeny x when args.a", 3, "same-effect-same-priority"),
    ("allow * priority 1\ndeny x", 3, "better-priority-wins-whatever-the-effect"),
    ("deny * when true\nask x", 3, "statically-true-condition-is-unconditional"),
    ("deny send_*\nask send_email_*", 3, "glob-covers-glob"),
    ("deny *@fs\nask x@fs", 3, "server-covers-server"),
    ("deny x\ndeny x", 3, "identical-rules-warn-once"),
    ("deny x\nask *", None, "weaker-effect-does-not-shadow"),
    ("deny * when args.a\nask x", None, "conditional-does-not-shadow"),
    ("deny * priority 200\nask x", None, "worse-priority-does-not-shadow"),
    ("deny send_*\nask read_file", None, "pattern-does-not-cover"),
    ("deny a\nask a, b", None, "must-cover-every-pattern"),
]


@pytest.mark.parametrize(("body", "line"), [s[:-1] for s in SHADOWING], ids=[s[-1] for s in SHADOWING])
def test_shadowing(body: str, line: int | None) -> None:
    warnings = [d for d in check(body) if d.severity == "warning"]
    assert [d.span.line for d in warnings] == ([line] if line else [])
    if line:
        assert "never decides" in warnings[0].message and "p:2" in warnings[0].message


# --- files and sets -------------------------------------------------------------------------------------------------


def test_missing_default_and_rules_are_errors_at_the_top_of_the_file() -> None:
    found = diagnostics(("p.aegis", "# nothing here\n"))
    assert [(d.message, d.span.line, d.span.column) for d in found] == [
        ("this file declares no `default`", 1, 1),
        ("this file has no rules", 1, 1),
    ]
    assert "default deny" in found[0].hint


def test_names_resolve_through_includes() -> None:
    main = 'default deny\ninclude "lib/common.aegis"\ndeny x when args.b in protected\n'
    common = 'default deny\ninclude "deeper.aegis"\nlet protected = deep\ndeny y\n'
    deeper = 'default deny\nlet deep = ["main"]\ndeny z\n'
    assert diagnostics(("p/main.aegis", main), ("p/lib/common.aegis", common), ("p/lib/deeper.aegis", deeper)) == []


def test_a_sibling_file_that_is_not_included_does_not_lend_its_names() -> None:
    found = diagnostics(
        ("a.aegis", "default deny\ndeny x when args.b in xs\n"), ("b.aegis", "default deny\nlet xs = [1]\ndeny y\n")
    )
    assert [(d.span.file, d.message) for d in found] == [("a.aegis", "unknown name `xs`")]


def test_an_include_outside_the_set_makes_every_let_visible() -> None:
    main = 'default deny\ninclude "missing.aegis"\ndeny x when args.b in xs\n'
    assert diagnostics(("a.aegis", main), ("b.aegis", "default deny\nlet xs = [1]\ndeny y\n")) == []


def test_sibling_roots_may_reuse_a_let_name() -> None:
    assert (
        diagnostics(
            ("a.aegis", "default deny\nlet xs = [1]\ndeny x when 1 in xs\n"),
            ("b.aegis", "default deny\nlet xs = [2]\ndeny y when 2 in xs\n"),
        )
        == []
    )


def test_let_redefined_by_an_included_file() -> None:
    found = diagnostics(
        ("a.aegis", 'default deny\nlet xs = [1]\ninclude "b.aegis"\ndeny x\n'),
        ("b.aegis", "default deny\nlet xs = [2]\ndeny y\n"),
    )
    assert [(d.span.file, d.span.line, d.message) for d in found] == [
        ("b.aegis", 2, "`xs` is already defined at a.aegis:2:1")
    ]


def test_rule_ids_are_unique_across_files_and_diagnostics_are_in_file_order() -> None:
    found = diagnostics(
        ("z.aegis", "default deny\nrule same: deny x\ndeny y when tol\n"),
        ("a.aegis", "default deny\nrule same: deny w\n"),
    )
    assert [(d.span.file, d.span.line, d.message.split(":")[0]) for d in found] == [
        ("z.aegis", 3, "unknown name `tol`"),
        ("a.aegis", 2, "rule id `same` is already used at z.aegis"),
    ]


def test_unknown_categories_are_judged_against_the_given_set() -> None:
    policy = parse_policy("default deny\ndeny x when finding(custom.thing)\n", "p.aegis")
    assert check_policy([policy], known_categories=frozenset({"custom.thing"})) == []
    assert len(check_policy([policy], known_categories=frozenset({"other.thing"}))) == 1


def test_check_error_renders_every_diagnostic() -> None:
    found = check('deny x when tol == 1\nallow y message "m"')
    error = PolicyCheckError(found)
    assert error.errors == (found[0],) and error.warnings == (found[1],)
    assert error.message.startswith("1 error in policy (first: p.aegis:2:13: unknown name `tol`)")
    assert error.render() == "\n".join(d.render() for d in found)
    assert found[0].render() == (
        "p.aegis:2:13: error: unknown name `tol`\n"
        "    2 | deny x when tol == 1\n"
        "      |             ^^^\n"
        "  hint: did you mean `tool`?"
    )


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("*", None),
        ("send_*", None),
        ("file?", None),
        ("[abc]x", None),
        ("[!a-z]", None),
        ("[]]", None),
        ("", "it is empty"),
        ("[abc", "`[` is not closed (write [[] for a literal [)"),
        ("[z-a]", "the range z-a is reversed"),
    ],
)
def test_glob_problem(pattern: str, problem: str | None) -> None:
    assert glob_problem(pattern) == problem


# --- robustness: any policy that parses can be checked --------------------------------------------------------------

_LEAVES = st.sampled_from(
    [
        '"s"',
        "1",
        "-2.5",
        "true",
        "null",
        "10m",
        "high",
        "tool",
        "risk",
        "severity",
        "server",
        "args",
        "args.a",
        'args["k"][0]',
        "it",
        "it.x",
        "xs",
        "nope",
        "[]",
        '["a", 1]',
        "shell.destructive",
    ]
)
_OPERATORS = st.sampled_from(
    ["==", "!=", "<", ">=", "in", "not in", "matches", "=~", "startswith", "contains", "and", "or"]
)
_FUNCTIONS = st.sampled_from(
    ["len", "lower", "finding", "findings", "severity", "tainted", "from_user", "all", "any", "count", "earlier", "f"]
)


def _expressions() -> st.SearchStrategy[str]:
    return st.recursive(
        _LEAVES,
        lambda inner: st.one_of(
            st.tuples(inner, _OPERATORS, inner).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
            inner.map(lambda e: f"not {e}"),
            st.tuples(_FUNCTIONS, st.lists(inner, max_size=3)).map(lambda t: f"{t[0]}({', '.join(t[1])})"),
            st.tuples(_FUNCTIONS, inner).map(lambda t: f"{t[0]}({t[1]}, within = 5m)"),
            st.lists(inner, max_size=3).map(lambda items: f"[{', '.join(items)}]"),
        ),
        max_leaves=12,
    )


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["allow", "deny", "ask", "audit"]),
            st.sampled_from(["x", "*", "x_*", "y@s"]),
            _expressions(),
        ),
        min_size=1,
        max_size=4,
    ),
    _expressions(),
)
def test_the_checker_never_raises(rules: list[tuple[str, str, str]], let_value: str) -> None:
    body = "\n".join(f"{effect} {tool} when {condition}" for effect, tool, condition in rules)
    try:
        policy = parse_policy(f"default deny\nlet xs = {let_value}\n{body}\n", "h.aegis")
    except PolicySyntaxError:
        return  # e.g. a raw glob where a value is expected; the parser's own tests cover those
    for diagnostic in check_policy([policy], known_categories=CATEGORIES):
        assert diagnostic.span.line >= 1 and diagnostic.render().startswith("h.aegis:")
