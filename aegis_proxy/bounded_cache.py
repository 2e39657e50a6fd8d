"""A cache of values keyed by (mostly) text, bounded in entries and in the characters its keys hold.

For what a session sends again with every request: an agent's conversation grows by a turn or two per call and is
resent whole, so the work done on its earlier messages (parsing them into Messages, provenance's view of each) can be
kept instead of redone. The oldest entries go first (insertion order, no recency bookkeeping on reads: a read is one
dict lookup). Reads take no lock, since a dict lookup is atomic under the GIL and a racing writer at worst computes a
value twice; writes are locked. Values are shared between callers, so they must be immutable.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """At most `max_entries` entries whose keys hold at most `max_chars` characters (`size` of a key); a key larger
    than that alone is never kept."""

    def __init__(self, *, max_entries: int, max_chars: int, size: Callable[[K], int]) -> None:
        self._entries: dict[K, V] = {}
        self._chars = 0
        self._max_entries = max_entries
        self._max_chars = max_chars
        self._size = size
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        return self._entries.get(key)

    def put(self, key: K, value: V) -> None:
        size = self._size(key)
        if size > self._max_chars:
            return
        with self._lock:
            if key in self._entries:
                return
            self._entries[key] = value
            self._chars += size
            while self._entries and (len(self._entries) > self._max_entries or self._chars > self._max_chars):
                oldest = next(iter(self._entries))
                del self._entries[oldest]
                self._chars -= self._size(oldest)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._chars = 0

    def __len__(self) -> int:
        return len(self._entries)
