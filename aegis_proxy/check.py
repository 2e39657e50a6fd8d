"""The offline seam: JSON lines of tool calls in, JSON lines of decisions out (`aegis check`).

Input line:  {"id": "c1", "tool": "run_shell", "arguments": {...},
              "context": {"user_request": "...", "messages": [{"role": ..., "content": ..., "name": ...}],
                          "agent_id": "...", "session_id": "..."},
              "meta": {...}}                      # context optional; meta is carried for corpora and ignored
Output line: {"id": "c1", "effect": "allow|deny|ask", "risk": 0.0-1.0, "rules": [...], "findings": [...],
              "reasons": [...], "message": "...", "flagged": false, "terminate": false, "policy_digest": "..."}
A line we cannot read exactly (invalid JSON, duplicate keys, NaN, wrong shape) becomes
{"id": null, "line": N, "effect": "error", "error": "..."} and the run goes on. Calls sharing a session_id are judged
in file order as one session: each sees the earlier ones in its history.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from aegis_proxy import strict_json
from aegis_proxy.errors import InputError
from aegis_proxy.firewall import Firewall
from aegis_proxy.history import SessionHistory
from aegis_proxy.models import CallContext, Decision, Message, Role, ToolCall
from aegis_proxy.strict_json import DuplicateKeyError, NotANumberError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LineMessage(_Strict):
    role: Role
    content: str = ""
    name: str | None = None


class LineContext(_Strict):
    user_request: str | None = None
    messages: list[LineMessage] = Field(default_factory=list)
    agent_id: str | None = None
    session_id: str | None = None


class CheckLine(_Strict):
    id: str = Field(min_length=1)
    tool: str = Field(min_length=1)
    arguments: JsonValue = Field(default_factory=dict)
    server: str | None = None
    context: LineContext | None = None
    meta: dict[str, JsonValue] | None = None


def loads_strict(text: str) -> Any:
    """json.loads that refuses what other parsers might read differently: duplicate keys, NaN, Infinity."""
    try:
        return strict_json.loads(text)
    except NotANumberError as exc:
        raise InputError(str(exc), hint="NaN and Infinity are not valid JSON numbers") from None
    except DuplicateKeyError as exc:
        raise InputError(str(exc), hint="a JSON object may name each key once") from None
    except RecursionError:
        raise InputError("JSON nested too deeply", hint="flatten the arguments") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"invalid JSON: {exc.msg} at column {exc.colno}") from None


def parse_line(text: str) -> tuple[CheckLine, ToolCall, CallContext]:
    data = loads_strict(text)
    if not isinstance(data, dict):
        raise InputError(f"expected a JSON object, got {type(data).__name__}")
    try:
        line = CheckLine.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'line'}: {e['msg']}" for e in exc.errors())
        raise InputError(f"not a tool call line: {problems}") from None
    ctx = line.context or LineContext()
    messages = [Message(role=m.role, content=m.content, name=m.name) for m in ctx.messages]
    if ctx.user_request and not any(m.role is Role.USER and m.content == ctx.user_request for m in messages):
        messages.insert(0, Message(role=Role.USER, content=ctx.user_request))
    call = ToolCall(
        id=line.id, tool=line.tool, arguments=line.arguments, server=line.server, protocol="offline", raw_size=len(text)
    )
    context = CallContext(agent_id=ctx.agent_id, session_id=ctx.session_id, messages=tuple(messages))
    return line, call, context


def decision_json(call_id: str, decision: Decision) -> dict[str, Any]:
    return {
        "id": call_id,
        "effect": decision.effect.value,
        "risk": round(decision.risk, 4),
        "rules": list(decision.rules),
        "findings": [f.summary() for f in decision.findings],
        "reasons": list(decision.reasons),
        "message": decision.message,
        "flagged": decision.flagged,
        "terminate": decision.terminate,
        "policy_digest": decision.policy_digest,
    }


@dataclass
class CheckRun:
    """Judges lines in order, keeping per-session history. Iterate `results(lines)`; read the counters after."""

    firewall: Firewall
    judged: int = 0
    errors: int = 0
    _history: SessionHistory = field(default_factory=SessionHistory)

    def results(self, lines: Iterable[str]) -> Iterator[dict[str, Any]]:
        for _, result in self.judge(lines):
            yield result

    def judge(self, lines: Iterable[str]) -> Iterator[tuple[CheckLine | None, dict[str, Any]]]:
        """Each non-blank line as read (None when malformed) with its output line, so callers that need the line's
        `meta` (corpus evaluation) do not parse it a second time."""
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                line, call, context = parse_line(raw)
            except InputError as exc:
                self.errors += 1
                yield None, {"id": None, "line": number, "effect": "error", "error": exc.message}
                continue
            context = self._history.with_history(context)
            decision = self.firewall.check(call, context)
            self._history.record(context, call, decision.effect)
            self.judged += 1
            yield line, decision_json(call.id, decision)
