"""Text to `PolicyFile`: the policy language's parser, with errors a person can act on.

`grammar.lark` is parsed by lark's LALR parser (built once at import); a small Transformer turns the tree into the
frozen nodes of `ast.py`. Anything the parser rejects raises `PolicySyntaxError` naming file:line:col, with the line, a
caret and, for the common mistakes catalogued in `MISTAKES`, a hint. The static checks (`checks.py`) run afterwards on
the tree and report everything else (unknown names, types, categories, unreachable and shadowed rules).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path as FsPath
from pathlib import PurePath
from typing import Any

from lark import Lark, Token, Transformer, Tree, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken, VisitError

from aegis_proxy.policy.ast import (
    DEFAULT_PRIORITY,
    BoolOp,
    Call,
    Category,
    Compare,
    DefaultDecl,
    Duration,
    Expr,
    Fallback,
    Include,
    Keyword,
    Let,
    ListExpr,
    Literal,
    Name,
    Neg,
    Not,
    Path,
    PathSegment,
    PolicyEffect,
    PolicyFile,
    PolicyTest,
    Rule,
    SeverityConst,
    Span,
    TestCall,
    TestMessage,
    ToolPattern,
)
from aegis_proxy.policy.errors import Excerpt, PolicySyntaxError, source_line

# --- the vocabulary (shared with checks.py) ------------------------------------------------------------------------

KEYWORDS = frozenset(
    {
        *("default", "let", "include", "rule", "allow", "deny", "ask", "audit", "when", "priority", "message"),
        *("terminate", "test", "call", "expect", "context", "history", "and", "or", "not", "in", "matches"),
        *("startswith", "endswith", "contains", "true", "false", "null", "it"),
    }
)
SEVERITY_NAMES = ("info", "low", "medium", "high", "critical")
CATEGORY_FUNCTIONS = frozenset({"finding", "findings", "severity"})  # first argument is a finding category (glob)
FILTER_FUNCTIONS = frozenset({"count", "earlier"})  # first argument is a filter over earlier calls
CONTEXT_ROLES = ("user", "system", "tool", "document", "assistant")
DURATION_UNITS: Mapping[str, int] = {"s": 1, "m": 60, "h": 3600, "d": 86400}
PRIORITY_RANGE = range(0, 1001)
MAX_NESTING = 100  # parse-tree depth; deeper input is refused rather than risking the recursion limit
MAX_EXPR_DEPTH = 200  # depth of a built expression (an `or` chain of n terms is n deep)
_MAX_NUMBER_DIGITS = 30

_RULE_ID = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_LARK = Lark(
    (FsPath(__file__).with_name("grammar.lark")).read_text(encoding="utf-8"),
    parser="lalr",
    lexer="basic",
    propagate_positions=True,
    maybe_placeholders=False,
)


def parse_policy(source: str, path: str) -> PolicyFile:
    """Parse one policy file. Raises PolicySyntaxError (and nothing else) for any text that is not a policy."""
    # A byte-order mark (Windows editors) reads as one space: columns stay as the user's editor counts them.
    text = " " + source[1:] if source.startswith("\ufeff") else source
    try:
        tree = _LARK.parse(text)
    except UnexpectedInput as exc:
        raise _lark_error(exc, source, path) from None
    _check_nesting(tree, source, path)
    try:
        policy = _Builder(source, path).transform(tree)
    except VisitError as exc:
        if isinstance(exc.orig_exc, PolicySyntaxError):
            raise exc.orig_exc from None
        raise
    _Validator(source, path).policy(policy)
    return policy


def syntax_error(source: str, span: Span, message: str, hint: str = "") -> PolicySyntaxError:
    return PolicySyntaxError(message, span=span, excerpt=Excerpt.of(source, span), hint=hint)


# --- tree to nodes -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Op:
    op: str
    negated: bool
    span: Span


@dataclass(frozen=True, slots=True)
class _Option:  # priority / message / terminate / condition / rule id, before they are put in a Rule
    kind: str
    value: Any
    span: Span


@v_args(meta=True)
class _Builder(Transformer):
    """One method per grammar rule, each building one node; `meta` carries the rule's position."""

    def __init__(self, source: str, path: str) -> None:
        super().__init__(visit_tokens=False)  # tokens are read by the rule methods; no per-token callbacks
        self._source = source
        self._path = path

    # helpers (private names: lark's v_args leaves them alone)

    def _span(self, meta: Any) -> Span:
        if getattr(meta, "empty", True):
            return Span(self._path, 1, 1, 1, 1)
        return Span(self._path, meta.line, meta.column, meta.end_line, meta.end_column)

    def _tok(self, token: Token) -> Span:
        return Span(self._path, token.line or 1, token.column or 1, token.end_line or 0, token.end_column or 0)

    def _error(self, span: Span, message: str, hint: str = "") -> PolicySyntaxError:
        return syntax_error(self._source, span, message, hint)

    def _string(self, token: Token) -> str:
        try:
            value = json.loads(token.value, strict=False)  # strict=False: a literal tab inside a string is fine
        except ValueError as exc:
            raise self._error(
                self._tok(token),
                f"invalid escape in string: {exc.msg.lower()}",
                'strings are JSON strings: escapes are \\" \\\\ \\/ \\n \\t \\r \\b \\f \\uXXXX',
            ) from None
        return str(value)

    def _name(self, token: Token) -> str:
        return self._string(token) if token.type == "STRING" else str(token.value)

    def _number(self, token: Token, negative: bool = False) -> int | float:
        text = token.value
        if len(text) > _MAX_NUMBER_DIGITS:
            raise self._error(
                self._tok(token), "number is too long", f"numbers have at most {_MAX_NUMBER_DIGITS} digits"
            )
        value: int | float = float(text) if "." in text else int(text)
        return -value if negative else value

    # the file

    def start(self, meta: Any, items: list[Any]) -> PolicyFile:
        defaults = [item for item in items if isinstance(item, DefaultDecl)]
        return PolicyFile(
            path=self._path,
            source=self._source,
            default=defaults[0] if defaults else None,
            lets=tuple(item for item in items if isinstance(item, Let)),
            includes=tuple(item for item in items if isinstance(item, Include)),
            rules=tuple(item for item in items if isinstance(item, Rule)),
            tests=tuple(item for item in items if isinstance(item, PolicyTest)),
            order=tuple(items),
        )

    def effect(self, meta: Any, children: list[Token]) -> PolicyEffect:
        return PolicyEffect(children[0].value)

    def default_decl(self, meta: Any, children: list[Any]) -> DefaultDecl:
        return DefaultDecl(children[0], self._span(meta))

    def let_decl(self, meta: Any, children: list[Any]) -> Let:
        name, value = children
        if not _IDENTIFIER.fullmatch(name.value):
            raise self._error(
                self._tok(name),
                f"`{name.value}` is not a valid let name",
                "let names are identifiers: let protected = [...]",
            )
        return Let(name.value, value, self._span(meta))

    def include_decl(self, meta: Any, children: list[Token]) -> Include:
        return Include(self._string(children[0]), self._span(meta))

    # rules

    def rule_id(self, meta: Any, children: list[Token]) -> _Option:
        token = children[0]
        if not _RULE_ID.fullmatch(token.value):
            raise self._error(
                self._tok(token),
                f"`{token.value}` is not a valid rule id",
                "rule ids start with a letter or _ and hold letters, digits, _, - and .: rule no-curl-pipe: ...",
            )
        return _Option("id", token.value, self._tok(token))

    def tool_pattern(self, meta: Any, children: list[Token]) -> ToolPattern:
        name = self._name(children[0])
        server = self._name(children[1]) if len(children) > 1 else None
        for token, text in zip(children, (name, server), strict=False):
            if not text or text != text.strip():
                raise self._error(
                    self._tok(token), "a tool pattern cannot be empty or padded with spaces", 'write "*" for any tool'
                )
        return ToolPattern(name, server, self._span(meta))

    def condition(self, meta: Any, children: list[Expr]) -> _Option:
        return _Option("condition", children[0], self._span(meta))

    def priority(self, meta: Any, children: list[Token]) -> _Option:
        return self._priority(meta, children[0], negative=False)

    def negative_priority(self, meta: Any, children: list[Token]) -> _Option:
        return self._priority(meta, children[0], negative=True)

    def _priority(self, meta: Any, token: Token, *, negative: bool) -> _Option:
        value = self._number(token, negative)
        if not isinstance(value, int) or value not in PRIORITY_RANGE:
            raise self._error(
                self._span(meta),
                f"priority {'-' if negative else ''}{token.value} is out of range",
                "priority is an integer from 0 (checked first) to 1000 (checked last); the default is "
                f"{DEFAULT_PRIORITY}",
            )
        return _Option("priority", value, self._span(meta))

    def message(self, meta: Any, children: list[Token]) -> _Option:
        return _Option("message", self._string(children[0]), self._span(meta))

    def terminate(self, meta: Any, children: list[Token]) -> _Option:
        return _Option("terminate", True, self._span(meta))

    def rule_decl(self, meta: Any, children: list[Any]) -> Rule:
        options: dict[str, _Option] = {}
        effect: PolicyEffect | None = None
        tools: list[ToolPattern] = []
        for child in children:
            if isinstance(child, PolicyEffect):
                effect = child
            elif isinstance(child, ToolPattern):
                tools.append(child)
            elif isinstance(child, _Option):
                if child.kind in options:
                    raise self._error(child.span, f"`{child.kind}` is given twice in this rule", "keep one of them")
                options[child.kind] = child
        assert effect is not None  # the grammar requires it
        span = self._span(meta)
        rule_id = options.get("id")
        return Rule(
            id=rule_id.value if rule_id else f"{PurePath(self._path).stem}:{span.line}",
            effect=effect,
            tools=tuple(tools),
            condition=options["condition"].value if "condition" in options else None,
            priority=options["priority"].value if "priority" in options else DEFAULT_PRIORITY,
            fallback=Fallback(
                message=options["message"].value if "message" in options else None, terminate="terminate" in options
            ),
            span=span,
            explicit_id=rule_id is not None,
        )

    # expressions

    def expr(self, meta: Any, children: list[Expr]) -> Expr:
        return self._chain("or", children)

    def and_expr(self, meta: Any, children: list[Expr]) -> Expr:
        return self._chain("and", children)

    def _chain(self, op: str, operands: list[Expr]) -> Expr:
        result = operands[0]
        for right in operands[1:]:
            result = BoolOp(_join(result.span, right.span), op, result, right)
        return result

    def not_(self, meta: Any, children: list[Expr]) -> Not:
        return Not(self._span(meta), children[0])

    def comp_op(self, meta: Any, children: list[Token]) -> _Op:
        return _Op(children[-1].value, children[0].value == "not" and len(children) == 2, self._span(meta))

    def comparison(self, meta: Any, children: list[Any]) -> Expr:
        if len(children) > 3:
            first, second = children[1], children[3]
            raise self._error(
                second.span,
                f"comparisons cannot be chained (`{first.op}` then `{second.op}`)",
                "compare twice and join with `and`: a < b and b < c",
            )
        left, op, right = children
        compare = Compare(self._span(meta), op.op, left, right)
        return Not(compare.span, compare) if op.negated else compare

    def neg(self, meta: Any, children: list[Expr]) -> Expr:
        operand = children[0]
        if isinstance(operand, Literal) and type(operand.value) in (int, float):
            return Literal(self._span(meta), -operand.value)  # type: ignore[operator]
        return Neg(self._span(meta), operand)

    def string(self, meta: Any, children: list[Token]) -> Literal:
        return Literal(self._span(meta), self._string(children[0]))

    def number(self, meta: Any, children: list[Token]) -> Literal:
        return Literal(self._span(meta), self._number(children[0]))

    def duration(self, meta: Any, children: list[Token]) -> Duration:
        text = children[0].value
        match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([A-Za-z_][A-Za-z0-9_]*)", text)
        assert match is not None  # the token's pattern
        amount, unit = match.groups()
        if unit not in DURATION_UNITS or len(amount) > _MAX_NUMBER_DIGITS:
            raise self._error(
                self._span(meta),
                f"`{text}` is not a duration",
                "a duration is a number and one unit, s m h or d: 30s, 10m, 2h, 1d",
            )
        return Duration(self._span(meta), float(amount) * DURATION_UNITS[unit], text)

    def true(self, meta: Any, children: list[Token]) -> Literal:
        return Literal(self._span(meta), True)

    def false(self, meta: Any, children: list[Token]) -> Literal:
        return Literal(self._span(meta), False)

    def null(self, meta: Any, children: list[Token]) -> Literal:
        return Literal(self._span(meta), None)

    def list(self, meta: Any, children: list[Expr]) -> ListExpr:
        return ListExpr(self._span(meta), tuple(children))

    def key_index(self, meta: Any, children: list[Token]) -> PathSegment:
        return PathSegment(self._string(children[0]))

    def number_index(self, meta: Any, children: list[Token]) -> PathSegment:
        return self._index(children[0], negative=False)

    def negative_index(self, meta: Any, children: list[Token]) -> PathSegment:
        return self._index(children[0], negative=True)

    def _index(self, token: Token, *, negative: bool) -> PathSegment:
        value = self._number(token, negative)
        if not isinstance(value, int):
            raise self._error(self._tok(token), "a list index is a whole number", "args.items[0], args.items[-1]")
        return PathSegment(value)

    def word(self, meta: Any, children: list[Any]) -> Expr:
        """A name, a path (`args.a[0]`, `it.name`), a severity constant, or a raw word (`paths.*`, `dry-run`).

        Raw words are kept as `Category` so that finding()/findings()/severity() can take bare globs; anywhere else
        the validator rejects them with a hint.
        """
        head, accessors = children[0], children[1:]
        span = self._span(meta)
        parts = head.value.split(".")
        if not all(_IDENTIFIER.fullmatch(part) for part in parts):
            if accessors:
                raise self._error(self._tok(head), f"`{head.value}` is not a valid name", _word_hint(head.value))
            return Category(span, head.value)
        segments = tuple(PathSegment(part) for part in parts[1:]) + tuple(
            PathSegment(a.value[1:]) if isinstance(a, Token) else a for a in accessors
        )
        root = parts[0]
        if root in ("args", "it") and (segments or root == "args"):
            return Path(span, root, segments)
        if segments:
            return Path(span, root, segments)  # `tool.x`, `shell.destructive`: the checks say what is wrong
        if root in SEVERITY_NAMES:
            return SeverityConst(span, root)
        return Name(span, root)

    def call(self, meta: Any, children: list[Any]) -> Call:
        name, arguments = children[0], children[1:]
        span = self._span(meta)
        if not _IDENTIFIER.fullmatch(name.value):
            raise self._error(
                self._tok(name),
                f"`{name.value}` is not a function name",
                "functions are len, lower, finding, findings, severity, tainted, from_user, injected, all, any, "
                "count, earlier",
            )
        func = name.value
        positional: list[Expr] = []
        keywords: list[Keyword] = []
        for argument in arguments:
            if _is_keyword_argument(func, argument):
                keywords.append(Keyword(argument.left.name, argument.right, argument.span))
            else:
                positional.append(argument)
        if func in CATEGORY_FUNCTIONS and positional:
            positional[0] = _as_category(positional[0])
        if func in FILTER_FUNCTIONS:
            positional = [_single_equals_compares(argument) for argument in positional]
        return Call(span, func, tuple(positional), tuple(keywords))

    # inline tests

    def test_decl(self, meta: Any, children: list[Any]) -> PolicyTest:
        span = self._span(meta)
        name = self._string(children[0])
        found: dict[str, _Option] = {}
        for item in children[1:]:
            if item.kind in found:
                raise self._error(item.span, f"a test has one `{item.kind}`", f"test {json.dumps(name)} has two")
            found[item.kind] = item
        for required in ("call", "expect"):
            if required not in found:
                raise self._error(
                    span,
                    f"test {json.dumps(name)} has no `{required}`",
                    'a test needs `call TOOL(arg = value)` and `expect EFFECT [rule "ID"]`',
                )
        effect, rule_id = found["expect"].value
        return PolicyTest(
            name=name,
            call=found["call"].value,
            expect=effect,
            expect_rule=rule_id,
            context=found["context"].value if "context" in found else (),
            history=found["history"].value if "history" in found else (),
            span=span,
        )

    def test_call(self, meta: Any, children: list[Any]) -> _Option:
        names = [child for child in children if isinstance(child, Token)]
        arguments: dict[str, object] = {}
        for key, value, key_span in (child for child in children if isinstance(child, tuple)):
            if key in arguments:
                raise self._error(key_span, f"argument `{key}` is given twice", "give each argument once")
            arguments[key] = value
        tool = self._name(names[0])
        server = self._name(names[1]) if len(names) > 1 else None
        for token, text in zip(names, (tool, server), strict=False):
            if not text or any(ch in text for ch in "*?["):
                raise self._error(self._tok(token), f"`{text}` is not a tool name", "a test calls one concrete tool")
        span = self._span(meta)
        return _Option("call", TestCall(tool, arguments, server, span), span)

    def call_arg(self, meta: Any, children: list[Any]) -> tuple[str, object, Span]:
        return self._name(children[0]), children[1], self._tok(children[0])

    def test_context(self, meta: Any, children: list[TestMessage]) -> _Option:
        return _Option("context", tuple(children), self._span(meta))

    def context_entry(self, meta: Any, children: list[Token]) -> TestMessage:
        role, text = children[0], children[-1]
        name = children[1].value if len(children) == 3 else None
        if role.value not in CONTEXT_ROLES:
            raise self._error(
                self._tok(role), f"`{role.value}` is not a message role", f"roles are {', '.join(CONTEXT_ROLES)}"
            )
        if name is not None and role.value != "tool":
            raise self._error(
                self._tok(children[1]), f"only tool messages carry a name, not {role.value}", f'{role.value} "text"'
            )
        return TestMessage(role.value, self._string(text), name, self._span(meta))

    def test_history(self, meta: Any, children: list[_Option]) -> _Option:
        return _Option("history", tuple(child.value for child in children), self._span(meta))

    def test_expect(self, meta: Any, children: list[Any]) -> _Option:
        rule_id = children[1] if len(children) > 1 else None
        return _Option("expect", (children[0], rule_id), self._span(meta))

    def expect_rule(self, meta: Any, children: list[Token]) -> str:
        return self._name(children[0])

    def json_string(self, meta: Any, children: list[Token]) -> str:
        return self._string(children[0])

    def json_number(self, meta: Any, children: list[Token]) -> int | float:
        return self._number(children[0])

    def json_negative(self, meta: Any, children: list[Token]) -> int | float:
        return self._number(children[0], negative=True)

    def json_true(self, meta: Any, children: list[Token]) -> bool:
        return True

    def json_false(self, meta: Any, children: list[Token]) -> bool:
        return False

    def json_null(self, meta: Any, children: list[Token]) -> None:
        return None

    def json_list(self, meta: Any, children: list[object]) -> list[object]:
        return list(children)

    def json_pair(self, meta: Any, children: list[Any]) -> tuple[str, object, Span]:
        return self._string(children[0]), children[1], self._tok(children[0])

    def json_object(self, meta: Any, children: list[tuple[str, object, Span]]) -> dict[str, object]:
        out: dict[str, object] = {}
        for key, value, span in children:
            if key in out:
                raise self._error(span, f"key {json.dumps(key)} is given twice", "give each key once")
            out[key] = value
        return out


