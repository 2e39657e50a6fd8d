"""Static checks over a loaded set of policy files: what can be known wrong before any call arrives.

`check_policy` returns every problem at once (errors and warnings), each a `Diagnostic` with file:line:col, the line,
a caret and a hint. What is inferred statically:

- Names: every identifier resolves to a builtin (`tool`, `protocol`, `server`, `agent`, `session`, `severity`, `risk`,
  `injection`, `args`), `it` inside all()/any(), or a `let` visible from the file (its own and those of the files it
  includes, transitively). Lets may not redefine a name they can see, shadow a builtin, or refer to themselves.
- Functions: the fixed set, with arity and keyword arguments (`within` for count()/earlier()).
- Types, from literals and builtins: `tool`/`protocol` are strings (`server`/`agent`/`session` string or null),
  `severity` a severity, `risk`/`injection` numbers, len()/count()/findings() numbers, lower() a string,
  severity() a severity, the rest booleans; `args.*` and `it` can be anything. A comparison whose operand types are
  known and cannot meet (`severity == 3`, `"a" < 3`, `len(5)`, `not "x"`) is an error, as is a condition that is
  known not to be a boolean.
- Patterns: `=~` needs a constant string that RE2 compiles; `matches` a constant glob or list of globs; tool, server
  and category globs must be well formed; a category (glob) must match a category the scanners emit.
- Reachability: a condition that can never be true (nor, for deny/ask, an error, which fails closed) makes the rule
  unreachable, using constants, lets and the tool names the rule's own patterns allow (`deny a when tool == "b"`).
- Shadowing (warning): a rule that an unconditional rule covering all of its tools always beats: a better priority,
  or the same priority and an effect at least as strong.
- Structure: exactly one `default` and at least one rule per file, unique rule ids, `expect ... rule "ID"` naming a
  rule that exists.
"""

from __future__ import annotations

import difflib
import enum
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Final

from aegis_proxy.errors import PatternError
from aegis_proxy.models import Severity
from aegis_proxy.policy.ast import (
    BoolOp,
    Call,
    Category,
    Compare,
    DefaultDecl,
    Duration,
    Expr,
    Let,
    ListExpr,
    Literal,
    Name,
    Neg,
    Not,
    Path,
    PolicyEffect,
    PolicyFile,
    Rule,
    SeverityConst,
    Span,
    ToolPattern,
)
from aegis_proxy.policy.errors import Diagnostic, DiagnosticSeverity, source_line
from aegis_proxy.policy.parser import KEYWORDS, SEVERITY_NAMES
from aegis_proxy.safe_regex import compile_pattern


class Kind(enum.Flag):
    """What a value can statically be. Unions are flags: `STRING | NULL` is "a string or null"."""

    STRING = enum.auto()
    NUMBER = enum.auto()
    BOOL = enum.auto()
    NULL = enum.auto()
    LIST = enum.auto()
    OBJECT = enum.auto()
    DURATION = enum.auto()
    SEVERITY = enum.auto()


ANY: Final = Kind.STRING | Kind.NUMBER | Kind.BOOL | Kind.NULL | Kind.LIST | Kind.OBJECT | Kind.DURATION | Kind.SEVERITY
JSON: Final = Kind.STRING | Kind.NUMBER | Kind.BOOL | Kind.NULL | Kind.LIST | Kind.OBJECT
ORDERED: Final = (Kind.NUMBER, Kind.STRING, Kind.SEVERITY, Kind.DURATION)

BUILTIN_NAMES: Mapping[str, Kind] = {
    "tool": Kind.STRING,
    "protocol": Kind.STRING,
    "server": Kind.STRING | Kind.NULL,
    "agent": Kind.STRING | Kind.NULL,
    "session": Kind.STRING | Kind.NULL,
    "severity": Kind.SEVERITY,
    "risk": Kind.NUMBER,
    "injection": Kind.NUMBER,
    "args": JSON,
}
_FILTER_NAMES = frozenset({"tool", "args"})  # what an earlier call has, inside count()/earlier()


@dataclass(frozen=True, slots=True)
class Signature:
    positional: tuple[int, int]  # min, max
    keywords: frozenset[str]
    result: Kind
    usage: str


