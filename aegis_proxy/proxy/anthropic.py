"""Anthropic Messages (`POST /v1/messages`): requests, responses and their SSE streams.

Calls are `tool_use` content blocks (`input` is an object). Streamed, a block opens with `content_block_start`, its
input arrives as `input_json_delta` pieces of one JSON text, and `content_block_stop` completes it. A blocked call's
block is replaced, at the same index, by a text block carrying the ruling's message, so block indexes stay contiguous;
when no `tool_use` remains, `stop_reason` `tool_use` becomes `end_turn`.

Blocks that Anthropic's servers executed themselves (`server_tool_use`, `*_tool_result`) are passed: they already ran
upstream and the client never executes them. Any block, delta or event type not listed here is refused (WireError).
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

NAME = "anthropic"

# Response blocks the server produced or executed itself: passed as they are.
_SERVER_BLOCKS = frozenset(
    {
        "server_tool_use",
        "web_search_tool_result",
        "web_fetch_tool_result",
        "code_execution_tool_result",
        "bash_code_execution_tool_result",
        "text_editor_code_execution_tool_result",
        "tool_search_tool_result",
        "container_upload",
        "mcp_tool_use",
        "mcp_tool_result",
    }
)
_RESPONSE_BLOCKS = frozenset({"text", "thinking", "redacted_thinking", "tool_use"}) | _SERVER_BLOCKS
# Which delta types each streamed block type may receive.
_DELTAS = {
    "text": frozenset({"text_delta", "citations_delta"}),
    "thinking": frozenset({"thinking_delta", "signature_delta"}),
    "tool_use": frozenset({"input_json_delta"}),
    "server_tool_use": frozenset({"input_json_delta"}),
    "mcp_tool_use": frozenset({"input_json_delta"}),
}
# Request blocks without text we read (images, the assistant's own earlier calls and thinking).
_SILENT_REQUEST_BLOCKS = frozenset(
    {"image", "tool_use", "server_tool_use", "mcp_tool_use", "thinking", "redacted_thinking"}
)


def _text_of(content: object, where: str) -> str:
    """Text of a tool result / document / search result `content`: a string or text blocks (images skipped)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts: list[str] = []
    for i, raw in enumerate(shape.arr(content, where)):
        block = shape.obj(raw, f"{where}[{i}]")
        kind = shape.string(block.get("type"), f"{where}[{i}].type")
        if kind == "text":
            texts.append(shape.string(block.get("text"), f"{where}[{i}].text"))
        elif kind in ("document", "search_result"):
            texts.append(_document_text(block, f"{where}[{i}]"))
        elif kind != "image":
            raise shape.fail(f"{where}[{i}].type", f"unknown content block type {kind[:40]!r}")
    return "\n".join(texts)


def _document_text(block: dict[str, Any], where: str) -> str:
    if block.get("type") == "search_result":
        return _text_of(block.get("content"), f"{where}.content")
    source = shape.obj(block.get("source"), f"{where}.source")
    kind = shape.string(source.get("type"), f"{where}.source.type")
    if kind == "text":
        return shape.string(source.get("data"), f"{where}.source.data")
    if kind == "content":
        return _text_of(source.get("content"), f"{where}.source.content")
    return ""  # base64 PDF, URL or file id: nothing we can read as text here


def _request_messages(role: Role, content: object, where: str) -> list[Message]:
    if isinstance(content, str):
        return [shape.message(role=role, content=content)]
    out: list[Message] = []
    for i, raw in enumerate(shape.arr(content, where)):
        bw = f"{where}[{i}]"
        block = shape.obj(raw, bw)
        kind = shape.string(block.get("type"), f"{bw}.type")
        if kind == "text":
            out.append(shape.message(role=role, content=shape.string(block.get("text"), f"{bw}.text")))
        elif kind == "tool_result":
            shape.string(block.get("tool_use_id"), f"{bw}.tool_use_id", nonempty=True)
            out.append(shape.message(role=Role.TOOL, content=_text_of(block.get("content"), f"{bw}.content")))
        elif kind in ("document", "search_result"):
            out.append(shape.message(role=Role.DOCUMENT, content=_document_text(block, bw)))
        elif kind in _SERVER_BLOCKS - {"server_tool_use", "mcp_tool_use"}:
            # results of server-run tools (web pages, program output): untrusted text the model read
            out.append(shape.message(role=Role.TOOL, content=dump_json(block.get("content"))))
        elif kind not in _SILENT_REQUEST_BLOCKS:
            raise shape.fail(f"{bw}.type", f"unknown content block type {kind[:40]!r}")
    return out