def _join(first: Span, last: Span) -> Span:
    return Span(first.file, first.line, first.column, last.end_line, last.end_column)


def _is_keyword_argument(func: str, argument: Expr) -> bool:
    """`within = 10m` is a keyword argument; in count()/earlier(), `tool = "x"` is the filter `tool == "x"`."""
    if not (isinstance(argument, Compare) and argument.op == "=" and isinstance(argument.left, Name)):
        return False
    return argument.left.name != "it" and not (func in FILTER_FUNCTIONS and argument.left.name == "tool")


def _as_category(argument: Expr) -> Expr:
    """finding(shell.download_exec), finding("paths.*"), finding(paths.*): all name a category (glob)."""
    if isinstance(argument, Literal) and isinstance(argument.value, str):
        return Category(argument.span, argument.value)
    if isinstance(argument, Name):
        return Category(argument.span, argument.name)
    if isinstance(argument, SeverityConst):
        return Category(argument.span, argument.name)
    if isinstance(argument, Path) and all(isinstance(seg.key, str) for seg in argument.segments):
        return Category(argument.span, ".".join([argument.root, *(str(seg.key) for seg in argument.segments)]))
    return argument


def _single_equals_compares(expr: Expr) -> Expr:
    """Inside a count()/earlier() filter, `=` means `==` (`count(tool = "send_email", within = 10m)`)."""
    if isinstance(expr, Compare):
        op = "==" if expr.op == "=" else expr.op
        return Compare(expr.span, op, _single_equals_compares(expr.left), _single_equals_compares(expr.right))
    if isinstance(expr, BoolOp):
        return BoolOp(expr.span, expr.op, _single_equals_compares(expr.left), _single_equals_compares(expr.right))
    if isinstance(expr, Not):
        return Not(expr.span, _single_equals_compares(expr.operand))
    return expr


