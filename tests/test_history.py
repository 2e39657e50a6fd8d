"""Per-session history: bounded, per session, and what session rules see through the Gate."""

from __future__ import annotations

from pathlib import Path

import pytest

from aegis_proxy.config import load_config
from aegis_proxy.gate import Gate
from aegis_proxy.history import HistoryView, SessionHistory
from aegis_proxy.models import CallContext, Effect, ToolCall


def _call(tool: str, **arguments: object) -> ToolCall:
    return ToolCall(id=tool, tool=tool, arguments=dict(arguments))


def test_history_is_per_session_and_in_order() -> None:
    history = SessionHistory()
    a, b = CallContext(session_id="a"), CallContext(session_id="b")
    history.record(a, _call("one"), Effect.ALLOW, at=1.0)
    history.record(a, _call("two"), Effect.DENY, at=2.0)
    history.record(b, _call("three"), Effect.ALLOW, at=3.0)
    assert [p.tool for p in history.with_history(a).history] == ["one", "two"]
    assert [p.effect for p in history.with_history(a).history] == [Effect.ALLOW, Effect.DENY]
    assert [p.tool for p in history.with_history(b).history] == ["three"]


def test_no_session_no_history_and_a_given_history_is_kept() -> None:
    history = SessionHistory()
    history.record(CallContext(), _call("one"), Effect.ALLOW)
    assert len(history) == 0
    history.record(CallContext(session_id="s"), _call("one"), Effect.ALLOW)
    given = CallContext(session_id="s").model_copy(update={"history": ()})
    assert history.with_history(given).history[0].tool == "one"
    carried = history.with_history(given)
    assert history.with_history(carried) is carried  # a context that already has a history is left alone


def test_bounds_drop_the_oldest_calls_and_sessions() -> None:
    history = SessionHistory(max_calls=3, max_sessions=2)
    for i in range(5):
        history.record(CallContext(session_id="s"), _call(f"t{i}"), Effect.ALLOW)
    assert [p.tool for p in history.with_history(CallContext(session_id="s")).history] == ["t2", "t3", "t4"]
    history.record(CallContext(session_id="x"), _call("x"), Effect.ALLOW)
    history.record(CallContext(session_id="y"), _call("y"), Effect.ALLOW)
    assert len(history) == 2
    assert history.with_history(CallContext(session_id="s")).history == ()


@pytest.mark.parametrize("max_calls", [1, 2, 3, 7])
def test_a_view_never_changes_once_taken_while_the_session_goes_on(max_calls: int) -> None:
    """Views are taken without copying: later calls, calls falling off the bound and the move of the kept calls to a
    new list (every max_calls appends) must leave every earlier view as it was."""
    history = SessionHistory(max_calls=max_calls)
    context = CallContext(session_id="s")
    views: list[tuple[HistoryView, list[str]]] = []
    for n in range(5 * max_calls + 3):
        view = history.with_history(context).history
        expected = [str(i) for i in range(max(0, n - max_calls), n)]
        if n:
            assert isinstance(view, HistoryView)
            views.append((view, expected))
        assert [p.tool for p in view] == expected
        history.record(context, _call(str(n)), Effect.ALLOW, at=float(n))
    for view, expected in views:
        assert [p.tool for p in view] == expected
        assert len(view) == len(expected) and bool(view)


def test_a_view_reads_like_the_tuple_it_stands_for() -> None:
    history = SessionHistory()
    context = CallContext(session_id="s")
    for n in range(4):
        history.record(context, _call(f"t{n}", n=n), Effect.DENY if n % 2 else Effect.ALLOW, at=float(n))
    view = history.with_history(context).history
    as_tuple = tuple(view)
    assert view == as_tuple and as_tuple == tuple(view) and view != as_tuple[:3]
    assert (view[0], view[-1], view[1:3]) == (as_tuple[0], as_tuple[-1], as_tuple[1:3])
    with pytest.raises(IndexError):
        view[4]
    with pytest.raises(IndexError):
        view[-5]
    assert [p.arguments for p in view] == [{"n": n} for n in range(4)]
    assert [p.effect for p in view] == [Effect.ALLOW, Effect.DENY, Effect.ALLOW, Effect.DENY]


def test_a_history_keeps_at_least_one_call() -> None:
    with pytest.raises(ValueError, match="max_calls"):
        SessionHistory(max_calls=0)


def test_the_gate_sees_the_session_a_secret_read_then_a_send_is_denied(tmp_path: Path) -> None:
    """The default policy's secret-then-send rule only fires with history: through the Gate, it must."""
    config = load_config(None, {"data_dir": str(tmp_path)})
    session = CallContext(session_id="s-1")
    send = _call("send_email", to=["ops@example.com"], subject="notes", body="see attached")
    with Gate.from_config(config) as gate:
        assert gate.decide(send, CallContext(session_id="s-0")).effect == "allow"  # a fresh session may send
        gate.decide(_call("read_file", path="/home/dev/project/.env"), session)
        outcome = gate.decide(send, session)
    assert outcome.effect == "deny"
    assert "secret-then-send" in outcome.decision.rules
