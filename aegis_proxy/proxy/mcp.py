"""MCP Streamable HTTP: JSON-RPC 2.0 requests decided before the server sees them, responses read and rewritten.

Pure like every wire module (bytes in, bytes or core models out; never mitmproxy). The exchange on one MCP endpoint:

  client POST body  `parse_request` -> McpRequest: every message validated; `tools/call` requests become ToolCalls
  the addon         decides each call, then `plan_forward(request, rulings)` -> ForwardPlan: the body to send upstream
                    with only the allowed messages (None when nothing remains) and our `isError` results for the rest
  nothing forwarded `plan.own_response()`: a complete application/json answer of our own (also when the server
                    answers 202 Accepted because only notifications were forwarded)
  server answer     (200) application/json: `review_json_response`; text/event-stream: `McpStream`. Both check
                    every message strictly, add our blocked results (SSE: as the first events, so a client that stops
                    reading at its last response still gets them), and review `tools/list` results with a
                    ToolReviewer (tool_pins.ToolGuard.review): tools that changed since they were pinned, and tools the
                    policy denies unconditionally, are removed from the list the client sees. Another status (an
                    HTTP error) passes as it is: the blocked calls never ran either way.
  GET stream        `McpStream(None, ...)`: server-initiated messages, or a resumed stream replaying answers (any
                    result carrying a `tools` array is reviewed as a tool list, since we cannot tell whose it is).

What we cannot read exactly (invalid UTF-8 or JSON, duplicate keys, NaN, a message of no JSON-RPC shape, ids of the
wrong type, a `tools/call` whose params are not exactly {name, arguments?, _meta?, task?}) raises WireError: the
addon blocks the flow, nothing is forwarded as if it carried no tool call. A ToolReviewer's own failure (PinError:
the pin database is down) propagates as it is, and the addon blocks the answer just the same.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from aegis_proxy.check import loads_strict
from aegis_proxy.errors import InputError
from aegis_proxy.models import Finding, ToolCall
from aegis_proxy.proxy.sse import DEFAULT_MAX_EVENT_BYTES, SSEEvent, SSEParser, format_event
from aegis_proxy.proxy.wire import Ruling, WireError
from aegis_proxy.tool_pins import ToolReview

PROTOCOL = "mcp"
JSON_TYPE = "application/json"
SSE_TYPE = "text/event-stream"
MAX_BATCH = 1_000  # messages in one batch; more is refused rather than processed without bound
TOOLS_CALL = "tools/call"
TOOLS_LIST = "tools/list"

RpcId = str | int
# Decides which tools a tools/list result keeps: (server, tools as listed, whether the list is complete) -> review.
ToolReviewer = Callable[[str, Sequence[Mapping[str, Any]], bool], ToolReview]

_REQUEST_KEYS = frozenset({"jsonrpc", "id", "method", "params"})
_RESULT_KEYS = frozenset({"jsonrpc", "id", "result"})
_ERROR_KEYS = frozenset({"jsonrpc", "id", "error"})
_ERROR_OBJECT_KEYS = frozenset({"code", "message", "data"})
_CALL_PARAM_KEYS = frozenset({"name", "arguments", "_meta", "task"})
_HINT = "an MCP endpoint carries JSON-RPC 2.0 messages exactly as the MCP specification writes them"


class MessageKind(enum.StrEnum):
    REQUEST = "request"
    NOTIFICATION = "notification"
    RESULT = "result"
    ERROR = "error"


@dataclasses.dataclass(frozen=True)
class RpcMessage:
    """One validated JSON-RPC message. `body` is the message as parsed (strictly: no duplicate keys, no NaN)."""

    kind: MessageKind
    id: RpcId | None  # None for notifications, and for an error response whose request id was unknown
    method: str | None  # requests and notifications
    body: Mapping[str, Any]

    @property
    def params(self) -> Mapping[str, Any]:
        params = self.body.get("params")
        return params if isinstance(params, dict) else {}


@dataclasses.dataclass(frozen=True)
class McpCall:
    """A `tools/call` request: its JSON-RPC id (type kept: 1 and "1" are different ids) and the ToolCall."""

    rpc_id: RpcId
    call: ToolCall


@dataclasses.dataclass(frozen=True)
class McpRequest:
    """A client POST body on an MCP endpoint of server `server`."""

    server: str
    batch: bool
    messages: tuple[RpcMessage, ...]
    body: bytes = dataclasses.field(default=b"", repr=False)  # as received: forwarded unchanged when nothing is blocked

    @functools.cached_property
    def calls(self) -> tuple[McpCall, ...]:
        return tuple(
            McpCall(m.id, _tool_call(m, self.server))
            for m in self.messages
            if m.kind is MessageKind.REQUEST and m.method == TOOLS_CALL and m.id is not None
        )

    @functools.cached_property
    def tool_lists(self) -> dict[RpcId, bool]:
        """The ids of `tools/list` requests, each with whether it asked for a later page (a cursor)."""
        return {
            m.id: "cursor" in m.params
            for m in self.messages
            if m.kind is MessageKind.REQUEST and m.method == TOOLS_LIST and m.id is not None
        }


# --------------------------------------------------------------------------------------------------------------------
# Reading messages


def _loads(body: bytes, what: str) -> Any:
    if not body:
        raise WireError(f"empty {what}", hint=_HINT)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise WireError(f"{what} is not UTF-8", hint=_HINT) from None
    try:
        return loads_strict(text)
    except InputError as error:
        raise WireError(f"{what}: {error.message}", hint=error.hint or _HINT) from None


def _check_id(value: Any, where: str, *, null_ok: bool = False) -> RpcId | None:
    # bool is an int in Python and 1.0 == 1: both would let two parsers disagree on which request an answer is for.
    if value is None and null_ok:
        return None
    if type(value) is str or type(value) is int:
        return value
    raise WireError(f"{where}: a JSON-RPC id must be a string or an integer, got {_kind(value)}", hint=_HINT)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, float):
        return "a number with a fraction or exponent"
    return {dict: "an object", list: "an array", str: "a string", int: "an integer"}.get(type(value), "a value")


def parse_message(value: Any, where: str = "message") -> RpcMessage:
    """One JSON-RPC 2.0 message, strictly: the exact keys of a request, notification, result or error."""
    if not isinstance(value, dict):
        raise WireError(f"{where}: a JSON-RPC message is an object, got {_kind(value)}", hint=_HINT)
    if value.get("jsonrpc") != "2.0" or type(value.get("jsonrpc")) is not str:
        raise WireError(f'{where}: "jsonrpc" must be "2.0"', hint=_HINT)
    keys = set(value)
    if "method" in value:
        extra = keys - _REQUEST_KEYS
        if extra:
            raise WireError(f"{where}: unexpected member {_first(extra)!r} in a request", hint=_HINT)
        method = value["method"]
        if type(method) is not str or not method:
            raise WireError(f'{where}: "method" must be a non-empty string', hint=_HINT)
        if "params" in value and not isinstance(value["params"], dict):
            raise WireError(f'{where}: "params" must be an object, got {_kind(value["params"])}', hint=_HINT)
        if "id" not in value:
            if _looks_like_call(method):
                raise WireError(f"{where}: {method!r} sent as a notification (no id)", hint="tools/call needs an id")
            return RpcMessage(MessageKind.NOTIFICATION, None, method, value)
        rpc_id = _check_id(value["id"], where)
        if _looks_like_call(method) and method != TOOLS_CALL:
            raise WireError(f"{where}: method {method!r} is not {TOOLS_CALL!r}", hint="method names are exact")
        return RpcMessage(MessageKind.REQUEST, rpc_id, method, value)
    if "result" in value:
        extra = keys - _RESULT_KEYS
        if extra or "id" not in value:
            raise WireError(f"{where}: a result has exactly jsonrpc, id and result", hint=_HINT)
        if not isinstance(value["result"], dict):
            raise WireError(f"{where}: a result must be an object, got {_kind(value['result'])}", hint=_HINT)
        return RpcMessage(MessageKind.RESULT, _check_id(value["id"], where), None, value)
    if "error" in value:
        extra = keys - _ERROR_KEYS
        if extra or "id" not in value:
            raise WireError(f"{where}: an error has exactly jsonrpc, id and error", hint=_HINT)
        error = value["error"]
        if not isinstance(error, dict) or set(error) - _ERROR_OBJECT_KEYS or not {"code", "message"} <= set(error):
            raise WireError(f"{where}: an error object has code, message and optionally data", hint=_HINT)
        if type(error["code"]) is not int or type(error["message"]) is not str:
            raise WireError(f"{where}: an error's code is an integer and its message a string", hint=_HINT)
        return RpcMessage(MessageKind.ERROR, _check_id(value["id"], where, null_ok=True), None, value)
    raise WireError(f"{where}: neither a request, a notification, a result nor an error", hint=_HINT)


def _looks_like_call(method: str) -> bool:
    # A lenient server might dispatch "Tools/Call" or " tools/call" as tools/call; we would not have decided it.
    return method.strip().lower() == TOOLS_CALL


def _first(keys: Iterable[str]) -> str:
    return sorted(keys)[0]


def parse_messages(body: bytes, what: str = "MCP body") -> tuple[tuple[RpcMessage, ...], bool]:
    """The messages of a JSON body (one object, or a non-empty batch array) and whether it was a batch."""
    return _messages(_loads(body, what), what)


def _messages(value: Any, what: str) -> tuple[tuple[RpcMessage, ...], bool]:
    if isinstance(value, list):
        if not value:
            raise WireError(f"{what}: an empty batch", hint="JSON-RPC 2.0 refuses an empty array")
        if len(value) > MAX_BATCH:
            raise WireError(f"{what}: a batch of {len(value)} messages (at most {MAX_BATCH})", hint=_HINT)
        return tuple(parse_message(item, f"{what}[{index}]") for index, item in enumerate(value)), True
    return (parse_message(value, what),), False


def _tool_call(message: RpcMessage, server: str) -> ToolCall:
    params = message.params
    name = params.get("name")
    arguments = params.get("arguments", {})
    return ToolCall(
        id=str(message.id),
        tool=name,
        arguments=arguments,
        protocol=PROTOCOL,
        server=server,
        raw_size=len(_dumps(arguments).encode()),
    )


def _check_call(message: RpcMessage, where: str) -> None:
    params = message.body.get("params")
    if not isinstance(params, dict):
        raise WireError(f"{where}: tools/call needs params {{name, arguments}}", hint=_HINT)
    extra = set(params) - _CALL_PARAM_KEYS
    if extra:
        raise WireError(f"{where}: unexpected member {_first(extra)!r} in tools/call params", hint=_HINT)
    name = params.get("name")
    if type(name) is not str or not name.strip():
        raise WireError(f"{where}: tools/call params.name must be a non-empty string", hint=_HINT)
    if "arguments" in params and not isinstance(params["arguments"], dict):
        raise WireError(
            f"{where}: tools/call arguments must be an object, got {_kind(params['arguments'])}", hint=_HINT
        )
    for key in ("_meta", "task"):
        if key in params and not isinstance(params[key], dict):
            raise WireError(f"{where}: tools/call params.{key} must be an object", hint=_HINT)


def parse_request(body: bytes, server: str) -> McpRequest:
    """A client's POST body on the MCP endpoint of `server`. Raises WireError on anything not exactly readable.

    Notifications and responses (to the server's own requests) pass; `tools/call` requests are checked strictly;
    ids of the requests in one batch are unique (also as text: 1 and "1" would name the same ToolCall).
    """
    messages, batch = parse_messages(body, "MCP request")
    seen: set[str] = set()
    for index, message in enumerate(messages):
        where = f"MCP request[{index}]" if batch else "MCP request"
        if message.kind is MessageKind.REQUEST:
            text_id = str(message.id)
            if text_id in seen:
                raise WireError(f"{where}: id {message.id!r} is used twice in one batch", hint="ids must be unique")
            seen.add(text_id)
            if message.method == TOOLS_CALL:
                _check_call(message, where)
    return McpRequest(server=server, batch=batch, messages=messages, body=body)


# --------------------------------------------------------------------------------------------------------------------
# Blocking calls: the forwarded part and our own answers


def blocked_result(rpc_id: RpcId, message: str) -> dict[str, Any]:
    """The answer to a blocked `tools/call`: a CallToolResult with isError, so the agent reads why and goes on."""
    return {
        "jsonrpc": "2.0",
        "id": rpc_id,
        "result": {"content": [{"type": "text", "text": message}], "isError": True},
    }


@dataclasses.dataclass(frozen=True)
class ForwardPlan:
    """What becomes of one request: `forward` goes upstream (None: nothing does), `blocked` are our answers."""

    request: McpRequest
    forward: bytes | None
    blocked: tuple[dict[str, Any], ...]
    expected: frozenset[tuple[str, RpcId]]  # (type, id) of the forwarded requests: the answers the server owes

    def own_response(self) -> tuple[bytes, str]:
        """A complete answer of ours (body, content type) when the server answers nothing: nothing was forwarded,
        or only notifications were (202 Accepted). For a batch, an array; else the one result. Send it as 200."""
        if not self.blocked:
            raise WireError("no blocked call to answer", hint="this is a bug in the caller: forward the request")
        if self.request.batch:
            return _dumps(list(self.blocked)).encode(), JSON_TYPE
        return _dumps(self.blocked[0]).encode(), JSON_TYPE


def _id_key(rpc_id: RpcId) -> tuple[str, RpcId]:
    return ("int" if type(rpc_id) is int else "str", rpc_id)


def plan_forward(request: McpRequest, rulings: Mapping[str, Ruling]) -> ForwardPlan:
    """Split the request by the addon's rulings (keyed by ToolCall.id). A call without a ruling is an error."""
    keep: list[Mapping[str, Any]] = []
    blocked: list[dict[str, Any]] = []
    expected: set[tuple[str, RpcId]] = set()
    for message in request.messages:
        if message.kind is MessageKind.REQUEST and message.method == TOOLS_CALL and message.id is not None:
            ruling = rulings.get(str(message.id))
            if ruling is None:
                raise WireError(
                    f"no ruling for tools/call id {message.id!r}", hint="decide every call before forwarding"
                )
            if not ruling.allow:
                blocked.append(blocked_result(message.id, ruling.message or "aegis-proxy blocked this tool call"))
                continue
        keep.append(message.body)
        if message.kind is MessageKind.REQUEST and message.id is not None:
            expected.add(_id_key(message.id))
    if not keep:
        forward = None
    elif not blocked:
        forward = request.body or _dumps(list(keep) if request.batch else keep[0]).encode()
    else:
        forward = _dumps(list(keep)).encode()  # blocked implies a batch with something left: stays a batch
    return ForwardPlan(request, forward, tuple(blocked), frozenset(expected))


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


# --------------------------------------------------------------------------------------------------------------------
# Reading and rewriting the server's answer


@dataclasses.dataclass(frozen=True)
class ResponseReview:
    """A reviewed JSON answer: the body to send the client, what the tool lists showed, which tools were hidden."""

    body: bytes
    findings: tuple[Finding, ...]
    hidden: tuple[str, ...]


def content_kind(content_type: str | None) -> str:
    """`json` or `sse` for an MCP answer's Content-Type; anything else on an MCP endpoint is refused."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == JSON_TYPE:
        return "json"
    if media == SSE_TYPE:
        return "sse"
    raise WireError(f"an MCP answer of type {media or '(none)'!r}", hint="MCP answers are application/json or SSE")


class _Reviewer:
    """Checks the server's messages against the plan and rewrites tools/list results (shared by JSON and SSE)."""

    def __init__(self, plan: ForwardPlan | None, server: str, review: ToolReviewer | None) -> None:
        self.plan = plan
        self.server = server
        self.review = review
        self.findings: list[Finding] = []
        self.hidden: list[str] = []
        self._answered: set[tuple[str, RpcId]] = set()
        self._lists = {_id_key(k): v for k, v in plan.request.tool_lists.items()} if plan else {}

    def message(self, message: RpcMessage, where: str) -> tuple[Mapping[str, Any], bool]:
        """The message to send on (rewritten or not) and whether it changed."""
        if message.kind in (MessageKind.REQUEST, MessageKind.NOTIFICATION):
            return message.body, False  # the server's own requests (sampling, elicitation, ping) and notifications
        if message.id is None:
            return message.body, False  # an error about a request the server could not read
        key = _id_key(message.id)
        if self.plan is not None:
            if key not in self.plan.expected:
                raise WireError(f"{where}: an answer to id {message.id!r}, which was not forwarded", hint=_HINT)
            if key in self._answered:
                raise WireError(f"{where}: a second answer to id {message.id!r}", hint=_HINT)
            self._answered.add(key)
        if message.kind is not MessageKind.RESULT:
            return message.body, False
        result = message.body["result"]
        if self.plan is not None:
            if key not in self._lists:
                return message.body, False
            paged = self._lists[key]
        elif isinstance(result.get("tools"), list):
            paged = False  # a GET stream replaying an answer (resumption): review whatever looks like a tool list
        else:
            return message.body, False
        return self._tool_list(message, result, paged, where)

    def _tool_list(
        self, message: RpcMessage, result: Mapping[str, Any], paged: bool, where: str
    ) -> tuple[Mapping[str, Any], bool]:
        tools = result.get("tools")
        if not isinstance(tools, list):
            raise WireError(f"{where}: a tools/list result has a tools array", hint=_HINT)
        names: set[str] = set()
        for index, tool in enumerate(tools):
            _check_tool(tool, f"{where}.result.tools[{index}]")
            if tool["name"] in names:
                raise WireError(f"{where}: tool {tool['name']!r} listed twice", hint="tool names are unique")
            names.add(tool["name"])
        cursor = result.get("nextCursor")
        if cursor is not None and type(cursor) is not str:
            raise WireError(f"{where}: nextCursor must be a string", hint=_HINT)
        if self.review is None:
            return message.body, False
        complete = not paged and cursor is None
        try:
            verdict = self.review(self.server, tools, complete)
        except WireError:
            raise
        except InputError as error:
            raise WireError(f"{where}: {error.message}", hint=error.hint) from None
        self.findings.extend(verdict.findings)
        if not verdict.hidden:
            return message.body, False
        self.hidden.extend(sorted(verdict.hidden))
        kept = [tool for tool in tools if tool["name"] not in verdict.hidden]
        return {**message.body, "result": {**result, "tools": kept}}, True


def _check_tool(tool: Any, where: str) -> None:
    if not isinstance(tool, dict):
        raise WireError(f"{where}: a tool is an object", hint=_HINT)
    name = tool.get("name")
    if type(name) is not str or not name:
        raise WireError(f"{where}: a tool's name is a non-empty string", hint=_HINT)
    if not isinstance(tool.get("inputSchema"), dict):
        raise WireError(f"{where}: tool {name!r} has no inputSchema object", hint=_HINT)
    for key in ("description", "title"):
        if key in tool and type(tool[key]) is not str:
            raise WireError(f"{where}: tool {name!r}: {key} must be a string", hint=_HINT)
    for key in ("annotations", "outputSchema", "_meta"):
        if key in tool and not isinstance(tool[key], dict):
            raise WireError(f"{where}: tool {name!r}: {key} must be an object", hint=_HINT)


def _review_value(reviewer: _Reviewer, value: Any, what: str) -> tuple[Any, bool]:
    messages, batch = _messages(value, what)
    out: list[Mapping[str, Any]] = []
    changed = False
    for index, message in enumerate(messages):
        body, rewritten = reviewer.message(message, f"{what}[{index}]" if batch else what)
        out.append(body)
        changed = changed or rewritten
    return (out if batch else out[0]), changed


def review_json_response(
    body: bytes, plan: ForwardPlan | None, server: str, review: ToolReviewer | None
) -> ResponseReview:
    """An application/json answer (object or array): checked, tool lists reviewed, our blocked results merged in.

    With blocked results the client sent a batch, so the answer becomes an array (the server's answers, then ours).
    `plan` None: an answer whose request we did not see (every message is still checked).
    """
    reviewer = _Reviewer(plan, server, review)
    value = _loads(body, "MCP answer")
    reviewed, changed = _review_value(reviewer, value, "MCP answer")
    blocked = list(plan.blocked) if plan is not None else []
    if blocked:
        merged = (reviewed if isinstance(reviewed, list) else [reviewed]) + blocked
        out = _dumps(merged).encode()
    else:
        out = _dumps(reviewed).encode() if changed else body
    return ResponseReview(out, tuple(reviewer.findings), tuple(reviewer.hidden))


class McpStream:
    """A text/event-stream answer, chunk by chunk (the wire.StreamFilter protocol).

    Our blocked results go out first, then each server event as soon as its blank line arrives: byte for byte, unless
    it is a tools/list result that hides tools (re-emitted as one `message` event keeping its id). Events without
    data (comments, ids, retry, the priming event of resumable streams) pass as they are. `plan` None: a GET stream
    (server-initiated messages, or a resumed stream replaying answers).
    """

    def __init__(
        self,
        plan: ForwardPlan | None,
        server: str,
        review: ToolReviewer | None,
        *,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        self._reviewer = _Reviewer(plan, server, review)
        self._parser = SSEParser(max_event_bytes)
        self._pending = b"".join(
            format_event(_dumps(result), event="message") for result in (plan.blocked if plan else ())
        )
        self._count = 0

    @property
    def findings(self) -> tuple[Finding, ...]:
        return tuple(self._reviewer.findings)

    @property
    def hidden(self) -> tuple[str, ...]:
        return tuple(self._reviewer.hidden)

    def feed(self, chunk: bytes) -> bytes:
        return self._flush() + b"".join(self._event(event) for event in self._parser.feed(chunk))

    def close(self) -> bytes:
        return self._flush() + b"".join(self._event(event) for event in self._parser.close())

    def _flush(self) -> bytes:
        pending, self._pending = self._pending, b""
        return pending

    def _event(self, event: SSEEvent) -> bytes:
        if not event.data:
            return event.raw  # no data, or the empty data of a priming event: nothing to read
        where = f"MCP event {self._count}"
        self._count += 1
        if event.event not in (None, "message"):
            raise WireError(f"{where}: event type {event.event!r}", hint="MCP streams carry `message` events only")
        value = _loads(event.data.encode("utf-8"), where)
        reviewed, changed = _review_value(self._reviewer, value, where)
        if not changed:
            return event.raw
        return format_event(_dumps(reviewed), event="message", id=event.id)
