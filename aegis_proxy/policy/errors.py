"""Errors of the policy language: every one names file:line:col, shows the line with a caret, and says what to do.

A `Diagnostic` is one finding of the parser or the static checks. It carries the source line it points at, so it
renders without the file at hand (the hot-reload thread logs it long after the text is gone):

    policies/default.aegis:3:13: error: unknown function `lenght`
        3 | deny * when lenght(args.cmd) > 3
          |             ^^^^^^
      hint: did you mean `len`?
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from aegis_proxy.errors import AegisError
from aegis_proxy.policy.ast import Span

DiagnosticSeverity = Literal["error", "warning"]

_EXCERPT_WIDTH = 100  # characters of a long source line shown around the column


@dataclass(frozen=True, slots=True)
class Excerpt:
    """A (possibly shortened) source line and the caret line under it."""

    line: str
    caret: str

    @classmethod
    def of(cls, source: str, span: Span) -> Excerpt:
        return cls.from_line(source_line(source, span.line), span)

    @classmethod
    def from_line(cls, text: str, span: Span) -> Excerpt:
        start = max(span.column - 1, 0)
        if span.end_line == span.line and span.end_column > span.column:
            width = span.end_column - span.column
        elif span.end_line > span.line:
            width = max(len(text) - start, 1)  # a multi-line node: underline to the end of its first line
        else:
            width = 1
        shift = 0
        if len(text) > _EXCERPT_WIDTH:  # hostile or minified input: show a window, never megabytes
            shift = max(0, min(start - _EXCERPT_WIDTH // 3, len(text) - _EXCERPT_WIDTH))
            text = text[shift : shift + _EXCERPT_WIDTH]
        start -= shift
        width = max(1, min(width, len(text) - start))
        text = text.replace("\r", "").expandtabs(1)  # one column per character keeps the caret aligned
        return cls(text, " " * start + "^" * width)


def source_line(source: str, line: int) -> str:
    """Line `line` (1-based) of `source`; lines are split on \\n only, as the lexer counts them."""
    if line < 1:
        return ""
    start = 0
    for _ in range(line - 1):
        start = source.find("\n", start) + 1
        if start == 0:
            return ""
    end = source.find("\n", start)
    return source[start : end if end >= 0 else len(source)]


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One problem found in a policy. Errors stop a load; warnings are reported (and fail only under --strict)."""

    severity: DiagnosticSeverity
    span: Span
    message: str
    hint: str = ""
    excerpt: Excerpt | None = None  # the source line and caret; absent when the source was not at hand

    @property
    def is_error(self) -> bool:
        return self.severity == "error"

    @classmethod
    def at(
        cls, severity: DiagnosticSeverity, span: Span, message: str, *, source: str | None, hint: str = ""
    ) -> Diagnostic:
        return cls(severity, span, message, hint, Excerpt.of(source, span) if source is not None else None)

    def render(self) -> str:
        lines = [f"{self.span}: {self.severity}: {self.message}"]
        if self.excerpt is not None and self.excerpt.line.strip():
            number = str(self.span.line)
            lines.append(f"    {number} | {self.excerpt.line}")
            lines.append(f"    {' ' * len(number)} | {self.excerpt.caret}")
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)


class PolicyError(AegisError):
    """Base of the policy language's errors. `diagnostics` lists what went wrong, each renderable on its own."""

    def __init__(self, message: str, diagnostics: Sequence[Diagnostic], *, hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.diagnostics = tuple(diagnostics)

    def render(self) -> str:
        if not self.diagnostics:  # an error about the set as a whole (no file to point at)
            return AegisError.__str__(self)
        return "\n".join(d.render() for d in self.diagnostics)

    def __str__(self) -> str:
        return self.render()


class PolicySyntaxError(PolicyError):
    """The text is not a policy: one error, at the first place the parser could not go on."""

    def __init__(self, message: str, *, span: Span, excerpt: Excerpt | None, hint: str = "") -> None:
        diagnostic = Diagnostic("error", span, message, hint, excerpt)
        super().__init__(message, [diagnostic], hint=hint)
        self.span = span
        self.file = span.file
        self.line = span.line
        self.column = span.column
        self.source_line = excerpt.line if excerpt else ""
        self.caret = excerpt.caret if excerpt else ""

    @property
    def diagnostic(self) -> Diagnostic:
        return self.diagnostics[0]


class PolicyCheckError(PolicyError):
    """The policy parsed but the static checks found errors (warnings ride along for the report)."""

    def __init__(self, diagnostics: Sequence[Diagnostic]) -> None:
        errors = sum(1 for d in diagnostics if d.is_error)
        first = next((d for d in diagnostics if d.is_error), None)
        summary = f"{errors} error{'s' if errors != 1 else ''} in policy"
        if first is not None:
            summary += f" (first: {first.span}: {first.message})"
        super().__init__(summary, diagnostics)

    @property
    def errors(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.is_error)

    @property
    def warnings(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if not d.is_error)