FUNCTIONS: Mapping[str, Signature] = {
    "len": Signature((1, 1), frozenset(), Kind.NUMBER, "len(TEXT or LIST)"),
    "lower": Signature((1, 1), frozenset(), Kind.STRING, "lower(TEXT)"),
    "finding": Signature((1, 2), frozenset(), Kind.BOOL, "finding(shell.*) or finding(shell.*, severity >= high)"),
    "findings": Signature((1, 1), frozenset(), Kind.NUMBER, "findings(CATEGORY)"),
    "severity": Signature((1, 1), frozenset(), Kind.SEVERITY, "severity(CATEGORY)"),
    "tainted": Signature((1, 1), frozenset(), Kind.BOOL, "tainted(args.PATH)"),
    "from_user": Signature((1, 1), frozenset(), Kind.BOOL, "from_user(args.PATH)"),
    "injected": Signature((1, 1), frozenset(), Kind.BOOL, "injected(args.PATH)"),
    "all": Signature((2, 2), frozenset(), Kind.BOOL, "all(LIST, PREDICATE using it)"),
    "any": Signature((2, 2), frozenset(), Kind.BOOL, "any(LIST, PREDICATE using it)"),
    "count": Signature((0, 1), frozenset({"within"}), Kind.NUMBER, 'count(tool = "x" and ..., within = 10m)'),
    "earlier": Signature((1, 1), frozenset({"within"}), Kind.BOOL, 'earlier(tool = "x" and ...)'),
}
_PROVENANCE = frozenset({"tainted", "from_user", "injected"})
_FILTER_FUNCTIONS_ALLOWED = frozenset({"len", "lower", "all", "any"})  # pure on the earlier call's values
_FUNCTION_ALIASES: Mapping[str, str] = {
    "length": "len(...)",
    "size": "len(...)",
    "count_of": "len(...)",
    "lowercase": "lower(...)",
    "tolower": "lower(...)",
    "regex": 'the =~ operator: args.x =~ "^https?://"',
    "match": "the =~ operator (regex) or `matches` (glob)",
    "glob": 'the `matches` operator: args.path matches "*.env"',
    "contains": 'the `contains` operator: args.path contains ".."',
    "startswith": 'the `startswith` operator: args.path startswith "/workspace/"',
    "endswith": 'the `endswith` operator: args.to endswith "@corp.example"',
    "has_finding": "finding(...)",
    "trusted": "from_user(args.PATH)",
    "untrusted": "tainted(args.PATH)",
}
_LITERAL_ALIASES: Mapping[str, str] = {
    "True": "true",
    "TRUE": "true",
    "False": "false",
    "FALSE": "false",
    "None": "null",
    "nil": "null",
    "NULL": "null",
    "undefined": "null",
}


def check_policy(files: Sequence[PolicyFile], *, known_categories: frozenset[str]) -> list[Diagnostic]:
    """Every error and warning in the set, sorted by file (in the order given), line and column."""
    return _Checker(files, known_categories).run()


# --- the checker ----------------------------------------------------------------------------------------------------

_UNKNOWN: Final = object()  # a value that is only known per call


@dataclass(frozen=True, slots=True)
class _Ctx:
    file: str
    it: Kind | None = None  # inside all()/any(): what the element can be
    filter: bool = False  # inside count()/earlier(): only tool and args (of the earlier call)