def _word_hint(text: str) -> str:
    parts = text.split(".")
    if any(ch in text for ch in "*?"):
        return f'globs are strings: "{text}" (bare globs are allowed only as finding categories and tool patterns)'
    if parts[0] == "args" and len(parts) > 1 and all(parts[1:]):
        keys = "".join(f"[{json.dumps(part)}]" for part in parts[1:])
        return f"a key that is not an identifier is written in brackets: args{keys}"
    if any(part == "" for part in parts):
        return "a path is args.name.name[0]: no empty parts"
    if parts[0] == "it":
        return "`it` is the element in all()/any(): it, it.name, it[0]"
    return 'names are identifiers ([A-Za-z_][A-Za-z0-9_]*); quote text: "..."'


# --- after building: what the grammar lets through but the language does not -----------------------------------


class _Validator:
    """Rejects raw words outside category position, `=` used as a comparison and over-deep expressions."""

    def __init__(self, source: str, path: str) -> None:
        self._source = source
        self._path = path

    def policy(self, policy: PolicyFile) -> None:
        for let in policy.lets:
            self._expr(let.value)
        for rule in policy.rules:
            if rule.condition is not None:
                self._expr(rule.condition)

    def _expr(self, root: Expr) -> None:
        stack: list[tuple[Expr, int, bool]] = [(root, 1, False)]  # (node, depth, is a category argument)
        while stack:
            expr, depth, category_position = stack.pop()
            if depth > MAX_EXPR_DEPTH:
                raise syntax_error(
                    self._source,
                    expr.span,
                    f"expression is nested more than {MAX_EXPR_DEPTH} deep",
                    "split it: use `in [..]` for long alternatives, or several rules",
                )
            if isinstance(expr, Category) and not category_position:
                raise syntax_error(
                    self._source, expr.span, f"`{expr.pattern}` is not a valid name here", _word_hint(expr.pattern)
                )
            if isinstance(expr, Compare) and expr.op == "=":
                raise syntax_error(
                    self._source,
                    _operator_span(self._source, expr),
                    "`=` is not a comparison",
                    'compare with `==`; a single `=` only binds: let NAME = ..., within = 10m, and `tool = "x"` '
                    "inside count()/earlier()",
                )
            for index, child in enumerate(_children(expr)):
                is_category = isinstance(expr, Call) and expr.func in CATEGORY_FUNCTIONS and index == 0
                stack.append((child, depth + 1, is_category))


