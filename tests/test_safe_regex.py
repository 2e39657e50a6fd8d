from __future__ import annotations

import time

import pytest
import re2

from aegis_proxy.errors import PatternError
from aegis_proxy.safe_regex import compile_pattern


@pytest.mark.parametrize("pattern", [r"(?=x)", r"(a)\1", r"(?<!a)b"], ids=["lookahead", "backref", "lookbehind"])
def test_backtracking_features_are_refused_with_a_hint(pattern: str) -> None:
    with pytest.raises(PatternError) as info:
        compile_pattern(pattern)
    assert "RE2" in info.value.hint


@pytest.mark.parametrize(
    ("pattern", "subject"),
    [(r"(a+)+$", "a" * 100_000 + "!"), (r"(x|x)*y", "x" * 100_000), (r"(\w+\s?)*$", "word " * 20_000 + "!")],
    ids=["nested-plus", "alternation-star", "words"],
)
def test_catastrophic_patterns_run_in_linear_time(pattern: str, subject: str) -> None:
    compiled = compile_pattern(pattern)
    started = time.perf_counter()
    compiled.search(subject)
    assert time.perf_counter() - started < 1.0


def test_flags() -> None:
    assert compile_pattern("abc", ignore_case=True).search("xABCx")
    assert compile_pattern("a.b", dotall=True).search("a\nb")
    assert not compile_pattern("a.b").search("a\nb")


@pytest.mark.parametrize(
    "subject",
    ["no match here", "x curl http://a | bash y", "é curl http://a | sh — ü", b"curl x | sh", "", "curl\ncurl a|sh"],
    ids=["miss", "hit", "non-ascii-hit", "bytes", "empty", "second-line"],
)
def test_fast_path_agrees_with_the_re2_wrapper(subject: str | bytes) -> None:
    compiled = compile_pattern(r"(curl|wget)\s+\S+\s*\|\s*(ba)?sh", ignore_case=True)
    wrapped = re2.compile(compiled.pattern)
    for method in ("search", "match", "fullmatch"):
        ours, theirs = getattr(compiled, method)(subject), getattr(wrapped, method)(subject)
        assert (ours is None) == (theirs is None)
        if ours is not None:
            assert (ours.span(), ours.groups()) == (theirs.span(), theirs.groups())
    assert [m.span(1) for m in compiled.finditer(subject)] == [m.span(1) for m in wrapped.finditer(subject)]
    assert compiled.findall(subject) == wrapped.findall(subject)
    ours, theirs = compiled.search(subject, 1), wrapped.search(subject, 1)  # with pos: the wrapper's own path
    assert (ours and ours.span()) == (theirs and theirs.span())


def _described(match: object) -> tuple | None:
    """Everything a caller can read from a match object."""
    if match is None:
        return None
    groups = match.re.groups  # type: ignore[attr-defined]
    return (
        tuple(match.span(group) for group in range(groups + 1)),  # type: ignore[attr-defined]
        match.groups(),  # type: ignore[attr-defined]
        match.group(),  # type: ignore[attr-defined]
        match.pos,  # type: ignore[attr-defined]
        match.endpos,  # type: ignore[attr-defined]
        match.string,  # type: ignore[attr-defined]
    )


@pytest.mark.parametrize(
    "pattern",
    [r"(a*)", r"(x)?(y)?", r"\b\w+\b", r"(?:(ab)|(c))+", r"$", r"(?i)(ü|k)+", r"^(\d+)-(\d+)?"],
    ids=["empty-matches", "optional-groups", "words", "alternating-groups", "end-only", "unicode-class", "anchored"],
)
@pytest.mark.parametrize(
    "subject",
    ["", "aaa bab c", "xyyx ab c abab", "12-34 56-", b"ab c ab", "Ünicode kK ab", "ab\u212a"],
    ids=["empty", "ascii", "groups", "digits", "bytes", "non-ascii", "kelvin-sign"],
)
def test_calls_on_ascii_and_bytes_return_the_wrappers_own_matches(pattern: str, subject: str | bytes) -> None:
    compiled = compile_pattern(pattern)
    wrapped = re2.compile(compiled.pattern)
    for method in ("search", "match", "fullmatch"):
        assert _described(getattr(compiled, method)(subject)) == _described(getattr(wrapped, method)(subject))
    ours = [_described(match) for match in compiled.finditer(subject)]
    assert ours == [_described(match) for match in wrapped.finditer(subject)]


@pytest.mark.parametrize("count", [0, 1, 2, -1], ids=["all", "first", "two", "negative"])
@pytest.mark.parametrize(
    ("pattern", "subject"),
    [
        (r"(a*)", "baaac"),
        (r"'([^']*)'|(#[^\n]*)", "x = 'one' # c\ny = 'two'"),
        (r"(\d+)", b"a1b22c333"),
        (r"(\w)", "é ü k"),
        (r"q", "no hit"),
        (r"", ""),
    ],
    ids=["empty-matches", "literals", "bytes", "non-ascii", "miss", "empty"],
)
def test_sub_with_a_function_agrees_with_the_wrapper(pattern: str, subject: str | bytes, count: int) -> None:
    compiled = compile_pattern(pattern)
    wrapped = re2.compile(compiled.pattern)

    def shout(match: object) -> str | bytes:
        found = match.group(0)  # type: ignore[attr-defined]
        return found.upper() + found[:1] if found else found[:0] + ("<>" if isinstance(found, str) else b"<>")

    assert compiled.subn(shout, subject, count) == wrapped.subn(shout, subject, count)
    assert compiled.sub(shout, subject, count=count) == wrapped.sub(shout, subject, count=count)
    template = "-" if isinstance(subject, str) else b"-"
    assert compiled.sub(template, subject) == wrapped.sub(template, subject)  # a template: the wrapper's own
