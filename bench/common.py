"""Helpers shared by the benchmarks: loading the corpus, percentiles, and emptying the caches for cold runs."""

from __future__ import annotations

import sys
from pathlib import Path

from aegis_proxy.check import parse_line
from aegis_proxy.models import CallContext, ToolCall

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "corpus"


def load(path: Path) -> list[tuple[ToolCall, CallContext]]:
    return [parse_line(text)[1:] for text in path.read_text(encoding="utf-8").splitlines() if text.strip()]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def clear_caches() -> None:
    """Empty every `functools` cache in aegis_proxy except compiled patterns (a per-process cost, paid at import).

    A benchmark that replays the corpus hits every text-keyed cache after the first round; real traffic repeats tool
    names, argument names and some values, but not most texts. Clearing before each call gives the pessimistic bound.
    """
    for name, module in list(sys.modules.items()):
        if not name.startswith("aegis_proxy") or module is None:
            continue
        for attribute in vars(module).values():
            cached = callable(getattr(attribute, "cache_clear", None)) and getattr(attribute, "__module__", "") == name
            if cached and attribute.__name__ != "compile_pattern":
                attribute.cache_clear()
