"""OpenAI Responses API (`POST /v1/responses`): requests, responses and their SSE streams.

Calls are `output` items of type `function_call` (`call_id`, `name`, `arguments` as a JSON string) or
`custom_tool_call` (`input` free text, read as `{"input": ...}`). A blocked call's item is replaced at the same
`output_index` by an assistant `message` item carrying the ruling's message, so output indexes never move.

Streamed, a call is held from its `response.output_item.added` to its `response.output_item.done`; its argument
deltas and `.done` event must agree with the final item. A blocked call's events are replaced by the six events of a
message item; `sequence_number`s of everything after are renumbered so they stay consecutive. The response embedded in
`response.completed` (and `.incomplete`/`.failed`/`.created`/...) is rewritten the same way and must name exactly
the calls that were streamed and decided.

Items the client would execute but that we do not read (`computer_call`, `local_shell_call`, `shell_call`,
`apply_patch_call`) and unknown item or event types are refused (WireError).
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

NAME = "openai-responses"

_CALLS = frozenset({"function_call", "custom_tool_call"})
# Items that OpenAI produced or ran itself, or that only ask the client something: passed as they are.
_PASSIVE_ITEMS = frozenset(
    {
        "message",
        "reasoning",
        "web_search_call",
        "file_search_call",
        "code_interpreter_call",
        "image_generation_call",
        "mcp_call",
        "mcp_list_tools",
        "mcp_approval_request",
    }
)
_UNSUPPORTED_CALLS = frozenset({"computer_call", "local_shell_call", "shell_call", "apply_patch_call"})
_REQUEST_ROLES = {"user": Role.USER, "system": Role.SYSTEM, "developer": Role.SYSTEM, "assistant": Role.ASSISTANT}
_TEXT_PARTS = {"input_text": "text", "output_text": "text", "refusal": "refusal", "summary_text": "text"}
_SILENT_PARTS = frozenset({"input_image", "input_file", "input_audio"})
# Request items that carry nothing we read (the assistant's own earlier calls, reasoning, references).
_SILENT_REQUEST_ITEMS = (_CALLS | _PASSIVE_ITEMS | _UNSUPPORTED_CALLS | {"item_reference"}) - {"message"}
# Streaming events that cannot carry a client tool call; any `output_index` they name must be a passive item.
_PASSIVE_EVENTS = frozenset(
    {
        "response.content_part.added",
        "response.content_part.done",
        "response.output_text.delta",
        "response.output_text.done",
        "response.output_text.annotation.added",
        "response.refusal.delta",
        "response.refusal.done",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_part.done",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_text.delta",
        "response.reasoning_text.done",
        "response.web_search_call.in_progress",
        "response.web_search_call.searching",
        "response.web_search_call.completed",
        "response.file_search_call.in_progress",
        "response.file_search_call.searching",
        "response.file_search_call.completed",
        "response.code_interpreter_call.in_progress",
        "response.code_interpreter_call.interpreting",
        "response.code_interpreter_call.completed",
        "response.code_interpreter_call_code.delta",
        "response.code_interpreter_call_code.done",
        "response.image_generation_call.in_progress",
        "response.image_generation_call.generating",
        "response.image_generation_call.partial_image",
        "response.image_generation_call.completed",
        "response.mcp_call.in_progress",
        "response.mcp_call.completed",
        "response.mcp_call.failed",
        "response.mcp_call_arguments.delta",
        "response.mcp_call_arguments.done",
        "response.mcp_list_tools.in_progress",
        "response.mcp_list_tools.completed",
        "response.mcp_list_tools.failed",
        "response.audio.delta",
        "response.audio.done",
        "response.audio.transcript.delta",
        "response.audio.transcript.done",
        "error",
    }
)
_RESPONSE_EVENTS = frozenset(
    {
        "response.created",
        "response.in_progress",
        "response.queued",
        "response.completed",
        "response.incomplete",
        "response.failed",
    }
)
_FINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


def _content_text(content: object, where: str) -> str:
    return shape.content_text(content, where, _TEXT_PARTS, _SILENT_PARTS)


def _output_text(output: object, where: str) -> str:
    """A tool output: a string, content parts, or an object (a screenshot) that carries no text we read."""
    if isinstance(output, dict):
        return ""
    return _content_text(output, where)


def _request_item(raw: object, where: str) -> Message | None:
    item = shape.obj(raw, where)
    kind = shape.string(item.get("type", "message"), f"{where}.type")
    if kind == "message":
        role_name = shape.string(item.get("role"), f"{where}.role")
        role = _REQUEST_ROLES.get(role_name)
        if role is None:
            raise shape.fail(f"{where}.role", f"unknown role {role_name[:40]!r}")
        return shape.message(role=role, content=_content_text(item.get("content"), f"{where}.content"))
    if kind.endswith("_output"):  # function_call_output, custom_tool_call_output, computer_call_output, ...
        shape.string(item.get("call_id", item.get("id")), f"{where}.call_id", nonempty=True)
        return shape.message(role=Role.TOOL, content=_output_text(item.get("output"), f"{where}.output"))
    if kind == "mcp_approval_response":
        return None
    if kind not in _SILENT_REQUEST_ITEMS:
        raise shape.fail(f"{where}.type", f"unknown input item type {kind[:40]!r}")
    return None


def _item_call(item: dict[str, Any], where: str) -> ToolCall | None:
    """The call an output item carries (None for passive items); refuses items we cannot read."""
    kind = shape.string(item.get("type"), f"{where}.type")
    if kind in _PASSIVE_ITEMS:
        return None
    if kind in _UNSUPPORTED_CALLS:
        raise shape.fail(f"{where}.type", f"{kind} items are not supported by aegis-proxy; use function tools")
    if kind not in _CALLS:
        raise shape.fail(f"{where}.type", f"unknown output item type {kind[:40]!r}")
    shape.opt_string(item.get("id"), f"{where}.id")
    call_id = shape.string(item.get("call_id"), f"{where}.call_id", nonempty=True)
    name = shape.string(item.get("name"), f"{where}.name", nonempty=True)
    if kind == "function_call":
        text = shape.string(item.get("arguments"), f"{where}.arguments")
        arguments = shape.arguments_object(load_json(text, f"{where}.arguments"), f"{where}.arguments")
        return shape.tool_call(NAME, call_id, name, arguments, len(text.encode()))
    text = shape.string(item.get("input"), f"{where}.input")
    return shape.tool_call(NAME, call_id, name, {"input": text}, len(text.encode()))


def _output_calls(response: object, where: str) -> list[tuple[int, ToolCall]]:
    body = shape.obj(response, where)
    if body.get("object", "response") != "response":
        raise shape.fail(f"{where}.object", f"expected 'response', got {str(body.get('object'))[:40]!r}")
    calls: list[tuple[int, ToolCall]] = []
    seen: set[str] = set()
    for i, raw in enumerate(shape.arr(body.get("output"), f"{where}.output")):
        call = _item_call(shape.obj(raw, f"{where}.output[{i}]"), f"{where}.output[{i}]")
        if call is not None:
            if call.id in seen:
                raise shape.fail(f"{where}.output[{i}].call_id", f"duplicate call_id {call.id[:40]!r}")
            seen.add(call.id)
            calls.append((i, call))
    return calls


def _message_item(item_id: str, text: str, *, done: bool) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "status": "completed" if done else "in_progress",
        "role": "assistant",
        "content": [_text_part(text)] if done else [],
    }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _replacement_id(item: Mapping[str, Any]) -> str:
    """The id of the message item that stands in for a blocked call (stable across the stream and the final body)."""
    return "msg_aegis_" + str(item.get("id") or item.get("call_id"))


class OpenAIResponses(shape.Limits):
    """The OpenAI Responses protocol (an `LLMProtocol`)."""

    name = NAME

    def matches(self, path: str) -> bool:
        return shape.path_only(path).endswith("/v1/responses")

    def parse_request(self, body: bytes) -> RequestView:
        data = shape.obj(load_json(body, "request"), "request")
        messages: list[Message] = []
        instructions = shape.opt_string(data.get("instructions"), "request.instructions")
        if instructions:
            messages.append(shape.message(role=Role.SYSTEM, content=instructions))
        given = data.get("input")
        if isinstance(given, str):
            messages.append(shape.message(role=Role.USER, content=given))
        else:
            for i, raw in enumerate(shape.opt_arr(given, "request.input")):
                message = _request_item(raw, f"request.input[{i}]")
                if message is not None:
                    messages.append(message)
        return RequestView(
            messages=tuple(messages),
            stream=shape.opt_bool(data.get("stream"), "request.stream"),
            model=shape.opt_string(data.get("model"), "request.model"),
        )

    def tool_calls(self, body: bytes) -> list[ToolCall]:
        return [call for _, call in _output_calls(load_json(body, "response"), "response")]

    def rewrite(self, body: bytes, rulings: Mapping[str, Ruling]) -> bytes:
        data = load_json(body, "response")
        verdicts = [(i, call, shape.ruling_for(rulings, call)) for i, call in _output_calls(data, "response")]
        if all(r.allow for _, _, r in verdicts):
            return body
        assert isinstance(data, dict)
        for i, call, ruling in verdicts:
            if not ruling.allow:
                item = data["output"][i]
                data["output"][i] = _message_item(
                    _replacement_id(item), blocked_text(call.tool, ruling.message), done=True
                )
        return dump_json(data).encode("utf-8")

    def stream_filter(self, decide: Decide) -> EventStreamFilter:
        return OpenAIResponsesStream(decide, max_event_bytes=self.max_event_bytes, max_held_bytes=self.max_held_bytes)


@dataclasses.dataclass
class _Item:
    kind: str
    item_id: str | None
    open: bool = True
    call_id: str = ""
    name: str = ""
    pieces: list[str] = dataclasses.field(default_factory=list)
    done_text: str | None = None  # from `.function_call_arguments.done` / `.custom_tool_call_input.done`
    call: ToolCall | None = None
    ruling: Ruling | None = None
    text: str = ""  # the blocked text that replaces the call


class OpenAIResponsesStream(EventFilter):
    """Filters one streamed Responses answer (see `StreamFilter`)."""

    def __init__(self, decide: Decide, *, max_event_bytes: int, max_held_bytes: int) -> None:
        super().__init__(max_event_bytes)
        self._decide = decide
        self._max_held = max_held_bytes
        self._held: list[tuple[SSEEvent, dict[str, Any] | None]] = []
        self._held_bytes = 0
        self._items: list[_Item] = []
        self._open_calls: set[int] = set()
        self._by_call_id: dict[str, _Item] = {}
        self._last_seq = -1  # the last sequence number received
        self._next_seq: int | None = None  # the next sequence number to send
        self._finished = False

    def end(self) -> bytes:
        if self._open_calls:
            raise WireError(
                "stream ended in the middle of a tool call",
                hint="the upstream closed the stream before finishing the call; it is not forwarded",
            )
        return b""

    # -- reading --------------------------------------------------------------------------------------------------

    def event(self, event: SSEEvent) -> bytes:
        if event.data is None:
            return self._out(event, None)
        if self._finished:
            raise shape.fail("stream", "event after the response finished")
        data = shape.obj(event_json(event, "stream event"), "stream event")
        kind = shape.string(data.get("type"), "stream event.type")
        if event.event is not None and event.event != kind:
            raise shape.fail("stream", f"event name {event.event[:40]!r} does not match its type {kind[:40]!r}")
        seq = shape.integer(data.get("sequence_number"), f"{kind}.sequence_number")
        if seq <= self._last_seq:
            raise shape.fail(f"{kind}.sequence_number", f"{seq} does not follow {self._last_seq}")
        self._last_seq = seq
        if self._next_seq is None:
            self._next_seq = seq
        if kind == "response.output_item.added":
            return self._item_added(event, data)
        if kind == "response.output_item.done":
            return self._item_done(event, data)
        if kind in ("response.function_call_arguments.delta", "response.custom_tool_call_input.delta"):
            item = self._call_item(data, kind, "function_call" if "function" in kind else "custom_tool_call")
            item.pieces.append(shape.string(data.get("delta"), f"{kind}.delta"))
            return self._out(event, data)
        if kind in ("response.function_call_arguments.done", "response.custom_tool_call_input.done"):
            item = self._call_item(data, kind, "function_call" if "function" in kind else "custom_tool_call")
            if item.done_text is not None:
                raise shape.fail(kind, "arguments finished twice")
            item.done_text = shape.string(data.get("arguments" if "function" in kind else "input"), f"{kind}.text")
            return self._out(event, data)
        if kind in _RESPONSE_EVENTS:
            if kind in _FINAL_EVENTS:
                if self._open_calls:
                    raise shape.fail(kind, "the response finished while a tool call was open")
                self._finished = True
            self._check_embedded(shape.obj(data.get("response"), f"{kind}.response"), kind)
            return self._out(event, data)
        if kind in _PASSIVE_EVENTS:
            if "output_index" in data:
                index = shape.integer(data.get("output_index"), f"{kind}.output_index")
                if index >= len(self._items) or self._items[index].kind in _CALLS:
                    raise shape.fail(f"{kind}.output_index", f"{index} is not a text or server item")
            return self._out(event, data)
        raise shape.fail("stream event.type", f"unknown stream event type {kind[:40]!r}")

    def _item_added(self, event: SSEEvent, data: dict[str, Any]) -> bytes:
        index = shape.integer(data.get("output_index"), "response.output_item.added.output_index")
        if index != len(self._items):
            raise shape.fail("response.output_item.added.output_index", f"expected {len(self._items)}, got {index}")
        item = shape.obj(data.get("item"), "response.output_item.added.item")
        kind = shape.string(item.get("type"), "response.output_item.added.item.type")
        if kind in _UNSUPPORTED_CALLS:
            raise shape.fail("response.output_item.added.item.type", f"{kind} items are not supported by aegis-proxy")
        if kind not in _CALLS and kind not in _PASSIVE_ITEMS:
            raise shape.fail("response.output_item.added.item.type", f"unknown output item type {kind[:40]!r}")
        entry = _Item(kind, shape.opt_string(item.get("id"), "response.output_item.added.item.id"))
        self._items.append(entry)
        if kind in _CALLS:
            where = "response.output_item.added.item"
            entry.call_id = shape.string(item.get("call_id"), f"{where}.call_id", nonempty=True)
            entry.name = shape.string(item.get("name"), f"{where}.name", nonempty=True)
            # what the added item already holds is the start of the arguments (the SDK's snapshot starts there)
            start = shape.string(
                item.get("arguments" if kind == "function_call" else "input", ""), f"{where}.arguments"
            )
            if start:
                entry.pieces.append(start)
            if entry.call_id in self._by_call_id:
                raise shape.fail(f"{where}.call_id", f"duplicate call_id {entry.call_id[:40]!r}")
            self._by_call_id[entry.call_id] = entry
            self._open_calls.add(index)
        return self._out(event, data)

    def _call_item(self, data: dict[str, Any], kind: str, item_kind: str) -> _Item:
        index = shape.integer(data.get("output_index"), f"{kind}.output_index")
        if index >= len(self._items) or index not in self._open_calls or self._items[index].kind != item_kind:
            raise shape.fail(f"{kind}.output_index", f"{index} is not an open {item_kind} item")
        item = self._items[index]
        if data.get("item_id") is not None and item.item_id is not None and data.get("item_id") != item.item_id:
            raise shape.fail(f"{kind}.item_id", "does not match the item at that output_index")
        return item

    def _item_done(self, event: SSEEvent, data: dict[str, Any]) -> bytes:
        where = "response.output_item.done"
        index = shape.integer(data.get("output_index"), f"{where}.output_index")
        if index >= len(self._items) or not self._items[index].open:
            raise shape.fail(f"{where}.output_index", f"item {index} is not open")
        entry = self._items[index]
        item = shape.obj(data.get("item"), f"{where}.item")
        if item.get("type") != entry.kind or item.get("id") != entry.item_id:
            raise shape.fail(f"{where}.item", "does not match the item that was added at that output_index")
        entry.open = False
        if entry.kind not in _CALLS:
            return self._out(event, data)
        call = _item_call(item, f"{where}.item")
        assert call is not None
        if (call.id, call.tool) != (entry.call_id, entry.name):
            raise shape.fail(f"{where}.item", "call_id or name differs from the item that was added")
        final_text = item["arguments"] if entry.kind == "function_call" else item["input"]
        if entry.pieces and "".join(entry.pieces) != final_text:
            raise shape.fail(f"{where}.item", "the streamed arguments differ from the final item")
        if entry.done_text is not None and entry.done_text != final_text:
            raise shape.fail(f"{where}.item", "the arguments' .done event differs from the final item")
        entry.call = call
        entry.ruling = shape.decide_call(self._decide, call)
        if not entry.ruling.allow:
            entry.text = blocked_text(call.tool, entry.ruling.message)
        self._open_calls.discard(index)
        self._hold(event, data)
        return b"" if self._open_calls else self._flush()

    def _check_embedded(self, response: dict[str, Any], kind: str) -> None:
        """The embedded response must name exactly the calls streamed and decided (same name, same arguments)."""
        for i, call in _output_calls(response, f"{kind}.response"):
            entry = self._by_call_id.get(call.id)
            if entry is None or entry.call is None:
                raise shape.fail(f"{kind}.response.output[{i}]", f"call {call.id[:40]!r} was not streamed and decided")
            if (call.tool, call.arguments) != (entry.call.tool, entry.call.arguments):
                raise shape.fail(
                    f"{kind}.response.output[{i}]", f"call {call.id[:40]!r} differs from the streamed call"
                )
            if i >= len(self._items) or self._items[i] is not entry:
                raise shape.fail(f"{kind}.response.output[{i}]", f"call {call.id[:40]!r} is at another output_index")

    # -- writing --------------------------------------------------------------------------------------------------

    def _out(self, event: SSEEvent, data: dict[str, Any] | None) -> bytes:
        if self._open_calls or self._held:
            self._hold(event, data)
            return b"" if self._open_calls else self._flush()
        return self._render(event, data)

    def _hold(self, event: SSEEvent, data: dict[str, Any] | None) -> None:
        self._held.append((event, data))
        self._held_bytes += len(event.raw)
        if self._held_bytes > self._max_held:
            raise WireError(
                f"tool call larger than {self._max_held} bytes while held for a decision",
                hint="the upstream streamed a tool call too large to inspect",
            )

    def _flush(self) -> bytes:
        held, self._held, self._held_bytes = self._held, [], 0
        return b"".join(self._render(e, d) for e, d in held)

    def _seq(self) -> int:
        assert self._next_seq is not None
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def _blocked_item(self, data: dict[str, Any]) -> _Item | None:
        if "output_index" not in data:
            return None
        index = data["output_index"]
        item = self._items[index] if isinstance(index, int) and 0 <= index < len(self._items) else None
        return item if item is not None and item.ruling is not None and not item.ruling.allow else None

    def _render(self, event: SSEEvent, data: dict[str, Any] | None) -> bytes:
        if data is None:
            return event.raw
        kind = data["type"]
        blocked = self._blocked_item(data)
        if blocked is not None:
            if kind == "response.output_item.added":
                return self._replacement(event, data["output_index"], blocked)
            return b""  # the blocked call's argument events and its done event are replaced as a whole
        changed = False
        if kind in _RESPONSE_EVENTS:
            response = data["response"]
            output = response.get("output") or []
            replaced = [self._replaced_item(item) for item in output]
            if any(r is not None for r in replaced):
                data = copy.deepcopy(data)
                data["response"]["output"] = [
                    r if r is not None else item for r, item in zip(replaced, output, strict=True)
                ]
                changed = True
        seq = self._seq()
        if seq != data["sequence_number"]:
            data = {**data, "sequence_number": seq}
            changed = True
        if not changed:
            return event.raw
        return format_event(dump_json(data), event=event.event, id=event.id)

    def _replaced_item(self, item: Any) -> dict[str, Any] | None:
        if not isinstance(item, dict) or item.get("type") not in _CALLS:
            return None
        entry = self._by_call_id[item["call_id"]]
        if entry.ruling is None or entry.ruling.allow:
            return None
        return _message_item(_replacement_id(item), entry.text, done=True)

    def _replacement(self, event: SSEEvent, index: int, item: _Item) -> bytes:
        item_id = _replacement_id({"id": item.item_id, "call_id": item.call_id})
        where = {"item_id": item_id, "output_index": index, "content_index": 0}
        events: list[dict[str, Any]] = [
            {
                "type": "response.output_item.added",
                "output_index": index,
                "item": _message_item(item_id, "", done=False),
            },
            {"type": "response.content_part.added", **where, "part": _text_part("")},
            {"type": "response.output_text.delta", **where, "delta": item.text, "logprobs": []},
            {"type": "response.output_text.done", **where, "text": item.text, "logprobs": []},
            {"type": "response.content_part.done", **where, "part": _text_part(item.text)},
            {
                "type": "response.output_item.done",
                "output_index": index,
                "item": _message_item(item_id, item.text, done=True),
            },
        ]
        named = event.event is not None  # follow the upstream: with `event:` lines or without
        return b"".join(
            format_event(dump_json({**e, "sequence_number": self._seq()}), event=e["type"] if named else None)
            for e in events
        )