def _tool_use(block: dict[str, Any], where: str) -> tuple[str, str, dict[str, Any]]:
    call_id = shape.string(block.get("id"), f"{where}.id", nonempty=True)
    name = shape.string(block.get("name"), f"{where}.name", nonempty=True)
    return call_id, name, shape.arguments_object(block.get("input"), f"{where}.input")


def _response_calls(data: object) -> list[tuple[int, ToolCall]]:
    """(position in `content`, call) for every tool_use block; the body's shape is checked on the way."""
    body = shape.obj(data, "response")
    if body.get("type") == "error":
        return []  # an error body carries no call; the SDK raises on it
    if body.get("type") != "message":
        raise shape.fail("response.type", f"expected 'message', got {str(body.get('type'))[:40]!r}")
    if body.get("role") != "assistant":
        raise shape.fail("response.role", "expected 'assistant'")
    shape.opt_string(body.get("stop_reason"), "response.stop_reason")
    calls: list[tuple[int, ToolCall]] = []
    seen: set[str] = set()
    for i, raw in enumerate(shape.arr(body.get("content"), "response.content")):
        where = f"response.content[{i}]"
        block = shape.obj(raw, where)
        kind = shape.string(block.get("type"), f"{where}.type")
        if kind not in _RESPONSE_BLOCKS:
            raise shape.fail(f"{where}.type", f"unknown content block type {kind[:40]!r}")
        if kind == "text":
            shape.string(block.get("text"), f"{where}.text")
        elif kind == "tool_use":
            call_id, name, arguments = _tool_use(block, where)
            if call_id in seen:
                raise shape.fail(f"{where}.id", f"duplicate tool_use id {call_id[:40]!r}")
            seen.add(call_id)
            calls.append((i, shape.tool_call(NAME, call_id, name, arguments, len(dump_json(arguments).encode()))))
    return calls


class Anthropic(shape.Limits):
    """The Anthropic Messages protocol (an `LLMProtocol`)."""

    name = NAME

    def matches(self, path: str) -> bool:
        return shape.path_only(path).endswith("/v1/messages")

    def parse_request(self, body: bytes) -> RequestView:
        data = shape.obj(load_json(body, "request"), "request")
        messages: list[Message] = []
        system = data.get("system")
        if system is not None:
            text = system if isinstance(system, str) else _text_of(system, "request.system")
            messages.append(shape.message(role=Role.SYSTEM, content=text))
        for i, raw in enumerate(shape.arr(data.get("messages"), "request.messages")):
            where = f"request.messages[{i}]"
            msg = shape.obj(raw, where)
            role_name = shape.string(msg.get("role"), f"{where}.role")
            if role_name not in ("user", "assistant"):
                raise shape.fail(f"{where}.role", f"unknown role {role_name[:40]!r}")
            role = Role.USER if role_name == "user" else Role.ASSISTANT
            messages.extend(_request_messages(role, msg.get("content"), f"{where}.content"))
        stream = shape.opt_bool(data.get("stream"), "request.stream")
        return RequestView(
            messages=tuple(messages), stream=stream, model=shape.opt_string(data.get("model"), "request.model")
        )

    def tool_calls(self, body: bytes) -> list[ToolCall]:
        return [call for _, call in _response_calls(load_json(body, "response"))]

    def rewrite(self, body: bytes, rulings: Mapping[str, Ruling]) -> bytes:
        data = load_json(body, "response")
        verdicts = [(i, call, shape.ruling_for(rulings, call)) for i, call in _response_calls(data)]
        if all(r.allow for _, _, r in verdicts):
            return body
        assert isinstance(data, dict)
        for i, call, ruling in verdicts:
            if not ruling.allow:
                data["content"][i] = {"type": "text", "text": blocked_text(call.tool, ruling.message)}
        if data.get("stop_reason") == "tool_use" and not any(r.allow for _, _, r in verdicts):
            data["stop_reason"] = "end_turn"
        return dump_json(data).encode("utf-8")

    def stream_filter(self, decide: Decide) -> EventStreamFilter:
        return AnthropicStream(decide, max_event_bytes=self.max_event_bytes, max_held_bytes=self.max_held_bytes)