def _children(expr: Expr) -> Iterator[Expr]:
    if isinstance(expr, Not | Neg):
        yield expr.operand
    elif isinstance(expr, BoolOp | Compare):
        yield expr.left
        yield expr.right
    elif isinstance(expr, ListExpr):
        yield from expr.items
    elif isinstance(expr, Call):
        yield from expr.args
        yield from (keyword.value for keyword in expr.kwargs)


def _operator_span(source: str, compare: Compare) -> Span:
    """Where the operator of `left OP right` sits: between the operands' spans, after skipping spaces."""
    left, right = compare.left.span, compare.right.span
    if left.end_line == right.line:
        line = source_line(source, left.end_line)
        column = left.end_column
        while column < right.column and column - 1 < len(line) and line[column - 1] in " \t":
            column += 1
        return Span(compare.span.file, left.end_line, column, left.end_line, column + len(compare.op))
    return compare.span


def _check_nesting(tree: Tree, source: str, path: str) -> None:
    """The Transformer recurses per tree level; refuse absurd nesting here, iteratively, before it can overflow."""
    stack: list[tuple[Tree, int]] = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_NESTING:
            meta = node.meta
            span = Span(path, meta.line, meta.column, meta.end_line, meta.end_column) if not meta.empty else None
            raise syntax_error(
                source,
                span or Span(path, 1, 1),
                f"the policy is nested more than {MAX_NESTING} levels deep here",
                "flatten it: nested not/parentheses/lists this deep are never needed",
            )
        stack.extend((child, depth + 1) for child in node.children if isinstance(child, Tree))


