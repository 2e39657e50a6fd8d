"""OpenAI Chat Completions (`POST /v1/chat/completions`): requests, responses and their SSE streams.

Calls live in `choices[].message.tool_calls` (non-streamed) or arrive as `choices[].delta.tool_calls` fragments keyed
by `index` (streamed): the first fragment of a call carries `id` and `function.name`, later ones only pieces of the
`function.arguments` JSON string. A call is complete when its choice moves to another index, finishes, or the stream
sends `[DONE]`. Blocked calls become assistant `content`; indexes of the remaining calls are renumbered 0..n-1 and a
choice left without calls finishes with `stop` instead of `tool_calls`.

The legacy `functions` / `function_call` API is refused (WireError): it is deprecated, and reading it half would let a
call through unchecked.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from typing import Any

from aegis_proxy.models import Message, Role, ToolCall
from aegis_proxy.proxy import shape
from aegis_proxy.proxy.sse import EventFilter, SSEEvent, format_event
from aegis_proxy.proxy.wire import (
    Decide,
    EventStreamFilter,
    RequestView,
    Ruling,
    WireError,
    blocked_text,
    dump_json,
    event_json,
    load_json,
)

NAME = "openai-chat"

_ROLES = {
    "system": Role.SYSTEM,
    "developer": Role.SYSTEM,
    "user": Role.USER,
    "assistant": Role.ASSISTANT,
    "tool": Role.TOOL,
}
_TEXT_PARTS = {"text": "text", "refusal": "refusal"}  # part type -> the key that holds its text
_OTHER_PARTS = frozenset({"image_url", "input_audio", "file"})  # parts without text we could read
_LEGACY = "the legacy `functions`/`function_call` API is not supported; send `tools` instead"


def _content_text(content: object, where: str) -> str:
    return shape.content_text(content, where, _TEXT_PARTS, _OTHER_PARTS)


def _message(raw: object, where: str) -> Message:
    msg = shape.obj(raw, where)
    role_name = shape.string(msg.get("role"), f"{where}.role")
    if role_name == "function":
        raise shape.fail(f"{where}.role", _LEGACY)
    role = _ROLES.get(role_name)
    if role is None:
        raise shape.fail(f"{where}.role", f"unknown role {role_name[:40]!r}")
    content = _content_text(msg.get("content"), f"{where}.content")
    name = shape.opt_string(msg.get("name"), f"{where}.name")
    if role is Role.TOOL:
        shape.string(msg.get("tool_call_id"), f"{where}.tool_call_id", nonempty=True)
    return shape.message(role=role, content=content, name=name)


def _arguments(text: str, where: str) -> dict[str, Any]:
    return shape.arguments_object(load_json(text, where), where)


@dataclasses.dataclass(frozen=True)
class _Located:
    choice: int  # position in `choices`
    position: int  # position in that choice's `message.tool_calls`
    call: ToolCall


def _response_calls(data: object) -> list[_Located]:
    body = shape.obj(data, "response")
    if body.get("object", "chat.completion") != "chat.completion":
        raise shape.fail("response.object", f"expected 'chat.completion', got {str(body.get('object'))[:40]!r}")
    located: list[_Located] = []
    seen: set[str] = set()
    for c, raw_choice in enumerate(shape.arr(body.get("choices"), "response.choices")):
        where = f"response.choices[{c}]"
        choice = shape.obj(raw_choice, where)
        message = shape.obj(choice.get("message"), f"{where}.message")
        if message.get("function_call") is not None:
            raise shape.fail(f"{where}.message.function_call", _LEGACY)
        shape.opt_string(message.get("content"), f"{where}.message.content")
        shape.opt_string(choice.get("finish_reason"), f"{where}.finish_reason")
        for p, raw_call in enumerate(shape.opt_arr(message.get("tool_calls"), f"{where}.message.tool_calls")):
            cw = f"{where}.message.tool_calls[{p}]"
            item = shape.obj(raw_call, cw)
            call_id = shape.string(item.get("id"), f"{cw}.id", nonempty=True)
            if call_id in seen:
                raise shape.fail(f"{cw}.id", f"duplicate tool call id {call_id[:40]!r}")
            seen.add(call_id)
            kind = shape.string(item.get("type"), f"{cw}.type")
            if kind == "function":
                fn = shape.obj(item.get("function"), f"{cw}.function")
                name = shape.string(fn.get("name"), f"{cw}.function.name", nonempty=True)
                text = shape.string(fn.get("arguments"), f"{cw}.function.arguments")
                call = shape.tool_call(
                    NAME, call_id, name, _arguments(text, f"{cw}.function.arguments"), len(text.encode())
                )
            elif kind == "custom":
                custom = shape.obj(item.get("custom"), f"{cw}.custom")
                name = shape.string(custom.get("name"), f"{cw}.custom.name", nonempty=True)
                text = shape.string(custom.get("input"), f"{cw}.custom.input")
                call = shape.tool_call(NAME, call_id, name, {"input": text}, len(text.encode()))
            else:
                raise shape.fail(f"{cw}.type", f"unknown tool call type {kind[:40]!r}")
            located.append(_Located(c, p, call))
    return located


def _append_text(existing: object, text: str) -> str:
    before = existing if isinstance(existing, str) else ""
    return f"{before}\n\n{text}" if before else text


class OpenAIChat(shape.Limits):
    """The OpenAI Chat Completions protocol (an `LLMProtocol`)."""

    name = NAME

    def matches(self, path: str) -> bool:
        return shape.path_only(path).endswith("/chat/completions")

    def parse_request(self, body: bytes) -> RequestView:
        data = shape.obj(load_json(body, "request"), "request")
        if data.get("functions") is not None or data.get("function_call") is not None:
            raise shape.fail("request.functions", _LEGACY)
        messages = tuple(
            _message(m, f"request.messages[{i}]")
            for i, m in enumerate(shape.arr(data.get("messages"), "request.messages"))
        )
        stream = shape.opt_bool(data.get("stream"), "request.stream")
        model = shape.opt_string(data.get("model"), "request.model")
        return RequestView(messages=messages, stream=stream, model=model)

    def tool_calls(self, body: bytes) -> list[ToolCall]:
        return [loc.call for loc in _response_calls(load_json(body, "response"))]

    def rewrite(self, body: bytes, rulings: Mapping[str, Ruling]) -> bytes:
        data = load_json(body, "response")
        located = _response_calls(data)
        verdicts = [(loc, shape.ruling_for(rulings, loc.call)) for loc in located]
        if all(r.allow for _, r in verdicts):
            return body  # nothing blocked: the upstream's bytes, untouched
        assert isinstance(data, dict)
        choices: list[dict[str, Any]] = data["choices"]
        for c, choice in enumerate(choices):
            mine = [(loc, r) for loc, r in verdicts if loc.choice == c]
            if not any(not r.allow for _, r in mine):
                continue
            message = choice["message"]
            kept = [message["tool_calls"][loc.position] for loc, r in mine if r.allow]
            for loc, r in mine:
                if not r.allow:
                    message["content"] = _append_text(message.get("content"), blocked_text(loc.call.tool, r.message))
            if kept:
                message["tool_calls"] = kept
            else:
                message.pop("tool_calls", None)
                if choice.get("finish_reason") == "tool_calls":
                    choice["finish_reason"] = "stop"
        return dump_json(data).encode("utf-8")

    def stream_filter(self, decide: Decide) -> EventStreamFilter:
        return OpenAIChatStream(decide, max_event_bytes=self.max_event_bytes, max_held_bytes=self.max_held_bytes)


@dataclasses.dataclass
class _StreamCall:
    choice: int  # the choice's `index`
    index: int  # the call's `index` on the wire
    call_id: str
    name: str
    needs_separator: bool  # the choice already has text: the blocked text starts a new paragraph
    arguments: list[str] = dataclasses.field(default_factory=list)
    allow: bool | None = None  # None until decided
    message: str = ""
    new_index: int = 0  # position among the choice's allowed calls (the wire index after blocked ones leave)


@dataclasses.dataclass
class _Held:
    event: SSEEvent
    data: dict[str, Any] | None = None
    # per entry of `choices`: for each tool_calls fragment, (choice index, call index, first fragment of the call)
    fragments: list[list[tuple[int, int, bool]]] = dataclasses.field(default_factory=list)


class OpenAIChatStream(EventFilter):
    """Filters one streamed Chat Completions response (see `StreamFilter`)."""

    def __init__(self, decide: Decide, *, max_event_bytes: int, max_held_bytes: int) -> None:
        super().__init__(max_event_bytes)
        self._decide = decide
        self._max_held = max_held_bytes
        self._held: list[_Held] = []
        self._held_bytes = 0
        self._open: dict[int, _StreamCall] = {}  # choice index -> its call being received
        self._calls: dict[tuple[int, int], _StreamCall] = {}  # every call seen, by (choice, index)
        self._allowed: dict[int, int] = {}  # choice -> allowed calls so far
        self._blocked: dict[int, int] = {}  # choice -> blocked calls so far
        self._has_text: set[int] = set()  # choices that have content so far
        self._finished: set[int] = set()
        self._done = False

    def end(self) -> bytes:
        if self._open:
            raise WireError(
                "stream ended in the middle of a tool call",
                hint="the upstream closed the stream before finishing the call; it is not forwarded",
            )
        return self._flush()

    # -- events -----------------------------------------------------------------------------------------------

    def event(self, event: SSEEvent) -> bytes:
        if event.data is None:  # keep-alive comment or blank line: harmless, kept in order
            return self._hold_or_pass(_Held(event))
        if self._done:
            raise shape.fail("stream", "event after [DONE]")
        if event.event is not None:
            raise shape.fail("stream", f"unexpected event name {event.event[:40]!r} in a chat completions stream")
        if event.data.startswith("[DONE]"):
            if event.data != "[DONE]":
                raise shape.fail("stream", "malformed [DONE] marker")
            for choice in list(self._open):
                self._complete(choice)
            self._done = True
            return self._flush() + event.raw
        data = shape.obj(event_json(event, "stream chunk"), "stream chunk")
        held = _Held(event, data)
        if "choices" not in data and data.get("error") is not None:
            return self._hold_or_pass(held)  # an error event: the SDK raises on it; nothing to inspect
        if data.get("object", "chat.completion.chunk") != "chat.completion.chunk":
            raise shape.fail(
                "stream chunk.object", f"expected 'chat.completion.chunk', got {str(data['object'])[:40]!r}"
            )
        touched = False
        for n, raw_choice in enumerate(shape.arr(data.get("choices"), "stream chunk.choices")):
            frags = self._choice(shape.obj(raw_choice, f"stream chunk.choices[{n}]"), f"stream chunk.choices[{n}]")
            held.fragments.append(frags)
            touched = touched or bool(frags)
        if touched or self._open or self._held:
            self._hold(held)
            return b"" if self._open else self._flush()
        return self._render(held)  # may still rewrite finish_reason

    def _choice(self, choice: dict[str, Any], where: str) -> list[tuple[int, int, bool]]:
        index = shape.integer(choice.get("index"), f"{where}.index")
        delta = shape.obj(choice.get("delta", {}), f"{where}.delta")  # some servers omit an empty delta
        finish = shape.opt_string(choice.get("finish_reason"), f"{where}.finish_reason")
        if delta.get("function_call") is not None:
            raise shape.fail(f"{where}.delta.function_call", _LEGACY)
        content = shape.opt_string(delta.get("content"), f"{where}.delta.content")
        fragments = shape.opt_arr(delta.get("tool_calls"), f"{where}.delta.tool_calls")
        if index in self._finished and (content or fragments or finish is not None):
            raise shape.fail(where, f"choice {index} continues after its finish_reason")
        if content:
            self._has_text.add(index)
        marks: list[tuple[int, int, bool]] = []
        for f, raw in enumerate(fragments):
            marks.append(
                self._fragment(index, shape.obj(raw, f"{where}.delta.tool_calls[{f}]"), f"{where}.tool_calls[{f}]")
            )
        if finish is not None:
            self._complete(index)
            self._finished.add(index)
        return marks

    def _fragment(self, choice: int, frag: dict[str, Any], where: str) -> tuple[int, int, bool]:
        index = shape.integer(frag.get("index"), f"{where}.index")
        kind = shape.opt_string(frag.get("type"), f"{where}.type")
        if kind not in (None, "function"):
            raise shape.fail(f"{where}.type", f"unsupported streamed tool call type {kind[:40]!r}")
        fn = shape.obj(frag.get("function", {}), f"{where}.function")
        name = shape.opt_string(fn.get("name"), f"{where}.function.name")
        piece = shape.opt_string(fn.get("arguments"), f"{where}.function.arguments")
        call_id = shape.opt_string(frag.get("id"), f"{where}.id")
        current = self._open.get(choice)
        first = current is None or current.index != index
        if first:
            if (choice, index) in self._calls:
                raise shape.fail(where, f"fragment for tool call {index} after that call was complete")
            self._complete(choice)
            if not call_id:
                raise shape.fail(f"{where}.id", "the first fragment of a tool call must carry its id")
            if not name:
                raise shape.fail(f"{where}.function.name", "the first fragment of a tool call must carry its name")
            current = _StreamCall(choice, index, call_id, name, needs_separator=choice in self._has_text)
            self._open[choice] = current
            self._calls[(choice, index)] = current
        else:
            assert current is not None
            # SDK accumulators concatenate repeated strings: a second name would name a different tool than we judged
            if name:
                raise shape.fail(f"{where}.function.name", "a tool call's name may only appear in its first fragment")
            if call_id and call_id != current.call_id:
                raise shape.fail(f"{where}.id", "a tool call's id changed between fragments")
        if piece:
            current.arguments.append(piece)
        return (choice, index, first)

    def _complete(self, choice: int) -> None:
        call = self._open.pop(choice, None)
        if call is None:
            return
        text = "".join(call.arguments)
        where = f"stream tool call {call.call_id[:40]!r} arguments"
        ruling = shape.decide_call(
            self._decide, shape.tool_call(NAME, call.call_id, call.name, _arguments(text, where), len(text.encode()))
        )
        call.allow = ruling.allow
        call.message = ruling.message
        if ruling.allow:
            call.new_index = self._allowed.get(choice, 0)
            self._allowed[choice] = call.new_index + 1
        else:
            self._blocked[choice] = self._blocked.get(choice, 0) + 1
            self._has_text.add(choice)

    # -- output -----------------------------------------------------------------------------------------------

    def _hold(self, held: _Held) -> None:
        self._held.append(held)
        self._held_bytes += len(held.event.raw)
        if self._held_bytes > self._max_held:
            raise WireError(
                f"tool call larger than {self._max_held} bytes while held for a decision",
                hint="the upstream streamed a tool call too large to inspect",
            )

    def _hold_or_pass(self, held: _Held) -> bytes:
        if self._open or self._held:
            self._hold(held)
            return b""
        return held.event.raw

    def _flush(self) -> bytes:
        out = b"".join(self._render(h) for h in self._held)
        self._held = []
        self._held_bytes = 0
        return out

    def _render(self, held: _Held) -> bytes:
        if held.data is None or not self._changes(held):
            return held.event.raw
        data = copy.deepcopy(held.data)
        for entry, marks in zip(data["choices"], held.fragments, strict=True):
            choice_index: int = entry["index"]
            delta: dict[str, Any] = entry.get("delta", {})
            kept: list[dict[str, Any]] = []
            for frag, (choice, index, first) in zip(delta.get("tool_calls") or [], marks, strict=True):
                call = self._calls[(choice, index)]
                if call.allow:
                    if call.new_index != index:
                        frag["index"] = call.new_index
                    kept.append(frag)
                elif first:
                    text = blocked_text(call.name, call.message)
                    delta["content"] = (delta.get("content") or "") + ("\n\n" + text if call.needs_separator else text)
            if marks:
                if kept:
                    delta["tool_calls"] = kept
                else:
                    del delta["tool_calls"]
            if entry.get("finish_reason") == "tool_calls" and self._no_calls_left(choice_index):
                entry["finish_reason"] = "stop"
        return format_event(dump_json(data), id=held.event.id)

    def _no_calls_left(self, choice: int) -> bool:
        return self._blocked.get(choice, 0) > 0 and self._allowed.get(choice, 0) == 0

    def _changes(self, held: _Held) -> bool:
        assert held.data is not None
        for entry, marks in zip(held.data.get("choices") or [], held.fragments, strict=False):
            for choice, index, _ in marks:
                call = self._calls[(choice, index)]
                if not call.allow or call.new_index != index:
                    return True
            if entry.get("finish_reason") == "tool_calls" and self._no_calls_left(entry["index"]):
                return True
        return False
