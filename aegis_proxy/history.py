"""Per-session call history: what a session did before, so that session rules (`count(...)`, `earlier(...)` in the
policy language) see it. Used by `aegis check` (sessions in file order) and by the Gate (live traffic).

In memory and bounded: the newest `max_calls` calls per session, the `max_sessions` most recently active sessions.
Each replica keeps its own; a load balancer with session affinity keeps a session's history whole.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque

from aegis_proxy.models import CallContext, Effect, PriorCall, ToolCall

MAX_CALLS = 1_000  # earlier calls kept per session; older ones fall off (the policy's windows are shorter)
MAX_SESSIONS = 10_000


class SessionHistory:
    """Thread-safe. `with_history` before deciding, `record` after."""

    def __init__(self, *, max_calls: int = MAX_CALLS, max_sessions: int = MAX_SESSIONS) -> None:
        self.max_calls = max_calls
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, deque[PriorCall]] = OrderedDict()
        self._lock = threading.Lock()

    def with_history(self, context: CallContext) -> CallContext:
        """The context with its session's earlier calls, unless it has no session or already carries a history."""
        if context.session_id is None or context.history:
            return context
        with self._lock:
            calls = self._sessions.get(context.session_id)
            earlier = tuple(calls) if calls else ()
        return context.model_copy(update={"history": earlier}) if earlier else context

    def record(self, context: CallContext, call: ToolCall, effect: Effect, at: float | None = None) -> None:
        if context.session_id is None:
            return
        prior = PriorCall(tool=call.tool, arguments=call.arguments, effect=effect, at=time.time() if at is None else at)
        with self._lock:
            calls = self._sessions.get(context.session_id)
            if calls is None:
                calls = self._sessions[context.session_id] = deque(maxlen=self.max_calls)
            self._sessions.move_to_end(context.session_id)
            calls.append(prior)
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)

    def __len__(self) -> int:
        return len(self._sessions)