# --- lark's errors, made friendly ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Mistake:
    """A common mistake: a hint and malformed examples that put the parser in the same state (for match_examples).

    Examples are written as the first item of a file; each is also tried after a `default deny` line, because lark
    tells states apart by the depth of the parse stack too. An example whose offending token is the user's wins;
    otherwise the first label (in this order) whose example stopped in the same state does, so the general hints come
    before the token-specific ones.
    """

    hint: str
    examples: tuple[str, ...]
    any_token: bool = False  # the state alone says what is wrong (the parser expected exactly one kind of thing)


MISTAKES: Mapping[str, Mistake] = {
    "unknown-declaration": Mistake(
        'a policy holds `default EFFECT`, `let NAME = VALUE`, `include "FILE"`, rules '
        '(`[rule ID:] allow|deny|ask|audit TOOLS [when CONDITION]`) and `test "NAME" { ... }` blocks',
        ("foo x", "no-curl-pipe: deny x", "5", '"x"'),
    ),
    "missing-when": Mistake(
        "a condition starts with `when` (deny TOOL when CONDITION); separate several tools with commas",
        (
            'deny send_email args.to == "x"',
            'deny send_email@gmail args.to == "x"',
            'deny "send email" args.to == "x"',
            "deny send_email not finding(x)",
            "deny send_email (args.a)",
            "deny send_email 5",
        ),
    ),
    "trailing-comma": Mistake(
        "something must follow `,`: remove the trailing comma",
        (
            "deny a, when x",
            "deny a, b,",
            "let x = [1,]",
            "let x = [1, 2, ]",
            "let x = len(1,)",
            'test "t" { call f(a = 1,) }',
            'test "t" { call f(a = [1,]) }',
            'test "t" { call f(a = {"k": 1,}) }',
        ),
        any_token=True,
    ),
    "default-effect": Mistake(
        "write `default deny`, `default ask` or `default allow`", ("default", "default 1"), any_token=True
    ),
    "rule-id-colon": Mistake(
        "a rule id is one word followed by `:`: rule no-curl-pipe: deny run_shell ...",
        ("rule foo deny x", "rule foo bar: deny x"),
        any_token=True,
    ),
    "rule-id-word": Mistake(
        "write the id as a bare word ([A-Za-z_][A-Za-z0-9_.-]*) followed by `:`: rule no-curl-pipe: ...",
        ('rule "foo": deny x', "rule : deny x"),
        any_token=True,
    ),
    "missing-tools": Mistake(
        "name the tools the rule covers before `when` (`*` for every tool): deny * when ...",
        tuple(
            f"{head}{effect}{tail}"
            for head in ("", "rule r: ")
            for effect in ("deny", "allow", "ask", "audit")
            for tail in (" when x", "")
        ),
        any_token=True,
    ),
    "priority-int": Mistake(
        f"priority is an integer from 0 (checked first) to 1000 (checked last); the default is {DEFAULT_PRIORITY}",
        ("deny x priority high", 'deny x priority "1"', "deny x priority"),
        any_token=True,
    ),
    "message-string": Mistake(
        'the message is text in double quotes: message "..."',
        ("deny x message blocked", "deny x message"),
        any_token=True,
    ),
    "include-string": Mistake(
        'quote the path: include "common.aegis"', ("include common.aegis", "include"), any_token=True
    ),
    "let-equals": Mistake(
        "bind a name with one `=`: let NAME = VALUE", ("let x == 1", "let x 1", "let x: 1"), any_token=True
    ),
    "let-name": Mistake("let takes a name: let protected = [...]", ("let = 1", 'let "x" = 1'), any_token=True),
    "list-comma": Mistake(
        'separate list items with commas: ["a", "b"]',
        (
            'let x = ["a" "b"]',
            "let x = [1 2]",
            "let x = [a b]",
            'deny x when args.a in ["a" "b"]',
            "deny x when args.a in [1 2]",
            "deny x when args.a in [a b]",
        ),
    ),
    "not-operator": Mistake(
        '`not` before an operator negates it (x not in [...], x not contains ".."); '
        "to negate a whole condition write not (...)",
        ("deny x when args.a not args.b", 'deny x when args.a not == "b"'),
        any_token=True,
    ),
    "join-conditions": Mistake(
        'join conditions with `and` / `or`; text values go in double quotes: args.to == "bob smith"',
        (
            "deny x when args.to == bob smith",
            "deny x when args.to == bob@example",
            "deny x when args.cmd contains rm -rf",
            'deny x when args.a == "b" args.c == "d"',
            'deny x when args.a == "b" 1',
            "deny x when args.a == 1 args.c",
            "deny x when len(args.a) args.c",
            "deny x when args.a args.c",
            "deny x when args.a[0] args.c",
            "deny x when args.a == true args.c",
        ),
    ),
    "missing-value": Mistake(
        'a value must follow: a string "...", a number, true/false/null, a list [..] or a path like args.name',
        ("deny x when", "deny x when args.a ==", "deny x when not", "deny x when args.a and", "let x ="),
        any_token=True,
    ),
    "expect-effect": Mistake(
        'write `expect allow|deny|ask|audit`, optionally followed by rule "ID"',
        ('test "t" { call f() expect }', 'test "t" { call f() expect 1 }'),
        any_token=True,
    ),
    "test-call-arguments": Mistake(
        'test call arguments are written name = value: call send_email(to = "a@b.example")',
        ('test "t" { call f(a: 1) }', 'test "t" { call f(1) }', 'test "t" { call f(a) }', 'test "t" { call f }'),
        any_token=True,
    ),
    "json-key": Mistake('object keys are strings: {"key": 1}', ('test "t" { call f(a = {k: 1}) }',), any_token=True),
    "json-value": Mistake(
        "argument values are JSON: strings in double quotes, numbers, true/false/null, [lists], {objects}",
        ('test "t" { call f(a = b) }', 'test "t" { call f(a = ) }', 'test "t" { call f(a = 10m) }'),
        any_token=True,
    ),
    "context-entry": Mistake(
        'a context entry is ROLE "text" (user, system, document, assistant) or tool NAME "text"',
        ('test "t" { context { user } }', 'test "t" { context { user bob } }', 'test "t" { context { 1 } }'),
        any_token=True,
    ),
    "test-name": Mistake(
        'a test\'s name is a string: test "blocks curl" { ... }', ("test foo { }", "test { }"), any_token=True
    ),
    "test-item": Mistake(
        "a test holds `call TOOL(...)`, `context { ... }`, `history { call ... }` and `expect EFFECT`",
        ('test "t" { foo }', 'test "t" { call f() deny }'),
    ),
    "triple-equals": Mistake("equality is `==` (there is no `===`)", ("deny x when args.a === 1",)),
}

