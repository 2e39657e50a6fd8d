"""The contract between the mitmproxy addon and the wire-protocol modules (one module per protocol).

A wire module is pure: bytes in, bytes or core models out. It never imports mitmproxy, so it is tested on its own
with byte strings, and the addon (proxy/addon.py) is the only place that touches flows.

Strictness: a module parses exactly what its protocol documents. A body it cannot read exactly (malformed JSON,
duplicate keys, NaN, wrong types, an unknown shape where a tool call could hide) raises `WireError`; the addon then
blocks the flow. What we cannot read, we do not pass.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from aegis_proxy import strict_json
from aegis_proxy.errors import WireError as WireError  # the wire modules' error, kept with the project's others
from aegis_proxy.models import Message, ToolCall
from aegis_proxy.proxy.sse import SSEEvent
from aegis_proxy.strict_json import DuplicateKeyError


@dataclasses.dataclass(frozen=True)
class RequestView:
    """What an LLM request tells us: the conversation (tool results are untrusted) and how the answer will come."""

    messages: tuple[Message, ...]
    stream: bool
    model: str | None = None


@dataclasses.dataclass(frozen=True)
class Ruling:
    """The addon's outcome for one tool call, as a wire module needs it to rewrite a response.

    `allow` False means the call is removed and the agent reads `message` instead (deny, or held for approval).
    """

    call_id: str
    allow: bool
    message: str = ""


Decide = Callable[[ToolCall], Ruling]  # called synchronously, once per complete tool call, in order


class StreamFilter(Protocol):
    """Rewrites one streamed (SSE) response chunk by chunk.

    Text deltas pass through at once (time to first token unchanged); a tool call's deltas are held until the call is
    complete, then `decide` is called and the call's events are emitted unchanged (allowed) or replaced by a text
    event carrying the ruling's message (blocked); when no call of a turn remains, the finish/stop reason becomes a
    normal stop. Chunks may split anywhere, even inside a UTF-8 character or an SSE line.
    """

    def feed(self, chunk: bytes) -> bytes:
        """Bytes to send to the client now (may be b""). Raises WireError on a malformed stream."""
        ...

    def close(self) -> bytes:
        """End of the upstream stream: the rest to send. Raises WireError if the stream ended mid-event/mid-call."""
        ...


class EventStreamFilter(StreamFilter, Protocol):
    """A StreamFilter that also reads one parsed event at a time (sse.EventFilter implements feed/close with these):
    the look-ahead (proxy/lookahead.py) parses a stream once and hands each event to two filters."""

    def event(self, event: SSEEvent) -> bytes: ...

    def end(self) -> bytes:
        """The stream's last event was read: the rest to send. Never decides: every call is complete by then."""
        ...


class LLMProtocol(Protocol):
    """One LLM wire protocol (OpenAI Chat Completions, OpenAI Responses, Anthropic Messages)."""

    name: str  # "openai-chat", "openai-responses", "anthropic"; also ToolCall.protocol
    max_event_bytes: int  # the largest SSE event its stream filter reads (shape.Limits)
    max_held_bytes: int  # the most its stream filter holds back for a decision (shape.Limits)

    def matches(self, path: str) -> bool:
        """Whether this protocol owns the upstream request path (route prefix already removed), e.g. /v1/messages."""
        ...

    def parse_request(self, body: bytes) -> RequestView: ...

    def tool_calls(self, body: bytes) -> list[ToolCall]:
        """The tool calls of a non-streamed response, in order; arguments parsed strictly (JSON-in-string too)."""
        ...

    def rewrite(self, body: bytes, rulings: Mapping[str, Ruling]) -> bytes:
        """The response with every blocked call replaced by assistant text; still valid for the official SDKs."""
        ...

    def stream_filter(self, decide: Decide) -> EventStreamFilter: ...


def load_json(data: bytes | str, what: str) -> object:
    """Strict JSON for wire bodies: UTF-8 only, no duplicate keys, no NaN/Infinity, bounded nesting.

    Two parsers reading `{"name": "a", "name": "b"}` differently is a classic way to smuggle a call past a filter.
    """
    try:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
    except UnicodeDecodeError as exc:
        raise WireError(f"{what}: not UTF-8 (byte {exc.start})", hint="the body must be UTF-8 JSON") from None
    try:
        value = strict_json.loads(text)
    except DuplicateKeyError as exc:
        raise WireError(f"{what}: {exc}", hint="a JSON object may name each key once") from None
    except RecursionError:
        raise WireError(f"{what}: JSON nested too deeply", hint="the body nests objects too deeply to read") from None
    except json.JSONDecodeError as exc:
        raise WireError(f"{what}: invalid JSON: {exc.msg} at column {exc.colno}") from None
    except ValueError as exc:  # NaN/Infinity (NotANumberError), integers longer than Python reads
        raise WireError(f"{what}: {str(exc)[:120]}", hint="the body must be plain JSON") from None
    if _SURROGATE_ESCAPE.search(text) and not _all_strings_encodable(value):
        # parsers disagree on a lone surrogate (error, U+FFFD, kept): another reading of the same body
        raise WireError(f"{what}: a string holds a lone UTF-16 surrogate", hint="the body must be plain JSON")
    return value


def event_json(event: SSEEvent, what: str) -> Any:
    """A server-sent event's data as strict JSON (load_json), parsed once however many filters read the event (the
    look-ahead reads each event twice, proxy/lookahead.py). Readers must not mutate it: they copy before changing."""
    if not event.parsed:
        event.parsed.append(load_json(event.data or "", what))
    return event.parsed[0]


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _all_strings_encodable(value: object) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return False
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


def dump_json(value: object) -> str:
    """Compact JSON for rewritten bodies (non-ASCII kept as is, as the upstreams send it)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def blocked_text(tool: str, message: str) -> str:
    """What the agent reads in place of a blocked call: which call, and the policy's message."""
    reason = message.strip()
    head = f"[aegis-proxy blocked tool call `{tool}`"
    return f"{head}: {reason}]" if reason else f"{head}]"
