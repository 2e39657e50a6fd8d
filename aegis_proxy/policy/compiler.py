"""Compile policy expressions to Python closures, once, at load: nothing on the request path walks the syntax tree.

Each expression becomes `Callable[[EvalEnv], value]`. Constant sub-expressions (literals, lists of literals, `let`
names bound to them, operators over constants) are folded at compile time; regular expressions and globs are compiled
once (RE2 via `safe_regex.compile_pattern`, globs translated to RE2 or to a plain string test). Operators take the
common cases first (a string on the left, a constant on the right) and fall back to the general rules.

Semantics (spec, "Semantics" 4): every operator propagates an `EvalError` operand; `and`/`or` short-circuit only on
`false and E` / `true or E` (left to right, like Cedar); a type mismatch, a missing argument, an index out of range or
an unknown probe score is an error, never null or false. A constant that is itself an error (`"a" < 3`) is refused at
compile time: a rule that can only ever error is a mistake, not a policy.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from aegis_proxy.decide import Evidence
from aegis_proxy.errors import AegisError, PatternError
from aegis_proxy.extract import _member_path  # the exact path format extraction and provenance key on
from aegis_proxy.models import Finding, PriorCall, Severity, ToolCall
from aegis_proxy.policy import ast
from aegis_proxy.policy.values import (
    DurationValue,
    EvalError,
    equal,
    is_number,
    kind,
    ordered,
)
from aegis_proxy.provenance import SOURCE_INJECTED, SOURCE_UNTRUSTED, ProvenanceReport
from aegis_proxy.safe_regex import compile_pattern

Fn = Callable[["EvalEnv"], Any]


class PolicyCompileError(AegisError):
    """An expression that cannot be compiled (unknown name or function, bad regex, constant type error)."""

    def __init__(self, message: str, span: ast.Span | None, *, hint: str = "") -> None:
        super().__init__(f"{span}: {message}" if span else message, hint=hint)
        self.reason = message
        self.span = span


class EvalEnv:
    """What one decision evaluates against. Built once per `decide`; `it`, `prior` and `scope_severity` are rebound
    while `all`/`any`, `count`/`earlier` and `finding(..., FILTER)` iterate (each restores what it found)."""

    __slots__ = (
        "args",
        "call",
        "evidence",
        "findings",
        "history",
        "it",
        "now",
        "prior",
        "provenance",
        "scope_severity",
        "scores",
        "worst",
    )

    def __init__(self, evidence: Evidence, now: float) -> None:
        call = evidence.call
        self.evidence = evidence
        self.call: ToolCall = call
        self.args: Any = call.arguments
        self.findings: tuple[Finding, ...] = evidence.findings
        self.worst: Severity = max((f.severity for f in evidence.findings), default=Severity.INFO)
        self.provenance: ProvenanceReport | None = evidence.provenance
        self.scores = evidence.scores
        self.history: tuple[PriorCall, ...] = evidence.context.history
        self.now = now
        self.it: Any = None
        self.prior: PriorCall | None = None
        self.scope_severity: Severity = Severity.INFO


# --------------------------------------------------------------------------------------------------------------------
# Globs: fnmatch semantics (case-sensitive, `*` `?` `[...]` `[!...]`), run as a string test or as RE2.
# fnmatch.translate itself emits look-ahead and back-references for patterns with several stars, which RE2 refuses,
# so the translation is done here.

_GLOB_META: Final = frozenset("*?[")
_RE_SPECIAL: Final = frozenset("\\.^$*+?{}[]|()")


def _glob_regex(pattern: str) -> str:
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        char = pattern[i]
        i += 1
        if char == "*":
            if not out or out[-1] != ".*":
                out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "[":
            j = i
            if j < n and pattern[j] == "!":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 1
            if j >= n:  # no closing bracket: a literal "["
                out.append("\\[")
                continue
            body = pattern[i:j]
            i = j + 1
            negate = body.startswith("!")
            if negate:
                body = body[1:]
            body = body.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")
            if body.startswith("^"):
                body = "\\" + body
            out.append(f"[{'^' if negate else ''}{body}]")
        else:
            out.append("\\" + char if char in _RE_SPECIAL else char)
    return "".join(out)


@functools.lru_cache(maxsize=2048)
def compile_glob(pattern: str) -> Callable[[str], bool]:
    """A predicate on strings for one glob. Raises PatternError for a glob RE2 cannot compile (a bad range)."""
    if not _GLOB_META.intersection(pattern):
        return pattern.__eq__
    if pattern.strip("*") == "":
        return lambda text: True
    inner = pattern.strip("*")
    if not _GLOB_META.intersection(inner):
        starts, ends = pattern.startswith("*"), pattern.endswith("*")
        if starts and ends:
            return lambda text: inner in text
        if ends:
            return lambda text: text.startswith(inner)
        if starts:
            return lambda text: text.endswith(inner)
    regex = compile_pattern(_glob_regex(pattern), dotall=True)
    return lambda text: regex.fullmatch(text) is not None


# --------------------------------------------------------------------------------------------------------------------
# Compiled nodes.

_DYNAMIC: Final = object()  # Node.const when the value is only known per call
_MISSING: Final = object()


@dataclass(frozen=True, slots=True)
class Node:
    fn: Fn
    const: object = _DYNAMIC

    @property
    def is_const(self) -> bool:
        return self.const is not _DYNAMIC


def _const(value: object) -> Node:
    return Node(lambda env: value, value)


@dataclass(frozen=True, slots=True)
class Scope:
    file: str
    it: bool = False  # inside all()/any(): `it` is the element
    finding: bool = False  # inside finding(..., FILTER): `severity` is that finding's
    history: bool = False  # inside count()/earlier(): `tool` and `args` are the earlier call's


BUILTIN_NAMES: Final = frozenset(
    {"args", "tool", "protocol", "server", "agent", "session", "severity", "risk", "injection"}
)
FUNCTIONS: Final = frozenset(
    {
        "len",
        "lower",
        "finding",
        "findings",
        "severity",
        "tainted",
        "from_user",
        "injected",
        "all",
        "any",
        "count",
        "earlier",
    }
)
# Lists longer than this are not walked element by element (all/any, `in` and `contains` on lists): the result is an
# error, which fails closed, so a million-element argument costs microseconds, not seconds. The same number as
# extraction's bound on strings per call.
MAX_ITEMS: Final = 10_000


def _too_long(what: str, size: int, span: ast.Span) -> EvalError:
    return EvalError(f"{what} over a list of {size} items: more than {MAX_ITEMS} are not evaluated", span)


def _type_error(value: object, needs: str, span: ast.Span) -> EvalError:
    """`value` itself when it is already an error (errors propagate unchanged), else a type error naming its kind."""
    if type(value) is EvalError:
        return value
    return EvalError(f"{needs}, got {kind(value)}", span)


class Compiler:
    """Compiles the expressions of one loaded set. `scopes[file]` is what `let` names that file can see."""

    def __init__(self, scopes: Mapping[str, Mapping[str, ast.Let]] | None = None) -> None:
        self._scopes: Mapping[str, Mapping[str, ast.Let]] = scopes or {}
        self._lets: dict[int, Node] = {}  # compiled let values, by id of the Let node
        self._resolving: list[ast.Let] = []

    # -- entry points ------------------------------------------------------------------------------------------------

    def condition(self, expr: ast.Expr, file: str | None = None) -> Node:
        """A rule condition, compiled in the scope of `file` (default: the file the expression was written in)."""
        return self.expr(expr, Scope(file if file is not None else expr.span.file))

    def expr(self, expr: ast.Expr, scope: Scope) -> Node:
        method = getattr(self, f"_compile_{type(expr).__name__}", None)
        if method is None:
            raise PolicyCompileError(f"cannot compile a {type(expr).__name__} expression", expr.span)
        node: Node = method(expr, scope)
        if not node.is_const:
            return node
        if type(node.const) is EvalError:
            raise PolicyCompileError(node.const.reason, node.const.span or expr.span)
        return node

    def _fold(self, node: Node, span: ast.Span, *children: Node) -> Node:
        """Evaluate at compile time when every child is constant (their closures never touch the environment)."""
        if children and all(child.is_const for child in children):
            value = node.fn(None)  # type: ignore[arg-type]
            if type(value) is EvalError:
                raise PolicyCompileError(value.reason, value.span or span)
            return _const(value)
        return node

    # -- leaves ------------------------------------------------------------------------------------------------------

    def _compile_Literal(self, expr: ast.Literal, scope: Scope) -> Node:
        return _const(expr.value)

    def _compile_Duration(self, expr: ast.Duration, scope: Scope) -> Node:
        return _const(DurationValue(float(expr.seconds), expr.text))

    def _compile_SeverityConst(self, expr: ast.SeverityConst, scope: Scope) -> Node:
        try:
            return _const(Severity.parse(expr.name))
        except ValueError as exc:
            raise PolicyCompileError(str(exc), expr.span) from None

    def _compile_Category(self, expr: ast.Category, scope: Scope) -> Node:
        return _const(expr.pattern)

    def _compile_ListExpr(self, expr: ast.ListExpr, scope: Scope) -> Node:
        items = [self.expr(item, scope) for item in expr.items]
        if all(item.is_const for item in items):
            return _const(tuple(item.const for item in items))
        fns = tuple(item.fn for item in items)

        def make_list(env: EvalEnv) -> object:
            out = []
            for fn in fns:
                value = fn(env)
                if type(value) is EvalError:
                    return value
                out.append(value)
            return out

        return Node(make_list)

    def _compile_Name(self, expr: ast.Name, scope: Scope) -> Node:
        name, span = expr.name, expr.span
        if name == "it":
            if not scope.it:
                raise PolicyCompileError("`it` is only defined inside all() and any()", span)
            return Node(lambda env: env.it)
        if name in BUILTIN_NAMES:
            return self._builtin(name, span, scope)
        let = self._scopes.get(scope.file, {}).get(name)
        if let is None:
            raise PolicyCompileError(f"unknown name {name!r}", span, hint="define it with `let` or check the spelling")
        return self._let(let)

    def _let(self, let: ast.Let) -> Node:
        compiled = self._lets.get(id(let))
        if compiled is not None:
            return compiled
        if let in self._resolving:
            chain = " -> ".join(item.name for item in [*self._resolving, let])
            raise PolicyCompileError(f"let {let.name!r} refers to itself: {chain}", let.span)
        self._resolving.append(let)
        try:
            compiled = self.expr(let.value, Scope(let.span.file))
        finally:
            self._resolving.pop()
        self._lets[id(let)] = compiled
        return compiled

    def _builtin(self, name: str, span: ast.Span, scope: Scope) -> Node:
        if name == "args":
            return Node((lambda env: env.prior.arguments) if scope.history else (lambda env: env.args))
        if name == "tool":
            return Node((lambda env: env.prior.tool) if scope.history else (lambda env: env.call.tool))
        if name == "severity":
            return Node((lambda env: env.scope_severity) if scope.finding else (lambda env: env.worst))
        if name == "protocol":
            return Node(lambda env: env.call.protocol)
        if name == "server":
            return Node(lambda env: env.call.server)
        if name == "agent":
            return Node(lambda env: env.evidence.context.agent_id)
        if name == "session":
            return Node(lambda env: env.evidence.context.session_id)
        # risk / injection: a probe score, unknown (an error) when the probe did not run.
        unknown = EvalError(f"{name} score is unknown (the probe is off)", span)
        not_number = EvalError(f"{name} score is not a number", span)

        def probe(env: EvalEnv) -> object:
            value = env.scores.get(name)
            if value is None:
                return unknown
            return value if is_number(value) else not_number

        return Node(probe)

    def _compile_Path(self, expr: ast.Path, scope: Scope) -> Node:
        root = self._compile_Name(ast.Name(expr.span, expr.root), scope)
        if not expr.segments:
            return root
        steps = []
        shown = expr.root
        for segment in expr.segments:
            key = segment.key
            parent = shown
            shown += f"[{key}]" if isinstance(key, int) else (f".{key}" if key.isidentifier() else f"[{key!r}]")
            if isinstance(key, int):
                steps.append(
                    (
                        key,
                        True,
                        EvalError(f"{shown} is missing (index out of range)", expr.span),
                        EvalError(f"{parent} is not a list, so {shown} is missing", expr.span),
                    )
                )
            else:
                steps.append(
                    (
                        key,
                        False,
                        EvalError(f"{shown} is missing", expr.span),
                        EvalError(f"{parent} is not an object, so {shown} is missing", expr.span),
                    )
                )
        root_fn = root.fn
        if len(steps) == 1 and not steps[0][1]:  # args.x: the common case, one dict lookup
            key, _, missing, wrong = steps[0]

            def member(env: EvalEnv) -> object:
                value = root_fn(env)
                if type(value) is dict:
                    found = value.get(key, _MISSING)
                    return missing if found is _MISSING else found
                return value if type(value) is EvalError else wrong

            return self._fold(Node(member), expr.span, root)

        frozen_steps = tuple(steps)

        def path(env: EvalEnv) -> object:
            value = root_fn(env)
            if type(value) is EvalError:
                return value
            for key, is_index, missing, wrong in frozen_steps:
                if is_index:
                    if type(value) is not list and type(value) is not tuple:
                        return wrong
                    if not -len(value) <= key < len(value):
                        return missing
                    value = value[key]
                else:
                    if type(value) is not dict:
                        return wrong
                    value = value.get(key, _MISSING)
                    if value is _MISSING:
                        return missing
            return value

        return self._fold(Node(path), expr.span, root)

    # -- operators ---------------------------------------------------------------------------------------------------

    def _compile_Not(self, expr: ast.Not, scope: Scope) -> Node:
        operand = self.expr(expr.operand, scope)
        fn = operand.fn
        span = expr.span

        def negate(env: EvalEnv) -> object:
            value = fn(env)
            if value is True:
                return False
            if value is False:
                return True
            return _type_error(value, "`not` needs a boolean", span)

        return self._fold(Node(negate), span, operand)

    def _compile_Neg(self, expr: ast.Neg, scope: Scope) -> Node:
        operand = self.expr(expr.operand, scope)
        fn = operand.fn
        span = expr.span

        def minus(env: EvalEnv) -> object:
            value = fn(env)
            if is_number(value):
                return -value
            return _type_error(value, "`-` needs a number", span)

        return self._fold(Node(minus), span, operand)

    def _compile_BoolOp(self, expr: ast.BoolOp, scope: Scope) -> Node:
        left, right = self.expr(expr.left, scope), self.expr(expr.right, scope)
        lf, rf = left.fn, right.fn
        span, op = expr.span, expr.op
        if op not in ("and", "or"):
            raise PolicyCompileError(f"unknown boolean operator {op!r}", span)
        stop = op == "or"  # the left value that decides alone: false for `and`, true for `or`

        def not_bool(value: object) -> EvalError:
            return _type_error(value, f"`{op}` needs booleans", span)

        def boolean(env: EvalEnv) -> object:
            first = lf(env)
            if first is stop:
                return stop
            if first is not (not stop):
                return not_bool(first)
            second = rf(env)
            if second is True or second is False:
                return second
            return not_bool(second)

        # Folding only when the left side decides alone, or both sides are constant.
        if left.is_const and left.const is stop:
            return _const(stop)
        if left.is_const and left.const is (not stop):
            if right.is_const:
                return self._fold(Node(boolean), span, left, right)
            rfn = right.fn

            def passthrough(env: EvalEnv) -> object:
                second = rfn(env)
                return second if second is True or second is False else not_bool(second)

            return Node(passthrough)
        return self._fold(Node(boolean), span, left, right)

    def _compile_Compare(self, expr: ast.Compare, scope: Scope) -> Node:
        left, right = self.expr(expr.left, scope), self.expr(expr.right, scope)
        make = _OPERATORS.get(expr.op)
        if make is None:
            raise PolicyCompileError(f"unknown operator {expr.op!r}", expr.span)
        impl = make(expr.span, right.const if right.is_const else _DYNAMIC)
        lf, rf = left.fn, right.fn
        if right.is_const:
            constant = right.const

            def compare_const(env: EvalEnv) -> object:
                value = lf(env)
                if type(value) is EvalError:
                    return value
                return impl(value, constant)

            return self._fold(Node(compare_const), expr.span, left)

        def compare(env: EvalEnv) -> object:
            first = lf(env)
            if type(first) is EvalError:
                return first
            second = rf(env)
            if type(second) is EvalError:
                return second
            return impl(first, second)

        return self._fold(Node(compare), expr.span, left, right)

    # -- functions ---------------------------------------------------------------------------------------------------

    def _compile_Call(self, expr: ast.Call, scope: Scope) -> Node:
        if expr.func not in FUNCTIONS:
            known = ", ".join(sorted(FUNCTIONS))
            raise PolicyCompileError(f"unknown function {expr.func}()", expr.span, hint=f"functions are: {known}")
        if expr.kwargs and expr.func not in ("count", "earlier"):
            raise PolicyCompileError(f"{expr.func}() takes no keyword arguments", expr.kwargs[0].span)
        method = getattr(self, f"_call_{expr.func}")
        node: Node = method(expr, scope)
        return node

    def _arity(self, expr: ast.Call, low: int, high: int | None = None) -> None:
        high = low if high is None else high
        if not low <= len(expr.args) <= high:
            wanted = str(low) if low == high else f"{low} to {high}"
            raise PolicyCompileError(
                f"{expr.func}() takes {wanted} argument{'s' if high != 1 else ''}, got {len(expr.args)}", expr.span
            )

    def _call_len(self, expr: ast.Call, scope: Scope) -> Node:
        self._arity(expr, 1)
        operand = self.expr(expr.args[0], scope)
        fn, span = operand.fn, expr.span

        def length(env: EvalEnv) -> object:
            value = fn(env)
            if type(value) in (str, list, tuple, dict):
                return len(value)
            return _type_error(value, "len() needs a string, list or object", span)

        return self._fold(Node(length), span, operand)

    def _call_lower(self, expr: ast.Call, scope: Scope) -> Node:
        self._arity(expr, 1)
        operand = self.expr(expr.args[0], scope)
        fn, span = operand.fn, expr.span

        def lowered(env: EvalEnv) -> object:
            value = fn(env)
            if type(value) is str:
                return value.lower()
            return _type_error(value, "lower() needs a string", span)

        return self._fold(Node(lowered), span, operand)

    def _category(self, expr: ast.Call, scope: Scope) -> Callable[[str], bool]:
        node = self.expr(expr.args[0], scope)
        if not node.is_const or not isinstance(node.const, str):
            raise PolicyCompileError(
                f"{expr.func}() needs a finding category or glob, like shell.* or paths.sensitive", expr.args[0].span
            )
        return _glob(node.const, expr.args[0].span)

    def _finding_filter(self, expr: ast.Call, scope: Scope) -> Fn | None:
        if len(expr.args) < 2:
            return None
        node = self.expr(expr.args[1], Scope(scope.file, it=scope.it, finding=True, history=scope.history))
        return node.fn

    def _matching(self, expr: ast.Call, scope: Scope) -> Callable[[EvalEnv], list[Finding] | EvalError]:
        """The findings whose category matches, and that pass the optional filter (`severity >= high`)."""
        matches = self._category(expr, scope)
        filt = self._finding_filter(expr, scope)
        span = expr.span

        def select(env: EvalEnv) -> list[Finding] | EvalError:
            chosen = [f for f in env.findings if matches(f.category)]
            if filt is None or not chosen:
                return chosen
            kept = []
            saved = env.scope_severity
            try:
                for finding in chosen:
                    env.scope_severity = finding.severity
                    verdict = filt(env)
                    if verdict is True:
                        kept.append(finding)
                    elif verdict is not False:
                        return _type_error(verdict, "the filter must be a boolean", span)
            finally:
                env.scope_severity = saved
            return kept

        return select

    def _call_finding(self, expr: ast.Call, scope: Scope) -> Node:
        self._arity(expr, 1, 2)
        if len(expr.args) == 1:  # the common case: no list built
            matches = self._category(expr, scope)
            return Node(lambda env: any(matches(f.category) for f in env.findings))
        select = self._matching(expr, scope)

        def found(env: EvalEnv) -> object:
            chosen = select(env)
            return chosen if type(chosen) is EvalError else bool(chosen)

        return Node(found)

    def _call_findings(self, expr: ast.Call, scope: Scope) -> Node:
        self._arity(expr, 1, 2)
        select = self._matching(expr, scope)

        def number(env: EvalEnv) -> object:
            chosen = select(env)
            return chosen if type(chosen) is EvalError else len(chosen)

        return Node(number)

    def _call_severity(self, expr: ast.Call, scope: Scope) -> Node:
        self._arity(expr, 1, 2)
        select = self._matching(expr, scope)

        def worst(env: EvalEnv) -> object:
            chosen = select(env)
            if type(chosen) is EvalError:
                return chosen
            return max((f.severity for f in chosen), default=Severity.INFO)

        return Node(worst)

    def _provenance_path(self, expr: ast.Call, scope: Scope) -> tuple[tuple[str | int, ...], str]:
        self._arity(expr, 1)
        target = expr.args[0]
        if isinstance(target, ast.Name) and target.name == "args":
            target = ast.Path(target.span, "args", ())
        if not isinstance(target, ast.Path) or target.root != "args":
            raise PolicyCompileError(f"{expr.func}() needs an argument path, like args.recipients", target.span)
        if scope.history:
            raise PolicyCompileError(f"{expr.func}() is about the current call, not earlier ones", expr.span)
        return tuple(segment.key for segment in target.segments), target.dotted()

    def _call_tainted(self, expr: ast.Call, scope: Scope) -> Node:
        return self._provenance_any(expr, scope, SOURCE_UNTRUSTED)

    def _call_injected(self, expr: ast.Call, scope: Scope) -> Node:
        return self._provenance_any(expr, scope, SOURCE_INJECTED)

    def _provenance_any(self, expr: ast.Call, scope: Scope, source: str) -> Node:
        keys, shown = self._provenance_path(expr, scope)
        resolve = _path_resolver(keys, shown, expr.span)
        no_report = EvalError("provenance was not computed for this call", expr.span)

        def any_leaf(env: EvalEnv) -> object:
            report = env.provenance
            if report is None:
                return no_report
            resolved = resolve(env.args)
            if type(resolved) is EvalError:
                return resolved
            prefix = resolved[1]
            cut = len(prefix)
            for trace in report.traces:  # the value itself, its elements and members, and what was decoded from them
                path = trace.path
                if (path == prefix or (path.startswith(prefix) and path[cut] in ".[")) and source in trace.sources:
                    return True
            return False

        return Node(any_leaf)

    def _call_from_user(self, expr: ast.Call, scope: Scope) -> Node:
        keys, shown = self._provenance_path(expr, scope)
        resolve = _path_resolver(keys, shown, expr.span)
        no_report = EvalError("provenance was not computed for this call", expr.span)

        def all_leaves(env: EvalEnv) -> object:
            report = env.provenance
            if report is None:
                return no_report
            resolved = resolve(env.args)
            if type(resolved) is EvalError:
                return resolved
            value, path = resolved
            # Every scalar under the value must trace to what the user wrote; an empty list proves nothing.
            stack: list[tuple[object, str]] = [(value, path)]
            seen = 0
            while stack:
                item, where = stack.pop()
                if type(item) is dict:
                    stack.extend((child, _member_path(where, str(key))) for key, child in item.items())
                elif type(item) is list or type(item) is tuple:
                    stack.extend((child, f"{where}[{index}]") for index, child in enumerate(item))
                else:
                    seen += 1
                    if not report.from_user(where):
                        return False
            return seen > 0

        return Node(all_leaves)

    def _call_all(self, expr: ast.Call, scope: Scope) -> Node:
        return self._quantifier(expr, scope, every=True)

    def _call_any(self, expr: ast.Call, scope: Scope) -> Node:
        return self._quantifier(expr, scope, every=False)

    def _quantifier(self, expr: ast.Call, scope: Scope, *, every: bool) -> Node:
        self._arity(expr, 2)
        items = self.expr(expr.args[0], scope)
        predicate = self.expr(expr.args[1], Scope(scope.file, it=True, finding=scope.finding, history=scope.history))
        items_fn, pred, span, name = items.fn, predicate.fn, expr.span, expr.func
        stop = not every  # the element result that decides alone: false for all(), true for any()

        def quantify(env: EvalEnv) -> object:
            values = items_fn(env)
            if type(values) is not list and type(values) is not tuple:
                return _type_error(values, f"{name}() needs a list", span)
            if len(values) > MAX_ITEMS:
                return _too_long(name + "()", len(values), span)
            saved = env.it
            try:
                for value in values:
                    env.it = value
                    verdict = pred(env)
                    if verdict is stop:
                        return stop
                    if verdict is not (not stop):
                        return _type_error(verdict, f"{name}() predicate must be a boolean", span)
            finally:
                env.it = saved
            return every

        return Node(quantify)  # never folded: it rebinds `it` on the environment

    def _history_filters(self, expr: ast.Call, scope: Scope) -> tuple[tuple[Fn, ...], Fn | None]:
        inner = Scope(scope.file, it=scope.it, finding=scope.finding, history=True)
        filters = [self.expr(arg, inner).fn for arg in expr.args]
        within: Fn | None = None
        for keyword in expr.kwargs:
            if keyword.name == "within":
                within = self.expr(keyword.value, scope).fn
            elif keyword.name == "tool":  # `tool = "x"` in a filter means `tool == "x"`
                filters.append(
                    self.expr(ast.Compare(keyword.span, "==", ast.Name(keyword.span, "tool"), keyword.value), inner).fn
                )
            else:
                raise PolicyCompileError(
                    f"{expr.func}() has no keyword {keyword.name!r}",
                    keyword.span,
                    hint='filter with an expression over tool and args, e.g. count(tool = "x", within = 10m)',
                )
        return tuple(filters), within

    def _call_count(self, expr: ast.Call, scope: Scope) -> Node:
        return Node(self._counter(expr, scope))

    def _call_earlier(self, expr: ast.Call, scope: Scope) -> Node:
        counter = self._counter(expr, scope)

        def earlier(env: EvalEnv) -> object:
            number = counter(env)
            return number if type(number) is EvalError else number > 0

        return Node(earlier)

    def _counter(self, expr: ast.Call, scope: Scope) -> Fn:
        if scope.history:
            raise PolicyCompileError(f"{expr.func}() cannot be nested inside count() or earlier()", expr.span)
        filters, within = self._history_filters(expr, scope)
        span, name = expr.span, expr.func

        def counter(env: EvalEnv) -> object:
            history = env.history
            cutoff = None
            if within is not None:
                window = within(env)
                if type(window) is not DurationValue:
                    return _type_error(window, f"{name}(within = ...) needs a duration like 10m", span)
                cutoff = env.now - window.seconds
            if not history:
                return 0
            number = 0
            saved = env.prior
            try:
                for prior in history:
                    if cutoff is not None and prior.at < cutoff:
                        continue
                    env.prior = prior
                    for filt in filters:
                        verdict = filt(env)
                        if verdict is False:
                            break
                        if verdict is not True:
                            return _type_error(verdict, f"{name}() filter must be a boolean", span)
                    else:
                        number += 1
            finally:
                env.prior = saved
            return number

        return counter


def _glob(pattern: str, span: ast.Span) -> Callable[[str], bool]:
    try:
        return compile_glob(pattern)
    except PatternError as exc:
        raise PolicyCompileError(f"bad glob {pattern!r}: {exc.message}", span) from None


def _path_resolver(keys: tuple[str | int, ...], shown: str, span: ast.Span) -> Callable[[object], Any]:
    """(value, concrete JSON path) of an argument path, with negative indexes made absolute; or an EvalError."""
    missing = EvalError(f"{shown} is missing", span)

    def resolve(args: object) -> Any:
        value, path = args, "args"
        for key in keys:
            if isinstance(key, int):
                if type(value) is not list and type(value) is not tuple:
                    return missing
                index = key + len(value) if key < 0 else key
                if not 0 <= index < len(value):
                    return missing
                value, path = value[index], f"{path}[{index}]"
            else:
                if type(value) is not dict or key not in value:
                    return missing
                value, path = value[key], _member_path(path, key)
        return value, path

    return resolve


# --------------------------------------------------------------------------------------------------------------------
# Comparison operators: make(span, constant_right_or__DYNAMIC) -> impl(left, right). Operands are never errors here.

_ORDERED_TYPES: Final = frozenset({int, float, str, Severity, DurationValue})
Impl = Callable[[Any, Any], object]


def _op_equal(span: ast.Span, constant: object) -> Impl:
    if type(constant) in (str, int, Severity) or constant is None:
        target_type = type(constant)

        def fast(left: object, right: object) -> object:
            if type(left) is target_type:
                return left == right
            return equal(left, right)

        return fast
    return lambda left, right: equal(left, right)


def _op_not_equal(span: ast.Span, constant: object) -> Impl:
    same = _op_equal(span, constant)
    return lambda left, right: not same(left, right)


def _op_order(symbol: str, test: Callable[[Any, Any], bool]) -> Callable[[ast.Span, object], Impl]:
    def make(span: ast.Span, constant: object) -> Impl:
        def order(left: Any, right: Any) -> object:
            kind_left = type(left)
            if (kind_left is type(right) and kind_left in _ORDERED_TYPES) or ordered(left, right):
                return test(left, right)
            return EvalError(f"`{symbol}` cannot compare {kind(left)} with {kind(right)}", span)

        return order

    return make


def _op_in(span: ast.Span, constant: object) -> Impl:
    def general(left: Any, right: Any) -> object:
        if type(right) is list or type(right) is tuple:
            left_size = len(left) if type(left) is list or type(left) is tuple else 0
            if len(right) > MAX_ITEMS or left_size > MAX_ITEMS:
                return _too_long("`in`", max(len(right), left_size), span)
            if type(left) is list or type(left) is tuple:  # subset: every element is in the list
                return all(any(equal(item, other) for other in right) for item in left)
            return any(equal(left, other) for other in right)
        if type(right) is str:
            if type(left) is str:
                return left in right
            return EvalError(f"`in` a string needs a string on the left, got {kind(left)}", span)
        if type(right) is dict:
            if type(left) is str:
                return left in right
            return EvalError(f"`in` an object needs a key string on the left, got {kind(left)}", span)
        return EvalError(f"`in` needs a list, string or object on the right, got {kind(right)}", span)

    if type(constant) is tuple and all(type(item) is str for item in constant):
        members = frozenset(constant)

        def in_strings(left: Any, right: Any) -> object:
            if type(left) is str:
                return left in members
            if type(left) is list or type(left) is tuple:
                return all(type(item) is str and item in members for item in left)
            return False  # strings are only equal to strings

        return in_strings
    return general


def _op_matches(span: ast.Span, constant: object) -> Impl:
    def globs_of(right: object) -> list[Callable[[str], bool]] | EvalError:
        patterns = [right] if type(right) is str else right
        if type(patterns) not in (list, tuple) or not all(type(p) is str for p in patterns):  # type: ignore[union-attr]
            return EvalError(f"`matches` needs a glob or a list of globs on the right, got {kind(right)}", span)
        try:
            return [compile_glob(p) for p in patterns]  # type: ignore[union-attr]
        except PatternError as exc:
            return EvalError(f"bad glob: {exc.message}", span)

    def test(left: object, globs: list[Callable[[str], bool]]) -> object:
        if type(left) is not str:
            return EvalError(f"`matches` needs a string on the left, got {kind(left)}", span)
        return any(glob(left) for glob in globs)

    if constant is not _DYNAMIC:
        fixed = globs_of(constant)
        if type(fixed) is EvalError:
            raise PolicyCompileError(fixed.reason, span)
        if len(fixed) == 1:
            only = fixed[0]
            return lambda left, right: only(left) if type(left) is str else test(left, fixed)
        return lambda left, right: test(left, fixed)

    def dynamic(left: object, right: object) -> object:
        globs = globs_of(right)
        return globs if type(globs) is EvalError else test(left, globs)

    return dynamic


def _op_regex(span: ast.Span, constant: object) -> Impl:
    def compiled(pattern: object) -> Any:
        if type(pattern) is not str:
            return EvalError(f"`=~` needs a regular expression string on the right, got {kind(pattern)}", span)
        try:
            return compile_pattern(pattern)
        except PatternError as exc:
            return EvalError(exc.message, span)

    def test(left: object, regex: Any) -> object:
        if type(left) is not str:
            return EvalError(f"`=~` needs a string on the left, got {kind(left)}", span)
        return regex.search(left) is not None

    if constant is not _DYNAMIC:
        regex = compiled(constant)
        if type(regex) is EvalError:
            raise PolicyCompileError(regex.reason, span, hint="patterns run on RE2: no look-around, no back-references")
        return lambda left, right: test(left, regex)

    def dynamic(left: object, right: object) -> object:
        regex = compiled(right)
        return regex if type(regex) is EvalError else test(left, regex)

    return dynamic


def _op_string(symbol: str, test: Callable[[str, str], bool]) -> Callable[[ast.Span, object], Impl]:
    def make(span: ast.Span, constant: object) -> Impl:
        def string_test(left: Any, right: Any) -> object:
            if type(left) is str and type(right) is str:
                return test(left, right)
            return EvalError(f"`{symbol}` needs strings, got {kind(left)} and {kind(right)}", span)

        return string_test

    return make


def _op_contains(span: ast.Span, constant: object) -> Impl:
    def contains(left: Any, right: Any) -> object:
        if type(left) is str:
            if type(right) is str:
                return right in left
            return EvalError(f"`contains` on a string needs a string on the right, got {kind(right)}", span)
        if type(left) is list or type(left) is tuple:
            if len(left) > MAX_ITEMS:
                return _too_long("`contains`", len(left), span)
            return any(equal(item, right) for item in left)
        if type(left) is dict:
            if type(right) is str:
                return right in left
            return EvalError(f"`contains` on an object needs a key string, got {kind(right)}", span)
        return EvalError(f"`contains` needs a string, list or object on the left, got {kind(left)}", span)

    return contains


_OPERATORS: Final[Mapping[str, Callable[[ast.Span, object], Impl]]] = {
    "==": _op_equal,
    "!=": _op_not_equal,
    "<": _op_order("<", lambda a, b: a < b),
    "<=": _op_order("<=", lambda a, b: a <= b),
    ">": _op_order(">", lambda a, b: a > b),
    ">=": _op_order(">=", lambda a, b: a >= b),
    "in": _op_in,
    "matches": _op_matches,
    "=~": _op_regex,
    "startswith": _op_string("startswith", str.startswith),
    "endswith": _op_string("endswith", str.endswith),
    "contains": _op_contains,
}


__all__ = [
    "BUILTIN_NAMES",
    "FUNCTIONS",
    "Compiler",
    "EvalEnv",
    "Fn",
    "Node",
    "PolicyCompileError",
    "Scope",
    "compile_glob",
]