# Words people bring from other languages, with what to write instead. Checked before the catalogue: they depend on
# the token, not on the parser state.
_EFFECT_SYNONYMS: Mapping[str, str] = {
    **dict.fromkeys(("block", "reject", "forbid", "refuse", "drop", "disallow", "prevent", "stop"), "deny"),
    **dict.fromkeys(("permit", "accept", "pass", "grant", "approve"), "allow"),
    **dict.fromkeys(("confirm", "prompt", "hold", "review", "require_approval"), "ask"),
    **dict.fromkeys(("log", "flag", "monitor", "warn"), "audit"),
}
# Keywords that start a declaration or a rule clause: met where a value was expected, the value is missing (the
# previous line is unfinished), not misspelt.
_STRUCTURE_KEYWORDS = frozenset(
    {"default", "let", "include", "rule", "allow", "deny", "ask", "audit", "when", "priority", "message", "terminate"}
    | {"test"}
)
_CONDITIONAL_WORDS = frozenset({"if", "elif", "else", "elsif", "then", "unless", "switch", "case"})
_OPERATOR_WORDS: Mapping[str, str] = {"is": "==", "isnt": "!=", "equals": "==", "AND": "and", "OR": "or", "NOT": "not"}
_CHARACTER_HINTS: Mapping[str, str] = {
    "'": 'strings use double quotes: "..."',
    '"': 'this string is not closed on its line: end it with " (write \\n for a line break)',
    "&": "write `and` instead of &&",
    "|": "write `or` instead of ||",
    "!": "write `not` for negation (`!=` means not equal)",
    ";": "no `;` is needed: a declaration ends where the next one starts",
    "~": "a regex match is written =~",
    "/": 'paths and other text go in double quotes: "/etc/passwd"',
    ".": 'paths and other text go in double quotes: "./common.aegis"',
    "$": 'text goes in double quotes: "..."',
    "\\": "a backslash only appears inside a string, as an escape",
    "\u201c": 'use plain double quotes: "..."',
    "\u201d": 'use plain double quotes: "..."',
    "\u2018": 'strings use plain double quotes: "..."',
    "\u2019": 'strings use plain double quotes: "..."',
}
_FRIENDLY_TERMINALS: Mapping[str, str] = {
    "WORD": "a name",
    "STRING": "a string",
    "NUMBER": "a number",
    "DURATION": "a duration",
    "MEMBER": "`.name`",
    "IT": "`it`",
    "$END": "end of file",
}


