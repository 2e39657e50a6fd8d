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
