"""Regular expressions that are safe on attacker-controlled text.

Python's `re` backtracks, so a crafted argument can make a pattern run for minutes (ReDoS). Every pattern the
firewall applies to request content is compiled here, with RE2, which matches in time linear in the input. Patterns
that need backtracking features (look-around, back-references) are refused at compile time, never at request time.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Protocol

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
    def finditer(self, text: str): ...  # RE2's iterator type is private
    def findall(self, text: str) -> list: ...


class _Re2Pattern:
    """An RE2 pattern whose misses are cheap.

    google-re2's Python wrapper spends a few microseconds in Python on every call (a generator, offset bookkeeping)
    even when nothing matches, and most calls on request content find nothing. Here a miss costs one encode and one
    call into RE2; a hit (or a call with pos/endpos) goes through the wrapper, so match objects and their offsets are
    exactly the wrapper's. Everything else is the wrapper's too.
    """

    __slots__ = ("_match", "_wrapped", "pattern")

    def __init__(self, wrapped: Any) -> None:
        self._wrapped = wrapped
        self._match = wrapped._regexp.Match  # the compiled RE2 object's own Match(anchor, bytes, pos, endpos)
        self.pattern: str = wrapped.pattern

    def _misses(self, anchor: Any, text: str | bytes) -> bool:
        data = text if isinstance(text, bytes) else text.encode("utf-8")
        return self._match(anchor, data, 0, len(data))[0] == _NO_SPAN

    def search(self, text: str | bytes, pos: int | None = None, endpos: int | None = None) -> Match | None:
        if pos is None and endpos is None and self._misses(_UNANCHORED, text):
            return None
        return self._wrapped.search(text, pos, endpos)

    def match(self, text: str | bytes, pos: int | None = None, endpos: int | None = None) -> Match | None:
        if pos is None and endpos is None and self._misses(_ANCHOR_START, text):
            return None
        return self._wrapped.match(text, pos, endpos)

    def fullmatch(self, text: str | bytes, pos: int | None = None, endpos: int | None = None) -> Match | None:
        if pos is None and endpos is None and self._misses(_ANCHOR_BOTH, text):
            return None
        return self._wrapped.fullmatch(text, pos, endpos)

    def finditer(self, text: str | bytes, pos: int | None = None, endpos: int | None = None):  # RE2's iterator
        if pos is None and endpos is None and self._misses(_UNANCHORED, text):
            return iter(())
        return self._wrapped.finditer(text, pos, endpos)

    def __getattr__(self, name: str) -> Any:  # findall, sub, split, groups, ...: the wrapper's
        return getattr(self._wrapped, name)


_Anchor = getattr(getattr(getattr(re2, "_re2", None), "RE2", None), "Anchor", None)
_NO_SPAN = (-1, -1)
if _Anchor is not None:
    _UNANCHORED, _ANCHOR_START, _ANCHOR_BOTH = _Anchor.UNANCHORED, _Anchor.ANCHOR_START, _Anchor.ANCHOR_BOTH


@lru_cache(maxsize=4096)
def compile_pattern(pattern: str, *, ignore_case: bool = False, dotall: bool = False) -> Pattern:
    """Compile `pattern` with RE2 or raise PatternError. Flags are passed inline so RE2 sees exactly one pattern."""
    flags = ("i" if ignore_case else "") + ("s" if dotall else "")
    source = f"(?{flags}){pattern}" if flags else pattern
    options = re2.Options()
    options.max_mem = 64 << 20  # a large alternation compiles; a pathological one is refused, not run
    options.log_errors = False  # the error is raised to the caller with a hint; RE2 need not print it too
    try:
        compiled = re2.compile(source, options)
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise PatternError(
            f"regular expression {pattern!r} is not supported: {reason}",
            hint="patterns run on RE2 (linear time): look-around and back-references are not available; "
            "rewrite with alternation or character classes",
        ) from None
    # The fast path leans on the wrapper's internals; a google-re2 without them gets the plain wrapper.
    if _Anchor is not None and callable(getattr(getattr(compiled, "_regexp", None), "Match", None)):
        return _Re2Pattern(compiled)
    return compiled
