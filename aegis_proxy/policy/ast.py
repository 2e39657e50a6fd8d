"""The policy language's syntax tree: frozen dataclasses, each carrying where it was written.

The parser (`parser.py`) builds these from `grammar.lark`; the static checks (`checks.py`) read them; the compiler
(`compiler.py`) turns them into closures once at load. Nothing on the request path walks this tree.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Span:
    """Where a node was written: 1-based line and column in `file`."""

    file: str
    line: int
    column: int
    end_line: int = 0
    end_column: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


class PolicyEffect(enum.StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    ASK = "ask"
    AUDIT = "audit"  # allow, but the decision is flagged for review

    @property
    def strength(self) -> int:
        """At equal priority the stronger effect wins: deny > ask > audit > allow."""
        return _STRENGTH[self]


_STRENGTH = {PolicyEffect.ALLOW: 0, PolicyEffect.AUDIT: 1, PolicyEffect.ASK: 2, PolicyEffect.DENY: 3}

DEFAULT_PRIORITY = 100  # lower number = higher priority (as in Progent)


# --- expressions -------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Expr:
    span: Span


@dataclass(frozen=True, slots=True)
class Literal(Expr):
    """A string, number, boolean or null. Durations are `Duration`, severities `SeverityConst`."""

    value: str | int | float | bool | None


@dataclass(frozen=True, slots=True)
class Duration(Expr):
    seconds: float
    text: str  # as written, e.g. "10m"


@dataclass(frozen=True, slots=True)
class SeverityConst(Expr):
    name: str  # info | low | medium | high | critical


@dataclass(frozen=True, slots=True)
class ListExpr(Expr):
    items: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Name(Expr):
    """A bare identifier: a `let` name, a builtin attribute (tool, protocol, server, agent, session, severity, risk,
    injection), or `it` inside all()/any()."""

    name: str


@dataclass(frozen=True, slots=True)
class PathSegment:
    key: str | int  # "a" for .a or ["a"], 0 / -1 for [0] / [-1]


@dataclass(frozen=True, slots=True)
class Path(Expr):
    """`args.a.b[0]`, `args["odd key"]`, `it.name`: a root name followed by member/index segments."""

    root: str  # "args" or "it"
    segments: tuple[PathSegment, ...]

    def dotted(self) -> str:
        """The JSON path used by extraction and provenance: args.a.b[0], args["odd key"]."""
        out = self.root
        for seg in self.segments:
            if isinstance(seg.key, int):
                out += f"[{seg.key}]"
            elif seg.key.isidentifier():
                out += f".{seg.key}"
            else:
                import json

                out += f"[{json.dumps(seg.key)}]"
        return out


@dataclass(frozen=True, slots=True)
class Category(Expr):
    """A finding category or glob inside finding()/findings()/severity(): `shell.destructive`, `paths.*`."""

    pattern: str


@dataclass(frozen=True, slots=True)
class Not(Expr):
    operand: Expr


@dataclass(frozen=True, slots=True)
class Neg(Expr):
    operand: Expr


@dataclass(frozen=True, slots=True)
class BoolOp(Expr):
    op: str  # "and" | "or"
    left: Expr
    right: Expr


@dataclass(frozen=True, slots=True)
class Compare(Expr):
    op: str  # == != < <= > >= in matches =~ startswith endswith contains
    left: Expr
    right: Expr


@dataclass(frozen=True, slots=True)
class Keyword:
    name: str
    value: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class Call(Expr):
    """A builtin function call: len, lower, finding, findings, severity, tainted, from_user, injected, all, any,
    count, earlier. Keyword arguments (`within = 10m`) are kept apart."""

    func: str
    args: tuple[Expr, ...]
    kwargs: tuple[Keyword, ...] = ()


# --- declarations ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToolPattern:
    name: str  # exact name or glob: "send_email", "send_*", "*"
    server: str | None  # glob on ToolCall.server, from `name@server`
    span: Span

    @property
    def is_glob(self) -> bool:
        return any(ch in self.name for ch in "*?[")


@dataclass(frozen=True, slots=True)
class Fallback:
    message: str | None = None
    terminate: bool = False


@dataclass(frozen=True, slots=True)
class Rule:
    id: str  # given with `rule ID:` or derived "<file stem>:<line>"
    effect: PolicyEffect
    tools: tuple[ToolPattern, ...]
    condition: Expr | None
    priority: int
    fallback: Fallback
    span: Span
    explicit_id: bool = False


@dataclass(frozen=True, slots=True)
class Let:
    name: str
    value: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class Include:
    path: str  # as written, relative to the including file
    span: Span


@dataclass(frozen=True, slots=True)
class DefaultDecl:
    effect: PolicyEffect
    span: Span


@dataclass(frozen=True, slots=True)
class TestMessage:
    role: str  # user | system | tool | document | assistant
    content: str
    name: str | None  # tool name for role tool
    span: Span


@dataclass(frozen=True, slots=True)
class TestCall:
    tool: str
    arguments: dict[str, object]  # JSON value per keyword (literals, lists, objects); evaluated at parse time
    server: str | None
    span: Span


@dataclass(frozen=True, slots=True)
class PolicyTest:
    name: str
    call: TestCall
    expect: PolicyEffect  # audit in an expectation means "allowed and flagged"
    expect_rule: str | None
    context: tuple[TestMessage, ...]
    history: tuple[TestCall, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class PolicyFile:
    path: str  # as given to the loader
    source: str
    default: DefaultDecl | None
    lets: tuple[Let, ...] = ()
    includes: tuple[Include, ...] = ()
    rules: tuple[Rule, ...] = ()
    tests: tuple[PolicyTest, ...] = ()
    # Items in the order written, for tools that care (formatting, explain); the typed tuples above are the API.
    order: tuple[object, ...] = field(default=(), repr=False)
