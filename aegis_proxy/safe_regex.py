"""Regular expressions that are safe on attacker-controlled text.

Python's `re` backtracks, so a crafted argument can make a pattern run for minutes (ReDoS). Every pattern the
firewall applies to request content is compiled here, with RE2, which matches in time linear in the input. Patterns
that need backtracking features (look-around, back-references) are refused at compile time, never at request time.
"""

from __future__ import annotations

from functools import lru_cache
from itertools import islice
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
    def finditer(self, text: str, pos: int | None = None, endpos: int | None = None): ...  # RE2's iterator
    def findall(self, text: str) -> list: ...


class _Re2Pattern:
    """An RE2 pattern whose calls on ASCII text skip the wrapper's per-call Python work.

    google-re2's Python wrapper spends a few microseconds in Python on every call (a generator, offset bookkeeping)
    even when nothing matches, and most calls on request content find nothing. Here a call on bytes or ASCII text
    (byte offsets are character offsets) makes one call into RE2 per match attempt, and a hit is built from the spans
    that call returned, as the wrapper's own `_Match`: match objects, their offsets and the order of `finditer` are
    exactly the wrapper's, and the pattern runs once per hit instead of twice (a miss test, then the wrapper again).
    Other text (non-ASCII str) is tested for a miss here and handed to the wrapper on a hit, as are calls with
    pos/endpos. `sub` with a function runs on this `finditer`; everything else (findall, split, groups, ...) is the
    wrapper's.
    """

    __slots__ = ("_match", "_wrapped", "pattern")

    def __init__(self, wrapped: Any) -> None:
        self._wrapped = wrapped
        self._match = wrapped._regexp.Match  # the compiled RE2 object's own Match(anchor, bytes, pos, endpos)
        self.pattern: str = wrapped.pattern

    def _first(self, anchor: Any, text: str | bytes) -> tuple[bytes | None, list[tuple[int, int]]]:
        """(the ASCII bytes searched, or None when the text is not ASCII; the spans of the first attempt)."""
        if isinstance(text, bytes):
            return text, self._match(anchor, text, 0, len(text))
        if text.isascii():
            data = text.encode("ascii")
            return data, self._match(anchor, data, 0, len(data))
        data = text.encode("utf-8")
        return None, self._match(anchor, data, 0, len(data))

    def _one(self, anchor: Any, text: str | bytes, method: str) -> Match | None:
        data, spans = self._first(anchor, text)
        if spans[0] == _NO_SPAN:
            return None
        if data is None:  # UTF-8 byte offsets are not character offsets: the wrapper converts them
            return getattr(self._wrapped, method)(text)
        return _WrapperMatch(self._wrapped, text, 0, len(text), spans)

    def search(self, text: str | bytes, pos: int | None = None, endpos: int | None = None) -> Match | None:
        if pos is None and endpos is None:
            return self._one(_UNANCHORED, text, "search")
        return self._wrapped.search(text, pos, endpos)

    def match(self, text: str | bytes, pos: int | None = None, endpos: int | None = None) -> Match | None:
        if pos is None and endpos is None:
            return self._one(_ANCHOR_START, text, "match")
        return self._wrapped.match(text, pos, endpos)

    def fullmatch(self, text: str | bytes, pos: int | None = None, endpos: int | None = None) -> Match | None:
        if pos is None and endpos is None:
            return self._one(_ANCHOR_BOTH, text, "fullmatch")
        return self._wrapped.fullmatch(text, pos, endpos)

    def finditer(self, text: str | bytes, pos: int | None = None, endpos: int | None = None):  # RE2's iterator
        if pos is not None or endpos is not None:
            return self._wrapped.finditer(text, pos, endpos)
        data, spans = self._first(_UNANCHORED, text)
        if spans[0] == _NO_SPAN:
            return iter(())
        if data is None:
            return self._wrapped.finditer(text)
        return self._iterate(text, data, spans)

    def _iterate(self, text: str | bytes, data: bytes, spans: list[tuple[int, int]]):
        # The wrapper's loop: the next attempt starts where the last match ended, one further after an empty match.
        # Its bytes loop records each attempt's start as the match's `pos`; its str loop records the caller's (0).
        wrapped, match, end, pos = self._wrapped, self._match, len(data), 0
        as_bytes = isinstance(text, bytes)
        while True:
            yield _WrapperMatch(wrapped, text, pos if as_bytes else 0, end, spans)
            if pos == end:
                return
            pos = pos + 1 if pos == spans[0][1] else spans[0][1]
            spans = match(_UNANCHORED, data, pos, end)
            if spans[0] == _NO_SPAN:
                return

    def subn(self, repl: Any, text: str | bytes, count: int = 0) -> tuple[str | bytes, int]:
        """The wrapper's `subn`, over this `finditer` when `repl` is a function (templates go to the wrapper)."""
        if not callable(repl):
            return self._wrapped.subn(repl, text, count)
        if count < 0:
            return text, 0
        matches = self.finditer(text) if count == 0 else islice(self.finditer(text), count)
        pieces = []
        end = done = 0
        for match in matches:
            pieces.append(text[end : match.start()])
            pieces.append(repl(match))
            end = match.end()
            done += 1
        pieces.append(text[end:])
        return type(text)().join(pieces), done

    def sub(self, repl: Any, text: str | bytes, count: int = 0) -> str | bytes:
        return self.subn(repl, text, count)[0]

    def __getattr__(self, name: str) -> Any:  # findall, split, groups, ...: the wrapper's
        return getattr(self._wrapped, name)


_Anchor = getattr(getattr(getattr(re2, "_re2", None), "RE2", None), "Anchor", None)
_WrapperMatch = getattr(re2, "_Match", None)  # the wrapper's match class: hits built here are the wrapper's own
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
    if (
        _Anchor is not None
        and _WrapperMatch is not None
        and callable(getattr(getattr(compiled, "_regexp", None), "Match", None))
    ):
        return _Re2Pattern(compiled)
    return compiled
