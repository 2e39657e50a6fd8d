"""A human operator for end-to-end tests: answers the first pending approval from its own connection, as
`aegis approvals approve|deny ID` in another terminal would."""

from __future__ import annotations

import threading
import time

from aegis_proxy.approvals import ApprovalStore


def answer_first_pending(
    db_url: str, approve: bool, *, by: str = "test-operator", timeout: float = 20
) -> threading.Thread:
    """Start a thread that waits for a pending approval and resolves it; join it after the held call returned."""

    def answer() -> None:
        store = ApprovalStore(db_url)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                pending = store.list()
                if pending:
                    store.resolve(pending[0].id, approve, by)
                    return
                time.sleep(0.05)
        finally:
            store.close()

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    return thread
