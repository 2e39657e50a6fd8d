from __future__ import annotations

import time

import pytest

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
