"""JSON read the strict way, for everything we must not read differently from another parser: request lines,
audit record bodies, trusted-key files. Two parsers disagreeing on `{"a": 1, "a": 2}` is a classic bypass."""

from __future__ import annotations

import json
from typing import Any


class DuplicateKeyError(ValueError):
    """A JSON object named one key twice (a ValueError, so json callers catch it with the other decode errors)."""


class NotANumberError(ValueError):
    """NaN, Infinity or -Infinity: Python's json reads them, JSON has no such numbers and other parsers refuse them."""


def object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`object_pairs_hook` for json.loads that refuses duplicate keys instead of keeping the last one."""
    result = dict(pairs)  # in C; a duplicate shows as a shorter dict, and only then are the keys walked
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise DuplicateKeyError(f"duplicate key {key[:40]!r}")
            seen.add(key)
    return result


def _refuse_constant(name: str) -> Any:
    raise NotANumberError(f"{name} is not JSON")


# Built once: json.loads builds a new decoder on every call that passes a hook (measured: a fifth of reading a tool
# call's JSON). The decoder keeps no state between calls, so threads share it as json.loads shares its default one.
_STRICT = json.JSONDecoder(object_pairs_hook=object_without_duplicates, parse_constant=_refuse_constant)


def loads(text: str) -> Any:
    """Strict json.loads of a str: DuplicateKeyError for a key named twice, NotANumberError for NaN and Infinity,
    json.JSONDecodeError for what is not JSON, RecursionError when it nests too deeply to read."""
    return _STRICT.decode(text)