def _lark_error(exc: UnexpectedInput, source: str, path: str) -> PolicySyntaxError:
    if isinstance(exc, UnexpectedCharacters):
        position = exc.pos_in_stream or 0
        char = source[position] if position < len(source) else ""
        span = Span(path, exc.line, exc.column, exc.line, exc.column + 1)
        shown = char if char.isprintable() else repr(char)
        hint = _CHARACTER_HINTS.get(char, "")
        if not hint and not char.isascii() and char.isalpha():
            hint = 'names are ASCII letters, digits and _; other text goes in double quotes: "..."'
        return PolicySyntaxError(
            f"unexpected character `{shown}`", span=span, excerpt=_context_excerpt(exc, source, 1), hint=hint
        )
    assert isinstance(exc, UnexpectedToken)  # the LALR parser raises no other kind
    token = exc.token
    if token.type == "$END":
        line = token.end_line or 1
        column = token.end_column or 1
        span = Span(path, line, column, line, column + 1)
        excerpt = Excerpt.of(source, span)
        message = "unexpected end of file"
    else:
        span = Span(path, token.line, token.column, token.end_line, token.end_column)
        excerpt = _context_excerpt(exc, source, len(token.value.split("\n", 1)[0]))
        message = f"unexpected {_describe(token)}"
    expected = _expected(exc)
    if expected:
        message += f"; expected {expected}"
    return PolicySyntaxError(message, span=span, excerpt=excerpt, hint=_hint(exc))


def _context_excerpt(exc: UnexpectedInput, source: str, width: int) -> Excerpt:
    """lark's get_context (the line around the error and a caret), the caret widened to the offending token."""
    context = exc.get_context(source, span=50).split("\n")
    line = context[0].expandtabs() if context else ""
    caret = (context[1] if len(context) > 1 else "^").rstrip()
    return Excerpt(line.replace("\r", ""), caret + "^" * max(0, min(width, 60) - 1))


