"""Regular expressions that are safe on attacker-controlled text.

Python's `re` backtracks, so a crafted argument can make a pattern run for minutes (ReDoS). Every pattern the
firewall applies to request content is compiled here, with RE2, which matches in time linear in the input. Patterns
that need backtracking features (look-around, back-references) are refused at compile time, never at request time.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Protocol

import re2

from aegis_proxy.errors import PatternError


class Match(Protocol):
    def group(self, index: int | str = 0) -> str: ...
    def start(self, index: int | str = 0) -> int: ...
    def end(self, index: int | str = 0) -> int: ...
    def span(self, index: int | str = 0) -> tuple[int, int]: ...


class Pattern(Protocol):
    pattern: str

    def search(self, text: str) -> Match | None: ...
    def match(self, text: str) -> Match | None: ...
    def fullmatch(self, text: str) -> Match | None: ...
    def finditer(self, text: str): ...  # noqa: ANN201 - RE2's iterator type is private
    def findall(self, text: str) -> list: ...


@lru_cache(maxsize=4096)
def compile_pattern(pattern: str, *, ignore_case: bool = False, dotall: bool = False) -> Pattern:
    """Compile `pattern` with RE2 or raise PatternError. Flags are passed inline so RE2 sees exactly one pattern."""
    flags = ("i" if ignore_case else "") + ("s" if dotall else "")
    source = f"(?{flags}){pattern}" if flags else pattern
    options = re2.Options()
    options.max_mem = 64 << 20  # a large alternation compiles; a pathological one is refused, not run
    options.log_errors = False  # the error is raised to the caller with a hint; RE2 need not print it too
    try:
        return re2.compile(source, options)
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise PatternError(
            f"regular expression {pattern!r} is not supported: {reason}",
            hint="patterns run on RE2 (linear time): look-around and back-references are not available; "
            "rewrite with alternation or character classes",
        ) from None