class _Checker:
    def __init__(self, files: Sequence[PolicyFile], known_categories: frozenset[str]) -> None:
        self._files = list(files)
        self._sources = {file.path: file.source for file in self._files}
        self._categories = known_categories
        self._diagnostics: dict[tuple[str, int, int, str], Diagnostic] = {}
        self._scopes = self._let_scopes()
        self._let_kinds: dict[int, Kind] = {}
        self._let_constant: dict[int, bool] = {}
        self._resolving: list[Let] = []
        self._unreachable: set[int] = set()  # rules already reported as never matching (not also as shadowed)

    def run(self) -> list[Diagnostic]:
        for file in self._files:
            self._structure(file)
        self._lets()
        self._rule_ids()
        for file in self._files:
            for rule in file.rules:
                self._rule(rule)
        self._shadowing()
        self._tests()
        order = {file.path: index for index, file in enumerate(self._files)}
        return sorted(
            self._diagnostics.values(),
            key=lambda d: (order.get(d.span.file, len(order)), d.span.line, d.span.column, d.message),
        )

    # reporting

    def _report(self, severity: DiagnosticSeverity, span: Span, message: str, hint: str = "") -> None:
        key = (str(span), span.end_line, span.end_column, message)
        if key not in self._diagnostics:
            self._diagnostics[key] = Diagnostic.at(
                severity, span, message, source=self._sources.get(span.file), hint=hint
            )

    def _error(self, span: Span, message: str, hint: str = "") -> None:
        self._report("error", span, message, hint)

    def _warning(self, span: Span, message: str, hint: str = "") -> None:
        self._report("warning", span, message, hint)

    def _text(self, expr: Expr) -> str:
        """The expression as written (first line, shortened), for messages."""
        span = expr.span
        line = source_line(self._sources.get(span.file, ""), span.line)
        end = span.end_column - 1 if span.end_line == span.line else len(line)
        text = line[span.column - 1 : end].strip()
        return text if len(text) <= 40 else text[:39] + "…"

    # files, lets, ids

    def _structure(self, file: PolicyFile) -> None:
        top = Span(file.path, 1, 1, 1, 1)
        defaults = [item for item in file.order if isinstance(item, DefaultDecl)]
        if not defaults:
            self._error(
                top,
                "this file declares no `default`",
                "add `default deny` (or ask / allow): every file says what happens when no rule matches",
            )
        for extra in defaults[1:]:
            self._error(
                extra.span,
                f"`default` is declared twice (first at {defaults[0].span})",
                "a file declares its default once; the set's default is the strictest of its files'",
            )
        if not file.rules:
            self._error(
                top,
                "this file has no rules",
                "a policy file needs at least one rule: a file with only a default would silently allow or deny "
                "everything",
            )

    def _let_scopes(self) -> dict[str, dict[str, list[Let]]]:
        """The lets each file sees: its own, then those of the files it includes (transitively).

        An include that is not in the set (a file checked alone) makes every let of the set visible, rather than
        reporting names the loader would find.
        """
        by_path = {os.path.normpath(file.path): file for file in self._files}
        scopes: dict[str, dict[str, list[Let]]] = {}
        for file in self._files:
            seen: dict[str, list[Let]] = {}
            pending, visited, complete = [file], set(), True
            while pending:
                current = pending.pop(0)
                if current.path in visited:
                    continue
                visited.add(current.path)
                for let in current.lets:
                    seen.setdefault(let.name, []).append(let)
                for include in current.includes:
                    target = os.path.normpath(os.path.join(os.path.dirname(current.path), include.path))
                    if target in by_path:
                        pending.append(by_path[target])
                    else:
                        complete = False
            if not complete:  # one definition per missing name; duplicates among unrelated files are not ours
                for other in self._files:
                    for let in other.lets:
                        seen.setdefault(let.name, [let])
            scopes[file.path] = seen
        return scopes

    def _visible(self, file: str, name: str) -> Let | None:
        lets = self._scopes.get(file, {}).get(name)
        if not lets:
            return None
        own = [let for let in lets if let.span.file == file]
        return (own or lets)[0]

    def _lets(self) -> None:
        for file in self._files:
            for name, lets in self._scopes[file.path].items():
                for later in lets[1:]:
                    if later.span.file == file.path or lets[0].span.file == file.path:
                        self._error(
                            later.span,
                            f"`{name}` is already defined at {lets[0].span}",
                            "rename one: a let name is defined once among a file and the files it includes",
                        )
            for let in file.lets:
                if let.name in BUILTIN_NAMES or let.name in FUNCTIONS or let.name in SEVERITY_NAMES:
                    self._error(let.span, f"`{let.name}` is a built-in name", "choose another name for the let")
                self._let_kind(let)

    def _let_kind(self, let: Let) -> Kind:
        key = id(let)
        if key in self._let_kinds:
            return self._let_kinds[key]
        if let in self._resolving:
            chain = " -> ".join(item.name for item in [*self._resolving[self._resolving.index(let) :], let])
            self._error(let.span, f"let `{let.name}` refers to itself ({chain})", "a let value cannot use itself")
            return ANY
        self._resolving.append(let)
        try:
            kind = self._expr(let.value, _Ctx(let.span.file))
        finally:
            self._resolving.pop()
        self._let_kinds[key] = kind
        return kind

    def _rule_ids(self) -> None:
        seen: dict[str, Rule] = {}
        for file in self._files:
            for rule in file.rules:
                first = seen.setdefault(rule.id, rule)
                if first is not rule:
                    hint = (
                        "give each rule its own id" if rule.explicit_id else "put each rule on its own line or name it"
                    )
                    self._error(rule.span, f"rule id `{rule.id}` is already used at {first.span}", hint)

    # rules

    def _rule(self, rule: Rule) -> None:
        file = rule.span.file
        for pattern in rule.tools:
            self._glob(pattern.name, pattern.span, "tool pattern")
            if pattern.server is not None:
                self._glob(pattern.server, pattern.span, "server pattern")
        if rule.effect in (PolicyEffect.ALLOW, PolicyEffect.AUDIT):
            if rule.fallback.message is not None:
                self._warning(
                    rule.span,
                    f"`message` on an {rule.effect.value} rule is never shown",
                    "the message is what the agent is told when a deny/ask rule blocks or holds the call",
                )
            if rule.fallback.terminate:
                self._warning(
                    rule.span,
                    f"`terminate` on an {rule.effect.value} rule has no effect",
                    "terminate ends the agent's run when a deny/ask rule decides",
                )
        if rule.condition is None:
            return
        kind = self._expr(rule.condition, _Ctx(file))
        if not kind & Kind.BOOL:
            self._error(
                rule.condition.span,
                f"the condition is {_kind_name(kind)}, not true or false",
                'compare it: args.x == "...", len(args.items) > 3',
            )
            return
        truth = self._truth(rule.condition, rule)
        can_match = "T" in truth or ("E" in truth and rule.effect in (PolicyEffect.DENY, PolicyEffect.ASK))
        if not can_match:
            self._unreachable.add(id(rule))
            self._error(
                rule.condition.span,
                f"rule `{rule.id}` can never match: its condition is always false",
                "fix the condition or remove the rule",
            )

    def _glob(self, pattern: str, span: Span, what: str) -> bool:
        problem = glob_problem(pattern)
        if problem:
            self._error(span, f"bad {what} {pattern!r}: {problem}", "globs use * (any text), ? (one character), [abc]")
        return problem is None

    # expressions: each returns what the value can be

    def _expr(self, expr: Expr, ctx: _Ctx) -> Kind:
        if isinstance(expr, Literal):
            return _literal_kind(expr.value)
        if isinstance(expr, Duration):
            return Kind.DURATION
        if isinstance(expr, SeverityConst):
            return Kind.SEVERITY
        if isinstance(expr, ListExpr):
            for item in expr.items:
                self._expr(item, ctx)
            return Kind.LIST
        if isinstance(expr, Name):
            return self._name(expr, ctx)
        if isinstance(expr, Path):
            return self._path(expr, ctx)
        if isinstance(expr, Category):  # the parser only lets these through as a category argument
            self._category(expr)
            return Kind.STRING
        if isinstance(expr, Not):
            self._boolean(expr.operand, self._expr(expr.operand, ctx), "`not`")
            return Kind.BOOL
        if isinstance(expr, Neg):
            kind = self._expr(expr.operand, ctx)
            if not kind & Kind.NUMBER:
                self._error(expr.span, f"`-` needs a number, not {_kind_name(kind)}")
            return Kind.NUMBER
        if isinstance(expr, BoolOp):
            for side in (expr.left, expr.right):
                self._boolean(side, self._expr(side, ctx), f"`{expr.op}`")
            return Kind.BOOL
        if isinstance(expr, Compare):
            return self._compare(expr, ctx)
        if isinstance(expr, Call):
            return self._call(expr, ctx)
        return ANY

    def _boolean(self, expr: Expr, kind: Kind, where: str) -> None:
        if not kind & Kind.BOOL:
            self._error(
                expr.span,
                f"{where} needs true or false, but `{self._text(expr)}` is {_kind_name(kind)}",
                'compare it first: args.x == "..."',
            )

    def _name(self, expr: Name, ctx: _Ctx) -> Kind:
        name = expr.name
        if name == "it":
            if ctx.it is None:
                self._error(
                    expr.span,
                    "`it` is only defined inside all() and any()",
                    'all(args.recipients, it endswith "@corp.example")',
                )
                return ANY
            return ctx.it
        if name in BUILTIN_NAMES:
            if ctx.filter and name not in _FILTER_NAMES:
                self._filter_error(expr.span, f"`{name}`")
            return BUILTIN_NAMES[name]
        let = self._visible(ctx.file, name)
        if let is not None:
            kind = self._let_kind(let)
            if ctx.filter and not self._let_is_constant(let):
                self._filter_error(expr.span, f"let `{name}` (it depends on the current call)")
            return kind
        self._error(expr.span, f"unknown name `{name}`", self._name_hint(name, ctx.file))
        return ANY

    def _name_hint(self, name: str, file: str) -> str:
        if name in _LITERAL_ALIASES:
            return f"write `{_LITERAL_ALIASES[name]}`"
        if name.lower() in KEYWORDS:
            return f"keywords are lowercase: `{name.lower()}`"
        if name in FUNCTIONS:
            return f"`{name}` is a function: {FUNCTIONS[name].usage}"
        if any(category.split(".")[0] == name for category in self._categories):
            return f"finding categories are tested with finding(): finding({name}.*)"
        candidates = [*BUILTIN_NAMES, *SEVERITY_NAMES, *self._scopes.get(file, {})]
        close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.75)
        if close:
            return f"did you mean `{close[0]}`?"
        return 'define it with `let`, or quote it if it is text: "..."'

    def _path(self, expr: Path, ctx: _Ctx) -> Kind:
        if expr.root == "args":
            return JSON
        if expr.root == "it":
            self._name(Name(expr.span, "it"), ctx)
            return JSON
        dotted = expr.dotted()
        if dotted in self._categories or any(c.startswith(dotted + ".") for c in self._categories):
            self._error(
                expr.span,
                f"`{dotted}` is a finding category, not a value",
                f"test it with finding(): finding({dotted})",
            )
            return ANY
        if expr.root in BUILTIN_NAMES or self._visible(ctx.file, expr.root) is not None:
            kind = self._name(Name(expr.span, expr.root), ctx)
            if not kind & (Kind.OBJECT | Kind.LIST):
                self._error(expr.span, f"`{expr.root}` is {_kind_name(kind)}: it has no fields", "only args has fields")
            return ANY
        self._error(
            expr.span, f"unknown name `{expr.root}`", "paths start at args (args.path) or it (inside all()/any())"
        )
        return ANY

    def _category(self, expr: Category) -> None:
        pattern = expr.pattern
        if not self._glob(pattern, expr.span, "category"):
            return
        if any(fnmatchcase(category, pattern) for category in self._categories):
            return
        close = difflib.get_close_matches(pattern, sorted(self._categories), n=1, cutoff=0.7)
        families = sorted({category.split(".")[0] + ".*" for category in self._categories})
        if close:
            hint = f"did you mean {close[0]}?"
        elif "." not in pattern and f"{pattern}.*" in families:
            hint = f"{pattern}.* names every {pattern} finding"
        else:
            hint = f"categories are family.kind; families: {', '.join(families)}" if families else ""
        self._error(expr.span, f"no scanner emits a finding category matching `{pattern}`", hint)

    def _filter_error(self, span: Span, what: str) -> None:
        self._error(
            span,
            f"a count()/earlier() filter cannot use {what}",
            "a filter looks at an earlier call: only `tool`, `args` and constants can be used",
        )

    # comparisons

    def _compare(self, expr: Compare, ctx: _Ctx) -> Kind:
        left = self._expr(expr.left, ctx)
        right = self._expr(expr.right, ctx)
        op = expr.op
        if op in ("==", "!="):
            if not left & right and not (left | right) & Kind.NULL:
                self._mismatch(expr, left, right, "they are never equal")
        elif op in ("<", "<=", ">", ">="):
            if not any(left & kind and right & kind for kind in ORDERED):
                self._mismatch(expr, left, right, f"`{op}` cannot order them")
        elif op == "in":
            if not right & (Kind.LIST | Kind.STRING):
                self._error(
                    expr.right.span,
                    f"`in` needs a list or a string on the right, not {_kind_name(right)}",
                    'x in ["a", "b"], "sub" in args.text',
                )
            elif not right & Kind.LIST and not left & Kind.STRING:
                self._mismatch(expr, left, right, "a substring test needs text on both sides")
        elif op == "matches":
            self._operand(expr.left, left, Kind.STRING | Kind.LIST, "`matches` tests text")
            self._patterns(expr.right, ctx, regex=False)
        elif op == "=~":
            self._operand(expr.left, left, Kind.STRING, "`=~` tests text")
            self._patterns(expr.right, ctx, regex=True)
        elif op in ("startswith", "endswith"):
            self._operand(expr.left, left, Kind.STRING, f"`{op}` tests text")
            self._operand(expr.right, right, Kind.STRING, f"`{op}` needs text on the right")
        elif op == "contains":
            self._operand(expr.left, left, Kind.STRING | Kind.LIST, "`contains` needs text or a list on the left")
            if not left & Kind.LIST:
                self._operand(expr.right, right, Kind.STRING, "`contains` on text needs text on the right")
        return Kind.BOOL

    def _operand(self, expr: Expr, kind: Kind, wanted: Kind, what: str) -> None:
        if not kind & wanted:
            self._error(expr.span, f"{what}, but `{self._text(expr)}` is {_kind_name(kind)}")

    def _mismatch(self, expr: Compare, left: Kind, right: Kind, consequence: str) -> None:
        kinds = left | right
        hint = ""
        if Kind.SEVERITY in (left, right) and kinds & Kind.NUMBER:
            hint = "severities compare with severity constants (severity >= high); scores with numbers (risk > 0.8)"
        elif Kind.SEVERITY in (left, right):
            hint = "compare with a bare severity constant: severity >= high (info < low < medium < high < critical)"
        elif Kind.STRING in (left, right) and kinds & (Kind.NUMBER | Kind.BOOL):
            hint = 'text is quoted ("3"); numbers and true/false are not'
        elif Kind.DURATION in (left, right):
            hint = "a duration (10m) is only used as count(..., within = 10m)"
        self._error(
            expr.span,
            f"`{self._text(expr.left)}` is {_kind_name(left)} and `{self._text(expr.right)}` is {_kind_name(right)}: "
            f"{consequence}",
            hint,
        )

    def _patterns(self, expr: Expr, ctx: _Ctx, *, regex: bool) -> None:
        """The right side of =~ / matches: a constant (compiled once at load), each pattern valid."""
        value = self._const(expr, ctx.file)
        op = "=~" if regex else "matches"
        if value is _UNKNOWN:
            self._error(
                expr.span,
                f"the pattern of `{op}` must be a constant",
                "write the pattern as a string (or a let naming one): patterns are compiled once, at load",
            )
            return
        patterns = value if isinstance(value, tuple) and not regex else (value,)
        for pattern in patterns:
            if not isinstance(pattern, str):
                wanted = "a string" if regex else "a string or a list of strings"
                self._error(expr.span, f"the pattern of `{op}` must be {wanted}", 'args.url =~ "^https://"')
                return
            if regex:
                try:
                    compile_pattern(pattern)
                except PatternError as exc:
                    self._error(expr.span, exc.message, exc.hint)
            else:
                self._glob(pattern, expr.span, "glob")

    # calls

    def _call(self, expr: Call, ctx: _Ctx) -> Kind:
        signature = FUNCTIONS.get(expr.func)
        if signature is None:
            for argument in expr.args:
                self._expr(argument, ctx)
            close = difflib.get_close_matches(expr.func, list(FUNCTIONS), n=1, cutoff=0.6)
            if expr.func in _FUNCTION_ALIASES:
                hint = f"use {_FUNCTION_ALIASES[expr.func]}"
            elif close:
                hint = f"did you mean {close[0]}()?"
            else:
                hint = f"functions are {', '.join(FUNCTIONS)}"
            name = Span(
                expr.span.file, expr.span.line, expr.span.column, expr.span.line, expr.span.column + len(expr.func)
            )
            self._error(name, f"unknown function `{expr.func}`", hint)
            return ANY
        if ctx.filter and expr.func not in _FILTER_FUNCTIONS_ALLOWED:
            self._filter_error(expr.span, f"{expr.func}()")
        low, high = signature.positional
        if not low <= len(expr.args) <= high:
            wanted = str(low) if low == high else f"{low} to {high}"
            self._error(
                expr.span,
                f"{expr.func}() takes {wanted} argument{'s' if high != 1 else ''}, got {len(expr.args)}",
                signature.usage,
            )
        for keyword in expr.kwargs:
            if keyword.name not in signature.keywords:
                takes = ", ".join(sorted(signature.keywords)) or "none"
                self._error(
                    keyword.span,
                    f"{expr.func}() has no keyword argument `{keyword.name}` (keywords: {takes})",
                    f"compare with `==`; usage: {signature.usage}",
                )
        method = getattr(self, f"_call_{expr.func}")
        method(expr, ctx)
        return signature.result

    def _argument(self, expr: Call, index: int, ctx: _Ctx, wanted: Kind, what: str) -> Kind:
        if index >= len(expr.args):
            return ANY
        argument = expr.args[index]
        kind = self._expr(argument, ctx)
        if not kind & wanted:
            self._error(
                argument.span, f"{expr.func}() needs {what}, but `{self._text(argument)}` is {_kind_name(kind)}"
            )
        return kind

    def _call_len(self, expr: Call, ctx: _Ctx) -> None:
        self._argument(expr, 0, ctx, Kind.STRING | Kind.LIST | Kind.OBJECT, "text, a list or an object")

    def _call_lower(self, expr: Call, ctx: _Ctx) -> None:
        self._argument(expr, 0, ctx, Kind.STRING, "text")

    def _call_finding(self, expr: Call, ctx: _Ctx) -> None:
        self._category_argument(expr)
        if len(expr.args) > 1:
            self._argument(expr, 1, ctx, Kind.BOOL, "a condition on the finding (severity >= high)")

    def _call_findings(self, expr: Call, ctx: _Ctx) -> None:
        self._category_argument(expr)

    def _call_severity(self, expr: Call, ctx: _Ctx) -> None:
        self._category_argument(expr)

    def _category_argument(self, expr: Call) -> None:
        if not expr.args:
            return
        argument = expr.args[0]
        if isinstance(argument, Category):
            self._category(argument)
        else:
            self._error(
                argument.span,
                f"{expr.func}() takes a finding category, not `{self._text(argument)}`",
                'finding(shell.download_exec), finding(paths.*), finding("secrets.*")',
            )

    def _call_tainted(self, expr: Call, ctx: _Ctx) -> None:
        self._provenance(expr, ctx)

    def _call_from_user(self, expr: Call, ctx: _Ctx) -> None:
        self._provenance(expr, ctx)

    def _call_injected(self, expr: Call, ctx: _Ctx) -> None:
        self._provenance(expr, ctx)

    def _provenance(self, expr: Call, ctx: _Ctx) -> None:
        if not expr.args:
            return
        argument = expr.args[0]
        if not (isinstance(argument, Path) and argument.root == "args"):
            self._expr(argument, ctx)
            self._error(
                argument.span,
                f"{expr.func}() takes an argument path, not `{self._text(argument)}`",
                f"provenance is tracked per argument: {expr.func}(args.recipients), {expr.func}(args.items[0])",
            )

    def _call_all(self, expr: Call, ctx: _Ctx) -> None:
        self._quantifier(expr, ctx)

    def _call_any(self, expr: Call, ctx: _Ctx) -> None:
        self._quantifier(expr, ctx)

    def _quantifier(self, expr: Call, ctx: _Ctx) -> None:
        self._argument(expr, 0, ctx, Kind.LIST, "a list")
        if len(expr.args) > 1:
            element = self._element_kind(expr.args[0], ctx.file)
            inner = _Ctx(ctx.file, it=element, filter=ctx.filter)
            self._argument(expr, 1, inner, Kind.BOOL, "a condition on `it`")

    def _element_kind(self, expr: Expr, file: str) -> Kind:
        value = self._const(expr, file)
        if isinstance(value, tuple) and value:
            kind = Kind(0)
            for item in value:
                kind |= _value_kind(item)
            return kind
        return JSON

    def _call_count(self, expr: Call, ctx: _Ctx) -> None:
        self._history(expr, ctx)

    def _call_earlier(self, expr: Call, ctx: _Ctx) -> None:
        self._history(expr, ctx)

    def _history(self, expr: Call, ctx: _Ctx) -> None:
        if ctx.filter:
            return  # already reported: count()/earlier() cannot nest
        inner = _Ctx(ctx.file, it=ctx.it, filter=True)
        for index in range(len(expr.args)):
            self._argument(expr, index, inner, Kind.BOOL, "a condition on the earlier call")
        for keyword in expr.kwargs:
            if keyword.name == "within":
                kind = self._expr(keyword.value, ctx)
                if not kind & Kind.DURATION:
                    self._error(
                        keyword.value.span,
                        f"within needs a duration, not {_kind_name(kind)}",
                        "a duration is a number and a unit: 30s, 10m, 2h, 1d",
                    )

    # constants and reachability

    def _let_is_constant(self, let: Let) -> bool:
        key = id(let)
        if key not in self._let_constant:
            self._let_constant[key] = False  # a let that refers to itself is not a constant
            self._let_constant[key] = self._const(let.value, let.span.file) is not _UNKNOWN
        return self._let_constant[key]

    def _const(self, expr: Expr, file: str, depth: int = 0) -> object:
        """The value of a constant expression (a tuple for a list), else _UNKNOWN."""
        if depth > 50:
            return _UNKNOWN
        if isinstance(expr, Literal):
            return expr.value
        if isinstance(expr, Category):
            return expr.pattern
        if isinstance(expr, SeverityConst):
            return Severity.parse(expr.name)
        if isinstance(expr, Duration):
            return _DurationValue(expr.seconds)
        if isinstance(expr, Neg):
            value = self._const(expr.operand, file, depth + 1)
            return -value if _is_number(value) else _UNKNOWN  # type: ignore[operator]
        if isinstance(expr, ListExpr):
            items = tuple(self._const(item, file, depth + 1) for item in expr.items)
            return _UNKNOWN if any(item is _UNKNOWN for item in items) else items
        if isinstance(expr, Name) and expr.name not in BUILTIN_NAMES and expr.name != "it":
            let = self._visible(file, expr.name)
            if let is not None and let not in self._resolving:
                self._resolving.append(let)
                try:
                    return self._const(let.value, let.span.file, depth + 1)
                finally:
                    self._resolving.pop()
        return _UNKNOWN

    def _truth(self, expr: Expr, rule: Rule) -> frozenset[str]:
        """What a condition can evaluate to: T (true), F (false), E (error), by Cedar's rules for and/or/not."""
        if isinstance(expr, Not):
            inner = self._truth(expr.operand, rule)
            return frozenset({"T": "F", "F": "T", "E": "E"}[value] for value in inner)
        if isinstance(expr, BoolOp):
            left = self._truth(expr.left, rule)
            out: set[str] = set()
            decided = "F" if expr.op == "and" else "T"  # `false and E` = false, `true or E` = true
            for value in left:
                if value == decided or value == "E":
                    out.add(value)
                else:
                    out |= self._truth(expr.right, rule)
            return frozenset(out)
        value = self._const(expr, rule.span.file)
        if isinstance(value, bool):
            return frozenset({"T" if value else "F"})
        if isinstance(expr, Compare):
            known = self._compare_const(expr, rule)
            if known is not None:
                return frozenset({"T" if known else "F"})
        return frozenset({"T", "F", "E"})

    def _compare_const(self, expr: Compare, rule: Rule) -> bool | None:
        file = rule.span.file
        left, right = self._const(expr.left, file), self._const(expr.right, file)
        if left is not _UNKNOWN and right is not _UNKNOWN:
            return _evaluate(expr.op, left, right)
        if isinstance(expr.left, Name) and expr.left.name == "tool" and right is not _UNKNOWN:
            return _tool_test(expr.op, right, rule.tools)
        return None

    # shadowing

    def _shadowing(self) -> None:
        rules = [rule for file in self._files for rule in file.rules]
        unconditional = [rule for rule in rules if self._always_matches(rule)]
        for position, rule in enumerate(rules):
            if id(rule) in self._unreachable:
                continue
            for other in unconditional:
                if other is rule or not _covers(other, rule):
                    continue
                better = other.priority < rule.priority or (
                    other.priority == rule.priority and other.effect.strength >= rule.effect.strength
                )
                mutual = (
                    other.priority == rule.priority
                    and other.effect.strength == rule.effect.strength
                    and self._always_matches(rule)
                    and _covers(rule, other)
                )
                if better and (not mutual or rules.index(other) < position):
                    self._warning(
                        rule.span,
                        f"rule `{rule.id}` never decides: rule `{other.id}` ({other.span}) matches every call it "
                        "does and wins",
                        "give this rule a lower priority number than the other (lower = checked first), narrow the "
                        "other rule's tools or condition, or remove this rule",
                    )
                    break

    def _always_matches(self, rule: Rule) -> bool:
        return rule.condition is None or self._truth(rule.condition, rule) == frozenset({"T"})

    # tests

    def _tests(self) -> None:
        ids = {rule.id for file in self._files for rule in file.rules} | {"default"}
        for file in self._files:
            names: dict[str, Span] = {}
            for test in file.tests:
                if test.name in names:
                    self._warning(
                        test.span, f"test {test.name!r} is defined twice (first at {names[test.name]})", "rename one"
                    )
                names.setdefault(test.name, test.span)
                if test.expect_rule is not None and test.expect_rule not in ids:
                    close = difflib.get_close_matches(test.expect_rule, sorted(ids), n=1, cutoff=0.6)
                    self._error(
                        test.span,
                        f"test {test.name!r} expects rule `{test.expect_rule}`, which no loaded file defines",
                        f"did you mean `{close[0]}`?" if close else "name a rule id (rule ID: ...) or `default`",
                    )