def _describe(token: Token) -> str:
    value = str(token.value)
    if token.type == "STRING":
        return f"string {value[:40]}{'…' if len(value) > 40 else ''}"
    if token.type == "NUMBER":
        return f"number `{value[:40]}`"
    if value in KEYWORDS:
        return f"keyword `{value}`"
    return f"`{value[:40]}{'…' if len(value) > 40 else ''}`"


def _expected(exc: UnexpectedToken) -> str:
    names = sorted({_terminal_text(name) for name in (exc.accepts or exc.expected)})
    if not names or len(names) > 6:
        return ""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def _terminal_text(name: str) -> str:
    if name in _FRIENDLY_TERMINALS:
        return _FRIENDLY_TERMINALS[name]
    try:
        pattern = _LARK.get_terminal(name).pattern
    except KeyError:
        return name
    return f"`{pattern.value}`" if pattern.type == "str" else name


def _hint(exc: UnexpectedToken) -> str:
    token = exc.token
    value = str(token.value)
    accepts = exc.accepts or exc.expected
    if token.type == "WORD":
        if value in _CONDITIONAL_WORDS:
            return "there is no if/elif/else: write one rule per case, each with `when`; priority orders the rules"
        if value in _OPERATOR_WORDS:
            return f"write `{_OPERATOR_WORDS[value]}`"
        if value.lower() in KEYWORDS and value != value.lower():
            return f"keywords are lowercase: `{value.lower()}`"
        if value.lower() in _EFFECT_SYNONYMS and "DENY" in accepts:
            effect = _EFFECT_SYNONYMS[value.lower()]
            return f"`{value}` is not an effect: write `{effect}` (effects: allow, deny, ask, audit)"
    if value in KEYWORDS and "WORD" in accepts:
        if "STRING" not in accepts:  # a name is expected: `let when = 1`
            return f"`{value}` is a reserved word; choose another name"
        if value not in _STRUCTURE_KEYWORDS:  # `args.mode == contains`
            return f'`{value}` is a reserved word: quote it if it is text: "{value}"'
    if token.column == 1 and "DENY" in accepts and token.type in ("WORD", "NUMBER", "STRING"):
        return MISTAKES["unknown-declaration"].hint  # an unindented line starts a declaration, whatever came before
    # use_accepts=False: lark 1.3 crashes formatting a debug message when two examples share a state but not the set
    # of acceptable tokens. Examples are matched on the state and the kind of token; a mistake marked any_token also
    # matches on the state alone (where the parser expects one thing, any other token is the same mistake).
    for table in (_examples_with_token(token.type), _examples_for_any_token()):
        label = exc.match_examples(_parse_example, table, token_type_match_fallback=True, use_accepts=False)
        if label is not None:
            return MISTAKES[label].hint
    if token.type == "$END":
        for closer, opener in (("RPAR", "("), ("RSQB", "["), ("RBRACE", "{")):
            if closer in accepts:
                return f"a `{opener}` is not closed"
    if value in KEYWORDS and "WORD" in accepts:
        return f'`{value}` is a reserved word: quote it if it is text or a tool name: "{value}"'
    return ""


_EXAMPLE_ERRORS: dict[str, UnexpectedInput] = {}
_TABLES: dict[str, list[tuple[str, list[str]]]] = {}


def _parse_example(text: str) -> None:
    """Parse a catalogue example for match_examples; each example's error is computed once and replayed."""
    raise _example_error(text)


def _example_error(text: str) -> UnexpectedInput:
    if text not in _EXAMPLE_ERRORS:
        try:
            _LARK.parse(text)
        except UnexpectedInput as exc:
            _EXAMPLE_ERRORS[text] = exc
        else:  # pragma: no cover - the catalogue test keeps every example malformed
            raise AssertionError(f"catalogue example parses: {text!r}")
    return _EXAMPLE_ERRORS[text]


def _variants(mistake: Mistake) -> list[str]:
    return [*mistake.examples, *(f"default deny\n{example}" for example in mistake.examples)]


def _examples_with_token(token_type: str) -> list[tuple[str, list[str]]]:
    key = f"token:{token_type}"
    if key not in _TABLES:
        _TABLES[key] = [
            (
                label,
                [
                    ex
                    for ex in _variants(m)
                    if getattr(_example_error(ex), "token", None) is not None
                    and _example_error(ex).token.type == token_type
                ],
            )  # type: ignore[attr-defined]
            for label, m in MISTAKES.items()
        ]
    return _TABLES[key]


def _examples_for_any_token() -> list[tuple[str, list[str]]]:
    if "any" not in _TABLES:
        _TABLES["any"] = [(label, _variants(m)) for label, m in MISTAKES.items() if m.any_token]
    return _TABLES["any"]


__all__ = [
    "CATEGORY_FUNCTIONS",
    "CONTEXT_ROLES",
    "DURATION_UNITS",
    "FILTER_FUNCTIONS",
    "KEYWORDS",
    "MISTAKES",
    "SEVERITY_NAMES",
    "Mistake",
    "parse_policy",
    "syntax_error",
]
