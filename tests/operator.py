"""A human operator for end-to-end tests: answers the first pending approval from its own connection, as
`aegis approvals approve|deny ID` in another terminal would."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from aegis_proxy.approvals import Approval, ApprovalStore


def answer_first_pending(
    db_url: str,
    approve: bool,
    *,
    by: str = "test-operator",
    timeout: float = 20,
    after: threading.Event | None = None,
    resolve: Callable[[Approval], None] | None = None,
) -> threading.Thread:
    """Start a thread that waits for a pending approval and resolves it; join it after the held call returned.
    `after`: answer only once this is set (the human first reads what the agent shows). `resolve`: how to answer
    (e.g. the real CLI); by default the store resolves it with `approve` and `by`."""

    def answer() -> None:
        store = ApprovalStore(db_url)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                pending = store.list() if after is None or after.is_set() else []
                if pending:
                    if resolve is not None:
                        resolve(pending[0])
                    else:
                        store.resolve(pending[0].id, approve, by)
                    return
                time.sleep(0.05)
        finally:
            store.close()

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    return thread
