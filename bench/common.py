"""Helpers shared by the benchmarks: loading the corpus, percentiles, and fresh copies of calls for uncached runs."""

from __future__ import annotations

from pathlib import Path

from aegis_proxy.check import parse_line
from aegis_proxy.models import CallContext, ToolCall

CORPUS = Path(__file__).resolve().parent.parent / "tests" / "corpus"

Call = tuple[ToolCall, CallContext]


def load(path: Path) -> list[Call]:
    return [parse_line(text)[1:] for text in path.read_text(encoding="utf-8").splitlines() if text.strip()]


# Larger than the per-core caches of the machines we run on (this one: 64 KiB L1, 2 MiB L2 per core).
_EVICT_BYTES = 8 * 1024 * 1024
_evict_buffers: list[bytearray] = []  # allocated by the first eviction: the other benchmarks import this module too


def evict_caches() -> None:
    """Push what the last code touched out of the CPU's per-core caches, as the rest of a proxy's work does between
    two calls: copying 8 MiB reads and writes more than those caches hold."""
    if not _evict_buffers:
        _evict_buffers.extend((bytearray(_EVICT_BYTES), bytearray(_EVICT_BYTES)))
    source, target = _evict_buffers
    target[:] = source


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def freshen(calls: list[Call], tag: str) -> list[Call]:
    """The calls with `tag` appended to every string value (keys and tool names unchanged).

    Replaying a corpus hits every text-keyed cache after the first round; real traffic repeats tool names, argument
    names and some values, but not most texts. A fresh tag per round makes each value a text never seen before, so
    the run measures the uncached path. The tag is lower-case letters (digits or capitals would send every string
    to the base64/hex decoders), so the work per string barely changes.
    """
    return [(call.model_copy(update={"arguments": _tagged(call.arguments, tag)}), context) for call, context in calls]


def round_tag(round_: int, part: str = "") -> str:
    """A lower-case tag, distinct for every round (and part): `qb`, `qbzs`."""
    letters = ""
    while True:
        round_, digit = divmod(round_, 26)
        letters = chr(ord("a") + digit) + letters
        if not round_:
            return f"q{letters}{part}"


def _tagged(value: object, tag: str) -> object:
    if isinstance(value, str):
        return f"{value} {tag}"
    if isinstance(value, dict):
        return {key: _tagged(item, tag) for key, item in value.items()}
    if isinstance(value, list):
        return [_tagged(item, tag) for item in value]
    return value