# --- helpers ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _DurationValue:
    seconds: float


def _is_number(value: object) -> bool:
    return type(value) in (int, float)


def _literal_kind(value: object) -> Kind:
    return _value_kind(value)


def _value_kind(value: object) -> Kind:
    if isinstance(value, bool):
        return Kind.BOOL
    if isinstance(value, Severity):
        return Kind.SEVERITY
    if isinstance(value, int | float):
        return Kind.NUMBER
    if isinstance(value, str):
        return Kind.STRING
    if value is None:
        return Kind.NULL
    if isinstance(value, tuple):
        return Kind.LIST
    if isinstance(value, _DurationValue):
        return Kind.DURATION
    return ANY


_KIND_NAMES: Mapping[Kind, str] = {
    Kind.STRING: "text",
    Kind.NUMBER: "a number",
    Kind.BOOL: "true/false",
    Kind.NULL: "null",
    Kind.LIST: "a list",
    Kind.OBJECT: "an object",
    Kind.DURATION: "a duration",
    Kind.SEVERITY: "a severity",
}


def _kind_name(kind: Kind) -> str:
    if kind in (ANY, JSON):
        return "any value"
    names = [name for member, name in _KIND_NAMES.items() if member in kind]
    return " or ".join(names) if names else "nothing"


def _same_kind(left: object, right: object) -> bool:
    return _value_kind(left) == _value_kind(right) or (left is None or right is None)