@dataclasses.dataclass
class _Block:
    kind: str
    open: bool = True
    call_id: str = ""
    name: str = ""
    start_input: dict[str, Any] = dataclasses.field(default_factory=dict)
    pieces: list[str] = dataclasses.field(default_factory=list)


class AnthropicStream(EventFilter):
    """Filters one streamed Messages response (see `StreamFilter`)."""

    def __init__(self, decide: Decide, *, max_event_bytes: int, max_held_bytes: int) -> None:
        super().__init__(max_event_bytes)
        self._decide = decide
        self._max_held = max_held_bytes
        self._held: list[SSEEvent] = []
        self._held_bytes = 0
        self._blocks: list[_Block] = []
        self._call: _Block | None = None  # the tool_use block being received (held)
        self._allowed = 0
        self._blocked = 0
        self._started = False
        self._stopped = False

    def end(self) -> bytes:
        if self._call is not None:
            raise WireError(
                "stream ended in the middle of a tool_use block",
                hint="the upstream closed the stream before finishing the call; it is not forwarded",
            )
        return b""

    def event(self, event: SSEEvent) -> bytes:
        if event.data is None:
            return self._pass(event)
        if self._stopped:
            raise shape.fail("stream", "event after message_stop")
        data = shape.obj(event_json(event, "stream event"), "stream event")
        kind = shape.string(data.get("type"), "stream event.type")
        if event.event != kind:
            raise shape.fail("stream", f"event name {str(event.event)[:40]!r} does not match its type {kind[:40]!r}")
        if kind in ("ping", "error"):
            return self._pass(event)
        if kind == "message_start":
            return self._message_start(event, data)
        if not self._started:
            raise shape.fail("stream", f"{kind} before message_start")
        if kind == "content_block_start":
            return self._block_start(event, data)
        if kind == "content_block_delta":
            return self._block_delta(event, data)
        if kind == "content_block_stop":
            return self._block_stop(event, data)
        if kind == "message_delta":
            return self._message_delta(event, data)
        if kind == "message_stop":
            if any(b.open for b in self._blocks):
                raise shape.fail("stream", "message_stop while a content block is open")
            self._stopped = True
            return event.raw
        raise shape.fail("stream event.type", f"unknown stream event type {kind[:40]!r}")

    def _message_start(self, event: SSEEvent, data: dict[str, Any]) -> bytes:
        if self._started:
            raise shape.fail("stream", "second message_start")
        message = shape.obj(data.get("message"), "message_start.message")
        if shape.arr(message.get("content"), "message_start.message.content"):
            raise shape.fail("message_start.message.content", "content must start empty in a stream")
        self._started = True
        return event.raw

    def _index(self, data: dict[str, Any], where: str) -> _Block:
        index = shape.integer(data.get("index"), f"{where}.index")
        if index >= len(self._blocks) or not self._blocks[index].open:
            raise shape.fail(f"{where}.index", f"content block {index} is not open")
        return self._blocks[index]

    def _block_start(self, event: SSEEvent, data: dict[str, Any]) -> bytes:
        index = shape.integer(data.get("index"), "content_block_start.index")
        if index != len(self._blocks):
            raise shape.fail("content_block_start.index", f"expected block {len(self._blocks)}, got {index}")
        if any(b.open for b in self._blocks):
            raise shape.fail("content_block_start", "a block starts while another is open")
        block = shape.obj(data.get("content_block"), "content_block_start.content_block")
        kind = shape.string(block.get("type"), "content_block_start.content_block.type")
        if kind not in _RESPONSE_BLOCKS:
            raise shape.fail("content_block_start.content_block.type", f"unknown block type {kind[:40]!r}")
        entry = _Block(kind)
        self._blocks.append(entry)
        if kind != "tool_use":
            return self._pass(event)
        entry.call_id, entry.name, entry.start_input = _tool_use(block, "content_block_start.content_block")
        self._call = entry
        self._hold(event)
        return b""

    def _block_delta(self, event: SSEEvent, data: dict[str, Any]) -> bytes:
        block = self._index(data, "content_block_delta")
        delta = shape.obj(data.get("delta"), "content_block_delta.delta")
        kind = shape.string(delta.get("type"), "content_block_delta.delta.type")
        if kind not in _DELTAS.get(block.kind, frozenset()):
            raise shape.fail("content_block_delta.delta.type", f"{kind[:40]!r} does not apply to a {block.kind} block")
        if kind == "input_json_delta":
            piece = shape.string(delta.get("partial_json"), "content_block_delta.delta.partial_json")
            if block is self._call:
                block.pieces.append(piece)
        elif kind == "text_delta":
            shape.string(delta.get("text"), "content_block_delta.delta.text")
        return self._pass(event)

    def _block_stop(self, event: SSEEvent, data: dict[str, Any]) -> bytes:
        block = self._index(data, "content_block_stop")
        block.open = False
        if block is not self._call:
            return self._pass(event)
        self._call = None
        self._hold(event)
        text = "".join(block.pieces)
        # as the SDK does: the streamed JSON replaces the start's `input` once any of it arrived
        arguments = (
            shape.arguments_object(load_json(text, "tool_use input"), "tool_use input") if text else block.start_input
        )
        size = len(text.encode()) if text else len(dump_json(arguments).encode())
        ruling = shape.decide_call(self._decide, shape.tool_call(NAME, block.call_id, block.name, arguments, size))
        held, self._held, self._held_bytes = self._held, [], 0
        if ruling.allow:
            self._allowed += 1
            return b"".join(e.raw for e in held)
        self._blocked += 1
        index = len(self._blocks) - 1
        text_block = blocked_text(block.name, ruling.message)
        replacement = [
            {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}},
            {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text_block}},
            {"type": "content_block_stop", "index": index},
        ]
        # keep-alives (and errors) that arrived while the call was held still go out, after the replacement
        others = [e.raw for e in held if not (e.event or "").startswith("content_block_")]
        return b"".join(format_event(dump_json(r), event=r["type"]) for r in replacement) + b"".join(others)

    def _message_delta(self, event: SSEEvent, data: dict[str, Any]) -> bytes:
        if any(b.open for b in self._blocks):
            raise shape.fail("stream", "message_delta while a content block is open")
        delta = shape.obj(data.get("delta"), "message_delta.delta")
        stop = shape.opt_string(delta.get("stop_reason"), "message_delta.delta.stop_reason")
        if stop == "tool_use" and self._blocked and not self._allowed:
            changed = copy.deepcopy(data)
            changed["delta"]["stop_reason"] = "end_turn"
            return format_event(dump_json(changed), event=event.event, id=event.id)
        return event.raw

    def _pass(self, event: SSEEvent) -> bytes:
        if self._call is None:
            return event.raw
        self._hold(event)
        return b""

    def _hold(self, event: SSEEvent) -> None:
        self._held.append(event)
        self._held_bytes += len(event.raw)
        if self._held_bytes > self._max_held:
            raise WireError(
                f"tool call larger than {self._max_held} bytes while held for a decision",
                hint="the upstream streamed a tool call too large to inspect",
            )
