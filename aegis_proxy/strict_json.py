"""JSON read the strict way, for everything we must not read differently from another parser: request lines,
audit record bodies, trusted-key files. Two parsers disagreeing on `{"a": 1, "a": 2}` is a classic bypass."""

from __future__ import annotations

from typing import Any


class DuplicateKeyError(ValueError):
    """A JSON object named one key twice (a ValueError, so json callers catch it with the other decode errors)."""


def object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`object_pairs_hook` for json.loads that refuses duplicate keys instead of keeping the last one."""
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise DuplicateKeyError(f"duplicate key {key[:40]!r}")
        result[key] = value
    return result