def _evaluate(op: str, left: object, right: object) -> bool | None:
    """A comparison of two constants, or None when it is not a plain true/false (a type error, reported elsewhere)."""
    if op in ("==", "!="):
        if not _same_kind(left, right):
            return None
        return (left == right) == (op == "==")
    if op in ("<", "<=", ">", ">="):
        if _value_kind(left) != _value_kind(right) or _value_kind(left) not in ORDERED:
            return None
        if isinstance(left, _DurationValue) and isinstance(right, _DurationValue):
            left, right = left.seconds, right.seconds
        pair: tuple = (left, right)
        return {"<": pair[0] < pair[1], "<=": pair[0] <= pair[1], ">": pair[0] > pair[1], ">=": pair[0] >= pair[1]}[op]
    if op == "in":
        if isinstance(right, tuple):
            items = left if isinstance(left, tuple) else (left,)
            return all(any(_same_kind(i, r) and i == r for r in right) for i in items)
        if isinstance(right, str) and isinstance(left, str):
            return left in right
        return None
    if isinstance(left, str) and isinstance(right, str):
        if op == "startswith":
            return left.startswith(right)
        if op == "endswith":
            return left.endswith(right)
        if op == "contains":
            return right in left
        if op == "matches":
            return fnmatchcase(left, right) if glob_problem(right) is None else None
    valid = isinstance(right, tuple) and all(isinstance(p, str) and glob_problem(p) is None for p in right)
    if op == "matches" and isinstance(left, str) and valid:
        return any(fnmatchcase(left, p) for p in right)  # type: ignore[union-attr]
    return None


