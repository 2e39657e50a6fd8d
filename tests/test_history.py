"""Per-session history: bounded, per session, and what session rules see through the Gate."""

from __future__ import annotations

from pathlib import Path

from aegis_proxy.config import load_config
from aegis_proxy.gate import Gate
from aegis_proxy.history import SessionHistory
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
