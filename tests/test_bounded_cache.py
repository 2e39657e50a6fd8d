"""BoundedCache: bounded in entries and in characters, the oldest entries go first, oversized keys never kept."""

from __future__ import annotations

import pytest

from aegis_proxy.bounded_cache import BoundedCache


def _cache(max_entries: int = 3, max_chars: int = 10) -> BoundedCache[str, int]:
    return BoundedCache(max_entries=max_entries, max_chars=max_chars, size=len)


def test_get_returns_what_was_put_and_none_otherwise() -> None:
    cache = _cache()
    cache.put("ab", 1)
    assert (cache.get("ab"), cache.get("cd")) == (1, None)


def test_a_second_put_of_a_key_keeps_the_first_value() -> None:
    cache = _cache()
    cache.put("ab", 1)
    cache.put("ab", 2)
    assert cache.get("ab") == 1 and len(cache) == 1


@pytest.mark.parametrize(
    ("puts", "kept"),
    [
        (["a", "b", "c", "d"], ["b", "c", "d"]),  # over max_entries: the oldest goes
        (["aaaa", "bbbb", "cccc"], ["bbbb", "cccc"]),  # over max_chars (12 > 10): the oldest goes
        (["a", "bbbbbbbbbbb"], ["a"]),  # a key larger than max_chars alone is never kept
        (["aaaaa", "bbbbbbbbbb"], ["bbbbbbbbbb"]),  # exactly max_chars fits once the rest is gone
    ],
)
def test_bounds(puts: list[str], kept: list[str]) -> None:
    cache = _cache()
    for n, key in enumerate(puts):
        cache.put(key, n)
    assert [key for key in puts if cache.get(key) is not None] == kept
    assert len(cache) == len(kept)


def test_clear_empties_and_frees_the_character_budget() -> None:
    cache = _cache()
    cache.put("aaaaaaaaaa", 1)
    cache.clear()
    cache.put("bbbbbbbbbb", 2)
    assert (len(cache), cache.get("aaaaaaaaaa"), cache.get("bbbbbbbbbb")) == (1, None, 2)