def _tool_test(op: str, right: object, tools: Sequence[ToolPattern]) -> bool | None:
    """`tool == "x"` / `tool != "x"` / `tool in [...]` / `tool matches ...` given the names the rule can see."""
    names = [pattern.name for pattern in tools]
    exact = all(not pattern.is_glob for pattern in tools)

    def possible(value: str) -> bool:
        return any(fnmatchcase(value, name) for name in names)

    if op in ("==", "!=") and isinstance(right, str):
        result: bool | None = None
        if not possible(right):
            result = False
        elif exact and set(names) == {right}:
            result = True
        return result if result is None or op == "==" else not result
    if op == "in" and isinstance(right, tuple) and all(isinstance(item, str) for item in right):
        if not any(possible(item) for item in right):  # type: ignore[arg-type]
            return False
        if exact and all(name in right for name in names):
            return True
    if op == "matches" and exact:
        patterns = right if isinstance(right, tuple) else (right,)
        if all(isinstance(p, str) and glob_problem(p) is None for p in patterns):
            hits = [any(fnmatchcase(name, p) for p in patterns) for name in names]  # type: ignore[arg-type]
            if all(hits):
                return True
            if not any(hits):
                return False
    return None


def glob_problem(pattern: str) -> str | None:
    """Why `pattern` is not a well-formed glob (fnmatch syntax: * ? [abc] [!abc] [a-z]), or None."""
    if not pattern:
        return "it is empty"
    index = 0
    while index < len(pattern):
        if pattern[index] != "[":
            index += 1
            continue
        end = index + 1
        if end < len(pattern) and pattern[end] == "!":
            end += 1
        if end < len(pattern) and pattern[end] == "]":
            end += 1  # a leading ] is a literal member
        while end < len(pattern) and pattern[end] != "]":
            end += 1
        if end >= len(pattern):
            return "`[` is not closed (write [[] for a literal [)"
        body = pattern[index + 1 : end].lstrip("!")
        for position in range(1, len(body) - 1):
            if body[position] == "-" and body[position - 1] > body[position + 1]:
                return f"the range {body[position - 1]}-{body[position + 1]} is reversed"
        index = end + 1
    return None


def _literal_prefix(glob: str) -> str:
    for index, char in enumerate(glob):
        if char in "*?[":
            return glob[:index]
    return glob


def _glob_covers(outer: str, inner: str) -> bool:
    """True when every name `inner` matches is matched by `outer` (a safe approximation: False when unsure)."""
    if outer == inner or outer.strip("*") == "":
        return True
    if not any(char in inner for char in "*?["):
        return fnmatchcase(inner, outer)
    if outer.endswith("*") and not any(char in outer[:-1] for char in "*?["):
        return _literal_prefix(inner).startswith(outer[:-1])
    return False


def _pattern_covers(outer: ToolPattern, inner: ToolPattern) -> bool:
    if outer.server is not None and (inner.server is None or not _glob_covers(outer.server, inner.server)):
        return False
    return _glob_covers(outer.name, inner.name)


def _covers(outer: Rule, inner: Rule) -> bool:
    return all(any(_pattern_covers(o, i) for o in outer.tools) for i in inner.tools)


__all__ = ["ANY", "BUILTIN_NAMES", "FUNCTIONS", "Kind", "Signature", "check_policy", "glob_problem"]
